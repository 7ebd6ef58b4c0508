"""Dependencies point one way (docs/ARCHITECTURE.md): the feedback package never imports the
server (``rlhfkit.serve`` builds on ``rlhfkit.feedback``), and ``models`` imports neither."""

import ast
from pathlib import Path

import rlhfkit

SRC = Path(rlhfkit.__file__).parent


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level >= 2:  # from ..serve import x
            names.add("rlhfkit." + (node.module or ""))
    return names


def _importers(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{p.relative_to(SRC)}: {name}"
        for p in sorted((SRC / package).rglob("*.py"))
        for name in sorted(_imports(p))
        if name.startswith(forbidden)
    ]


def test_feedback_never_imports_serve():
    assert _importers("feedback", ("rlhfkit.serve",)) == []


def test_models_import_no_layer_above_them():
    assert (
        _importers(
            "models", ("rlhfkit.serve", "rlhfkit.feedback", "rlhfkit.loop", "rlhfkit.pipeline", "rlhfkit.recipes")
        )
        == []
    )
