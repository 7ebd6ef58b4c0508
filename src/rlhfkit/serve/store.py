"""Moved: the end-user side of the feedback store is ``rlhfkit.feedback.enduser`` (issue 23: the
feedback package must not import ``serve``). Kept so that imports written before the move work."""

from rlhfkit.feedback.enduser import *  # noqa: F401,F403
from rlhfkit.feedback.enduser import EndUserKeyError, end_user_key, hashed_user, key_id  # noqa: F401
