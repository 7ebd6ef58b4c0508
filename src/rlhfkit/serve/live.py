"""Moved: the feedback app's live generation is ``rlhfkit.feedback.live`` and the policy line
(model, loop folder, learner folder) ``rlhfkit.models.policy_line``. Kept so that imports written
before the move work."""

from rlhfkit.feedback.live import PolicyGenerator  # noqa: F401
from rlhfkit.models.policy_line import NoPolicyYet, current_policy, loop_policy, rounds_done  # noqa: F401

__all__ = ["PolicyGenerator", "NoPolicyYet", "current_policy", "loop_policy", "rounds_done"]
