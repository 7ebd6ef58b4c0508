"""Where an ``rlhfkit loop`` keeps its rounds in its ``output_dir``: ``round-N/<stage>/`` for
N = 1, 2 ..., one folder per stage of ``ROUND_STAGES`` in that order (beside ``setup/``,
``loop_state.json`` and ``curve.json``). The loop writes this layout and its report reads it
from here; ``models/policy_line.py``, a floor below the loop (serve finds a loop's current
policy with it), cannot import it and spells ``round-N/policy`` the same way."""

from __future__ import annotations

from pathlib import Path

__all__ = ["ROUND_STAGES", "round_dir", "rounds_on_disk"]

ROUND_STAGES = ("candidates", "select", "labels", "reward", "policy", "eval")


def round_dir(output_dir: str | Path, r: int) -> Path:
    """The folder of round ``r`` (its stages are subfolders)."""
    return Path(output_dir) / f"round-{r}"


def rounds_on_disk(output_dir: str | Path) -> list[int]:
    """The rounds that have a folder in ``output_dir``, ascending (finished or not)."""
    found = (d.name.split("-", 1)[1] for d in Path(output_dir).glob("round-*") if d.is_dir())
    return sorted(int(n) for n in found if n.isdigit())
