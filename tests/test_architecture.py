"""The rules that keep the code's shape, checked by the test suite (and so by CI).

- Import layers: the contracts in ``pyproject.toml`` (``[tool.importlinter]``), checked by
  import-linter over every import of ``src/rlhfkit``, those inside functions included.
- ``core`` imports nothing but torch and the standard library (and itself).
- Lint: ``ruff check`` with the rules of ``[tool.ruff.lint]`` passes on the whole tree.
- No module imports a private name (``_x``) from another package (each exception listed here with
  its reason).
- Citations: every ``docs/PPO_CHECKLIST.md #N (title)`` in ``src/`` names an item of that file
  under its title, no comment cites a bare "detail N", and every document named exists.
- Size: no file under ``src/`` is longer than ``MAX_SOURCE_LINES`` lines (one job a module).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
LINTED = ["src", "tests", "benchmarks", "scripts"]


def _run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_import_contracts_are_kept():
    """Every contract of ``[tool.importlinter]`` is kept: no package imports one on a floor above
    its own, the feedback app imports no trainer, the feedback store does not import serve (each
    exception is listed in the contract with its reason)."""
    code = (
        "import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))"
    )
    result = _run([sys.executable, "-c", code])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "BROKEN" not in result.stdout


def imported_top_names(source: str) -> set[str]:
    """The top-level names of the modules ``source`` imports absolutely, at any depth (``import
    a.b`` and ``from a.b import c`` give ``a``); relative imports stay inside the package."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_imported_top_names_sees_imports_inside_functions():
    source = "import os\ndef f():\n    import numpy as np\n    from transformers.x import y\n    from . import z\n"
    assert imported_top_names(source) == {"os", "numpy", "transformers"}


def test_core_imports_only_torch_and_the_standard_library():
    """``rlhfkit.core`` is pure torch: no other third-party package, at the top of a module or
    inside a function (its own modules are the layers contract's to check)."""
    allowed = set(sys.stdlib_module_names) | {"torch", "rlhfkit", "__future__"}
    found = {}
    for path in sorted((SRC / "rlhfkit" / "core").rglob("*.py")):
        outside = imported_top_names(path.read_text()) - allowed
        if outside:
            found[str(path.relative_to(REPO))] = sorted(outside)
    assert found == {}


def test_ruff_check_passes():
    """``ruff check`` (pyflakes, syntax errors, whitespace, bugbear: ``[tool.ruff.lint]``) finds
    nothing in the tree."""
    result = _run([sys.executable, "-m", "ruff", "check", "--no-cache", *LINTED])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]


def test_ruff_format_leaves_the_tree_as_it_is():
    """The tree is as ``ruff format`` (``[tool.ruff]``: 120 columns) writes it."""
    result = _run([sys.executable, "-m", "ruff", "format", "--check", "--no-cache", *LINTED])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]


MAX_SOURCE_LINES = 450
# files allowed over the limit, each with its reason (none today); remove an entry when its file is split
LONG_FILES_ALLOWED: set[str] = set()


