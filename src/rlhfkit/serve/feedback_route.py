"""``POST /v1/feedback``: an end user's verdict on a served completion, stored next to it.

The body is ``{"completion_id", "choice_index"?, "thumbs"?, "reason"? (or "comment"), "rating"?,
"edit"?, "choice"?, "user"?}``; every field is checked by ``FeedbackLog.feedback`` (400 for an
unknown field, 422 naming the field for a bad value, 404 for an unknown completion), and a server
started without a store answers 503.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from fastapi import FastAPI, Request

from rlhfkit.feedback.enduser import FeedbackError, FeedbackLog

from .openai_request import error_response, unknown_field_response

FEEDBACK_FIELDS = ("completion_id", "choice_index", "thumbs", "reason", "comment", "rating", "edit", "choice", "user")


def add_feedback_route(
    app: FastAPI, feedback: FeedbackLog | None, read_json: Callable[[Request], Awaitable[dict | None]]
) -> None:
    """Add ``POST /v1/feedback`` to ``app``, storing into ``feedback``; ``read_json`` is the
    server's size-limited body reader."""

    @app.post("/v1/feedback")
    async def post_feedback(request: Request):
        if feedback is None:
            return error_response(503, "this server was started without a feedback store (--db)", "server_error")
        body = await read_json(request)
        if body is None:
            return error_response(400, "the body must be a JSON object (UTF-8 text)")
        unknown = unknown_field_response(body, FEEDBACK_FIELDS)
        if unknown is not None:
            return unknown
        cid = body.get("completion_id")
        if not isinstance(cid, str) or not cid:
            return error_response(400, "completion_id is required", param="completion_id")
        from starlette.concurrency import run_in_threadpool

        try:
            res = await run_in_threadpool(
                lambda: feedback.feedback(
                    cid,
                    thumbs=body.get("thumbs"),
                    rating=body.get("rating"),
                    comment=body.get("comment"),
                    user=body.get("user"),
                    reason=body.get("reason"),
                    edit=body.get("edit"),
                    choice=body.get("choice"),
                    choice_index=body.get("choice_index"),
                )
            )
        except FeedbackError as e:
            return error_response(e.status, str(e), param=e.param)
        return {"object": "feedback", "stored": True, **res}
