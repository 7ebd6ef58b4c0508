"""The four kinds of end-user feedback and how a value of each is checked before it is stored.

What a kind is called in the feedback app (its task type and project name), the limits on what an
end user may send, ``FeedbackError`` (the HTTP status and request field at fault), and how a stored
reply names its choice index and the end user it was served to. No database access here.
"""

from __future__ import annotations

from typing import Any

EVENT_KINDS = ("thumbs", "rating", "edit", "choice")
# the feedback-app task type that holds each kind, and the project name's suffix
_TASK_TYPE = {"thumbs": "thumbs", "rating": "rating", "edit": "rewrite", "choice": "pairwise"}
_SUFFIX = {"thumbs": "thumbs", "rating": "ratings", "edit": "edits", "choice": "choices"}
_KIND_OF_TYPE = {t: k for k, t in _TASK_TYPE.items()}
_INSTRUCTIONS = {
    "thumbs": "Thumbs up / down given by end users of the served model.",
    "rating": "Ratings given by end users of the served model.",
    "edit": "Better replies written by end users of the served model (rewrites of its reply).",
    "choice": "The reply end users picked when the served model showed them two.",
}
MAX_REASON_CHARS = 10_000
MAX_EDIT_CHARS = 100_000  # what a rewrite label holds at most (feedback.tasks)
MAX_COMPLETION_ID_CHARS = 200  # items.external_id


class FeedbackError(ValueError):
    """Feedback that cannot be stored (unknown completion, bad value); ``status`` is the HTTP code,
    ``param`` the request field at fault (OpenAI's error ``param``)."""

    def __init__(self, message: str, status: int = 422, param: str | None = None):
        super().__init__(message)
        self.status, self.param = status, param


def project_names(prefix: str) -> dict[str, str]:
    """The project of each feedback kind: ``{"thumbs": "serve-thumbs", "rating": "serve-ratings", ...}``."""
    return {kind: f"{prefix}-{suffix}" for kind, suffix in _SUFFIX.items()}


CHAT_SOURCE = "chat"  # items.source of the web chat's completions


def _served_to(responses) -> str | None:
    """The end user a stored completion was served to (``log_completion`` keeps it with the reply)."""
    return next((x.get("end_user") for x in responses or [] if isinstance(x, dict) and x.get("end_user")), None)


def _index(response: dict) -> int:
    """Which choice of its completion a stored reply is (0 for a completion of one)."""
    return int(response.get("index", 0)) if isinstance(response, dict) else 0


def _reason(reason: Any, comment: Any) -> str | None:
    """The ``reason`` (or its older name ``comment``), checked: a string of at most
    ``MAX_REASON_CHARS``; blank is none."""
    for name, v in (("reason", reason), ("comment", comment)):
        if v is not None and not isinstance(v, str):
            raise FeedbackError(f"{name} must be a string", param=name)
        if v is not None and len(v) > MAX_REASON_CHARS:
            raise FeedbackError(f"{name} is longer than {MAX_REASON_CHARS} characters", param=name)
    if reason is not None and comment is not None and reason.strip() != comment.strip():
        raise FeedbackError("give reason or comment (its older name), not both", param="comment")
    return ((reason if reason is not None else comment) or "").strip() or None


def _edit(edit: Any) -> str | None:
    if edit is None:
        return None
    if not isinstance(edit, str) or not edit.strip():
        raise FeedbackError("edit must be the better reply: a non-empty string", param="edit")
    if len(edit) > MAX_EDIT_CHARS:
        raise FeedbackError(f"edit is longer than {MAX_EDIT_CHARS} characters", param="edit")
    return edit


def _choice(choice: Any) -> int | None:
    if choice is None:
        return None
    if isinstance(choice, bool) or choice not in (0, 1):
        raise FeedbackError("choice must be 0 or 1: the index of the reply picked", param="choice")
    return int(choice)


def _shown(text: str, placeholder: str) -> str:
    """``text`` as the store keeps it: a placeholder for an empty text, and U+FFFD for what no
    store column holds (a NUL, which PostgreSQL text refuses; a lone surrogate, which is not
    UTF-8). A model may draw such tokens, and a reply already served must still be stored."""
    if not text.strip():
        return placeholder
    return "".join("\ufffd" if c == "\x00" or "\ud800" <= c <= "\udfff" else c for c in text)


def _thumbs(v: Any) -> bool | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("up", "down", "thumbs_up", "thumbs_down", "+1", "-1"):
        return v.lower() in ("up", "thumbs_up", "+1")
    if isinstance(v, int) and v in (1, -1):
        return v == 1
    raise FeedbackError("thumbs must be 'up' or 'down'", param="thumbs")