def source_file_lengths(root: Path) -> dict[str, int]:
    """Lines of every file under ``root`` (source, templates, scripts, styles; not byte code),
    by path from the repository."""
    return {
        str(path.relative_to(REPO)): len(path.read_text(encoding="utf-8", errors="replace").splitlines())
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def test_no_source_file_is_longer_than_the_limit():
    """Every file under ``src/`` has at most ``MAX_SOURCE_LINES`` lines (as ``ruff format`` writes
    it): a longer one does more than one job and is split along its seams. The exceptions are
    listed with their reasons, and an entry whose file is short again is removed from the list."""
    lengths = source_file_lengths(SRC)
    found = {path for path, n in lengths.items() if n > MAX_SOURCE_LINES}
    assert found == LONG_FILES_ALLOWED, {path: lengths.get(path) for path in sorted(found ^ LONG_FILES_ALLOWED)}


CHECKLIST = REPO / "docs" / "PPO_CHECKLIST.md"
CITATION = re.compile(r"PPO_CHECKLIST\.md #(\d+) \(([^)]*)\)")
DOCUMENT = re.compile(r"\b(?:docs/)?([A-Z][A-Z_]*\.md)\b")


def checklist_items(text: str) -> dict[int, str]:
    """The checklist's items, number -> title, from its ``## N. title`` headings."""
    return {int(n): title.strip() for n, title in re.findall(r"^## (\d+)\. (.+)$", text, flags=re.M)}


def joined_lines(source: str) -> str:
    """``source`` with its lines joined by one space, comment marks dropped, so that a citation
    wrapped over two comment or docstring lines reads as one."""
    return re.sub(r"[ \t]*\n[ \t]*(?:#[ \t]*)?", " ", source)


def citation_problems(source: str, items: dict[int, str], documents: set[str]) -> list[str]:
    """What is wrong with the citations of one source text: a checklist item that does not exist
    or is named by another title, a bare "detail N" (of no document), a document that is not
    there."""
    text = joined_lines(source)
    problems = [
        f"#{n} ({title}): the checklist's #{n} is {items.get(int(n))!r}"
        for n, title in CITATION.findall(text)
        if items.get(int(n)) != title
    ]
    problems += [f"bare {m.group(0)!r}" for m in re.finditer(r"\bdetails? \d+", text)]
    problems += [f"no document {name}" for name in DOCUMENT.findall(text) if name not in documents]
    return problems


def test_citation_problems_finds_each_kind():
    items = {1: "distinct pad token", 2: "padding-aware positions"}
    good = "# pad != eos (docs/PPO_CHECKLIST.md #1\n    # (distinct pad token)); see docs/BENCHMARKS.md"
    assert citation_problems(good, items, {"PPO_CHECKLIST.md", "BENCHMARKS.md"}) == []
    bad = "x  # PPO detail 2\ny  # docs/PPO_CHECKLIST.md #2 (positions)\nz  # docs/DESIGN.md #3 (t)"
    assert citation_problems(bad, items, {"PPO_CHECKLIST.md"}) == [
        "#2 (positions): the checklist's #2 is 'padding-aware positions'",
        "bare 'detail 2'",
        "no document DESIGN.md",
    ]


def test_citations_in_src_name_what_exists():
    """Every checklist citation in ``src/`` names an existing item by its title, no comment cites
    a bare "detail N", and every ``*.md`` named is in ``docs/`` or the repository's root."""
    items = checklist_items(CHECKLIST.read_text())
    assert sorted(items) == list(range(1, 13))
    documents = {p.name for p in [*(REPO / "docs").glob("*.md"), *REPO.glob("*.md")]}
    found = {}
    for path in sorted((SRC / "rlhfkit").rglob("*.py")):
        problems = citation_problems(path.read_text(), items, documents)
        if problems:
            found[str(path.relative_to(REPO))] = problems
    assert found == {}


# private names imported from another package, each with its reason; remove the entry with the import
PRIVATE_IMPORTS_ALLOWED: set[tuple[str, str]] = set()  # none today; an exception names its reason here


def private_imports(source: str, module: str) -> set[tuple[str, str]]:
    """(module, imported name) for each private name (one leading underscore, not a dunder)
    ``source`` imports from another top-level package of rlhfkit, at any depth."""
    package = module.split(".")[1] if module.count(".") else ""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("rlhfkit."):
            if node.module.split(".")[1] != package:
                found |= {
                    (module, f"{node.module}.{a.name}")
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                }
    return found


def test_private_imports_sees_other_packages_only():
    source = "from rlhfkit.pipeline.stages import _pool, pool\ndef f():\n    from rlhfkit.loop.x import _y\n"
    assert private_imports(source, "rlhfkit.loop.run") == {("rlhfkit.loop.run", "rlhfkit.pipeline.stages._pool")}
    assert private_imports("from rlhfkit import __version__", "rlhfkit.cli") == set()


def test_no_private_name_is_imported_across_packages():
    """A package uses another's public names only; the exceptions are listed, each with its reason,
    and an entry whose import is gone is removed from the list."""
    found = set()
    for path in sorted((SRC / "rlhfkit").rglob("*.py")):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        found |= private_imports(path.read_text(), module)
    assert found == PRIVATE_IMPORTS_ALLOWED


def test_every_from_import_of_rlhfkit_names_something_that_exists():
    """``from rlhfkit.X import name`` anywhere (at the top or inside a function, in src/, tests/
    and benchmarks/) names something module X has: a name moved by a refactor while a branch
    still imports it from the old place fails here, not when a user reaches that function."""
    import ast
    import importlib

    root = Path(__file__).resolve().parents[1]
    missing = []
    for folder in ("src", "tests", "benchmarks"):
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not (
                    isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("rlhfkit")
                ):
                    continue
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if alias.name == "*" or hasattr(module, alias.name):
                        continue
                    try:
                        importlib.import_module(f"{node.module}.{alias.name}")
                    except ImportError:
                        missing.append(f"{path.relative_to(root)}:{node.lineno}: {node.module} has no {alias.name}")
    assert not missing, "\n".join(missing)


# each online algorithm's file holds only what makes it that algorithm (the loop is the shared
# driver's, recipes/online_driver.py), so it stays short enough to read top to bottom
ALGORITHM_FILE_LIMITS = {"grpo.py": 150, "rloo.py": 150, "reinforce.py": 150, "ppo.py": 200}


def test_each_online_algorithm_file_reads_in_one_sitting():
    """GRPO's, RLOO's and REINFORCE's files are under 150 lines and PPO's under 200."""
    lengths = source_file_lengths(SRC / "rlhfkit" / "recipes")
    over = {
        name: lengths[f"src/rlhfkit/recipes/{name}"]
        for name, limit in ALGORITHM_FILE_LIMITS.items()
        if lengths[f"src/rlhfkit/recipes/{name}"] >= limit
    }
    assert not over, over
