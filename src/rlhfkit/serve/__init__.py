"""Deployment: an OpenAI-compatible chat server (``rlhfkit serve``) and a terminal chat
(``rlhfkit chat``), both storing end users' feedback (thumbs with a reason, ratings, edits,
choices between two replies) in the feedback app's store, so a deployed assistant keeps
collecting the feedback that trains its next version, and following a learner's promoted
version without downtime.

Modules: ``engine`` (``ChatModel``: messages -> chat template -> batched generation, ``swap``),
``batcher`` (the generation thread), ``line`` (``PolicyWatcher``: follows a learner folder),
``app`` (``create_app``: FastAPI, ``/v1/chat/completions``, ``/v1/models``, ``/v1/feedback``,
``/health``), ``chat`` (``chat_loop``), ``cli`` (configs). The store is
``rlhfkit.feedback.enduser`` (``FeedbackLog``). Imports are lazy.
"""

from __future__ import annotations

__all__ = ["ChatModel", "FeedbackLog", "create_app", "chat_loop"]


def __getattr__(name):
    if name == "ChatModel":
        from .engine import ChatModel

        return ChatModel
    if name == "FeedbackLog":
        from rlhfkit.feedback.enduser import FeedbackLog

        return FeedbackLog
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "chat_loop":
        from .chat import chat_loop

        return chat_loop
    raise AttributeError(name)
