"""``rlhfkit loop``: iterated online RLHF with active labelling (see ``loop/run.py``)."""

from .config import LoopConfig, apply_quick
from .selection import candidate_pairs, pair_uncertainty, preference_probs, select_pairs

__all__ = ["LoopConfig", "apply_quick", "candidate_pairs", "pair_uncertainty", "preference_probs", "select_pairs"]
