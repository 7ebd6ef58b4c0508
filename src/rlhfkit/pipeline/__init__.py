"""``rlhfkit pipeline``: SFT (optional) -> feedback -> reward model -> policy optimisation ->
evaluation -> report, every stage cached by fingerprint and resumable (see ``run.py``)."""

from .config import PipelineConfig, apply_quick
from .run import run

__all__ = ["PipelineConfig", "apply_quick", "run"]
