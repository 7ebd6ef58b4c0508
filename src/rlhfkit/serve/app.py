"""An OpenAI-compatible chat server that keeps collecting feedback for the next version.

- ``POST /v1/chat/completions``: ``{"model", "messages": [{role, content}], "max_tokens" |
  "max_completion_tokens", "temperature", "top_p", "seed", "stop", "user", "n", "stream",
  "stream_options", "rlhfkit": {"compare": true}}`` -> the OpenAI ``chat.completion`` object
  (``id``, ``object``, ``created``, ``model``, ``choices[i].message`` / ``finish_reason``,
  ``usage``) plus ``"rlhfkit": {"version", "comparison"}``: the policy version that wrote the
  replies, and whether they are a comparison. Every reply is stored with its messages, ``user``
  and version (``feedback.enduser``), which ``rlhfkit feedback forget --end_user ID`` erases.
  ``n`` (1 to ``max_n``) replies draw from seeds ``seed``, then seeds derived from it. With
  ``"stream": true`` the same replies as server-sent ``chat.completion.chunk`` events (each
  choice's deltas carry its ``index``; ``stream_options.include_usage`` adds the usage chunk),
  then ``data: [DONE]``. ``stop`` (up to 4 strings) ends a reply before the first of them.
  Options this server cannot honour (``tools``, ``logprobs``, a JSON ``response_format``) are
  answered 400 in OpenAI's error shape rather than ignored; a conversation longer than the model
  takes is answered 400 ``context_length_exceeded`` (never cut).
- Comparisons: a client that opts in (``"rlhfkit": {"compare": true}``, with ``n`` 1) gets, on a
  share ``compare_share`` of its requests, two replies (two seeds) marked ``"rlhfkit":
  {"comparison": true}``, as chat products ask "which do you prefer?"; a client that did not ask
  never gets two choices it did not ask for.
- ``POST /v1/feedback``: ``{"completion_id", "choice_index"?, "thumbs"?: "up"|"down"|true|false,
  "reason"? (or "comment"), "rating"?: 1-5, "edit"?: "a better reply", "choice"?: 0|1,
  "user"?}`` -> stored next to the completion (``feedback.enduser.FeedbackLog.feedback``); every
  field is checked (400 for an unknown field, 422 naming the field for a bad value, 404 for an
  unknown completion). Exported by ``rlhfkit feedback export --project serve-thumbs --kind
  thumbs`` (``serve-ratings`` / ``ratings``, ``serve-edits`` / ``rewrites``, ``serve-choices`` /
  ``pairs``).
- ``GET /v1/models``, ``GET /v1/models/{id}``: the one served model (with its ``version``).
- ``GET /health``: status, model, the version answering now, the policy line's state (a
  learner folder: the version it follows, the last one that failed to load) and the
  generation counters (``batches``: sampler calls, ``requests``, ``rows``, ``largest_batch``).

Any OpenAI client works: ``OpenAI(base_url="http://host:port/v1", api_key="unused")``
(``extra_body={"rlhfkit": {"compare": True}}`` opts in to comparisons). When ``api_key`` is
set, every request but ``/health`` (a load balancer's probe) must send ``Authorization: Bearer
<api_key>``. Every error, the framework's own 404 / 405 / 500 included, has OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``.

This module composes the server; a completion request's checks and the error shape are in
``openai_request.py``, the streamed events in ``sse_events.py``, ``/v1/feedback`` in
``feedback_route.py`` and the web chat in ``webchat.py``.
"""

from __future__ import annotations

import hmac
import random
import secrets
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rlhfkit.feedback.enduser import FeedbackLog

from .batcher import ServerStopping
from .engine import ChatModel, PromptError, new_completion_id
from .feedback_route import add_feedback_route
from .openai_request import (
    RequestTooLarge,
    completion_settings,
    error_response,
    read_json_object,
    stopping_response,
)
from .sse_events import completion_events, completion_usage

__all__ = ["create_app"]

_OPEN_PATHS = ("/health",)  # answered without the API key: a load balancer's probe has none


def _resolve(future) -> None:
    if not future.done():  # a client gone meanwhile cancelled it
        future.set_result(None)


def create_app(
    chat: ChatModel,
    feedback: FeedbackLog | None = None,
    api_key: str | None = None,
    max_tokens_limit: int = 2048,
    max_request_bytes: int = 1_000_000,
    compare_share: float = 0.0,
    max_n: int = 8,
    line: Any = None,
    rng: random.Random | None = None,
    chat_page: str = "off",
    chat_secret: bytes | None = None,
    chat_limits: Any = None,
) -> FastAPI:
    """The server for ``chat``; completions and feedback go to ``feedback`` when given (else the
    feedback endpoint answers 503). A request body over ``max_request_bytes`` is answered 413
    (every served conversation is stored with its completion, so the store grows by at most that
    much per request), a conversation of more than ``MAX_MESSAGES`` messages 400. A share
    ``compare_share`` of the requests that opt in get two replies to compare (``rng`` draws
    which); ``n`` is at most ``max_n``. ``line``: the ``PolicyWatcher`` following a learner
    folder, shown in ``/health``. ``chat_page``: the end users' web chat at ``/chat``
    (``webchat.CHAT_MODES``: ``auto``, ``open`` or ``off``; it needs ``feedback``), its sessions
    signed with ``chat_secret`` (default: a random key), rate-limited by ``chat_limits``
    (``webchat.ChatLimits``, default its defaults). The caller owns ``chat`` and ``line``
    (and closes them); the app closes ``feedback`` when it stops."""
    if not 0.0 <= compare_share <= 1.0:
        raise ValueError("compare_share must be from 0 to 1")
    from .webchat import CHAT_CSP, CHAT_MODES

    if chat_page not in CHAT_MODES:
        raise ValueError(f"chat_page must be one of {', '.join(CHAT_MODES)}")
    with_page = chat_page != "off" and feedback is not None
    draw = rng or random.SystemRandom()
    import contextlib

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        if feedback is not None:
            feedback.close()

    app = FastAPI(
        title="rlhfkit serve",
        version="1",
        lifespan=lifespan,
        description="OpenAI-compatible chat completions plus end-user feedback.",
    )
    app.state.chat, app.state.feedback = chat, feedback
    created = int(time.time())

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        # every path but the probe: the docs and schema are the server's too, and a path
        # outside /v1/ must not be a way around the key
        # the web chat's paths have their own guard (webchat.py: a signed session that was given
        # the key, or a page the deployer opened with chat_page "open")
        path = request.url.path
        if api_key and path not in _OPEN_PATHS and not (with_page and (path == "/chat" or path.startswith("/chat/"))):
            scheme, _, got = request.headers.get("authorization", "").partition(" ")
            ok = scheme.lower() == "bearer" and hmac.compare_digest(got.strip().encode(), api_key.encode())
            if not ok:
                return error_response(401, "invalid API key", "invalid_request_error", code="invalid_api_key")
        return await call_next(request)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        # routing's own 404 / 405, in the shape OpenAI clients parse
        return error_response(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)

    @app.exception_handler(Exception)
    async def _server_error(_request: Request, _exc: Exception):
        # the traceback goes to the server's log, not to the client
        return error_response(500, "the server failed to answer this request", "server_error")

    async def _json(request: Request) -> dict | None:
        return await read_json_object(request, max_request_bytes)

    @app.exception_handler(RequestTooLarge)
    async def _too_large(_request: Request, _exc: RequestTooLarge):
        return error_response(413, f"the request body is larger than {max_request_bytes} bytes")

    @app.get("/health")
    def health():
        out = {"status": "ok", "model": chat.name, "version": chat.version, "generation": chat.stats()}
        if line is not None:
            out["policy"] = line.status()
        return out

    def model_card() -> dict:
        return {"id": chat.name, "object": "model", "created": created, "owned_by": "rlhfkit", "version": chat.version}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")  # a served name may hold a "/" (run/model)
    def model(model_id: str):
        if model_id != chat.name:
            return error_response(
                404,
                f"the model {model_id!r} does not exist; this server serves {chat.name!r}",
                param="model",
                code="model_not_found",
            )
        return model_card()

    def _request(body: dict) -> dict | JSONResponse:
        """The checked settings of a completion request, or the error answer."""
        return completion_settings(body, chat.name, max_tokens_limit, max_n, compare_share, draw)

    def _store(cid: str, r: dict, outs: list) -> None:
        if feedback is not None:
            feedback.log_choices(
                cid,
                r["messages"],
                [o.text for o in outs],
                chat.name,
                r["user"],
                [o.version for o in outs],
                comparison=r["comparison"],
                conversation=r.get("conversation"),
            )

    @app.post("/v1/chat/completions")
    async def completions(request: Request):
        body = await _json(request)
        if body is None:
            return error_response(400, "the body must be a JSON object (UTF-8 text)")
        r = _request(body)
        if isinstance(r, JSONResponse):
            return r
        gen = _generation(r)
        if r["stream"]:
            return _stream_reply(r)
        import asyncio

        from starlette.concurrency import run_in_threadpool

        loop = asyncio.get_running_loop()
        finished = loop.create_future()
        try:  # waited for without a thread: a handler holds none while its request is queued
            job = chat.submit(
                r["messages"], r["n"], **gen, on_done=lambda: loop.call_soon_threadsafe(_resolve, finished)
            )
        except PromptError as e:
            return error_response(400, str(e), param="messages", code=e.code)
        except ServerStopping as e:  # SIGTERM came: no new generation (the queued ones end within the grace)
            return stopping_response(e)
        await finished

        def work() -> dict[str, Any]:
            outs = job.result()
            cid = new_completion_id()
            _store(cid, r, outs)
            return {
                "id": cid,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": chat.name,
                "system_fingerprint": None,
                "choices": [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": o.text},
                        "logprobs": None,
                        "finish_reason": o.finish_reason,
                    }
                    for i, o in enumerate(outs)
                ],
                "usage": completion_usage(outs),
                "rlhfkit": {"version": outs[0].version, "comparison": r["comparison"]},
            }

        try:
            return await run_in_threadpool(work)
        except PromptError as e:  # queued before a swap, refused by the new version
            return error_response(400, str(e), param="messages", code=e.code)
        except ServerStopping as e:  # still queued (or drawing) when the stop's grace ended; not stored
            return stopping_response(e)

    def _generation(r: dict) -> dict:
        return dict(
            max_tokens=r["max_tokens"], temperature=r["temperature"], top_p=r["top_p"], seed=r["seed"], stop=r["stop"]
        )

    def _stream_reply(r: dict):
        try:  # a conversation the model cannot answer is refused before the 200 and the first event
            pieces = chat.stream(r["messages"], n=r["n"], **_generation(r))
        except PromptError as e:
            return error_response(400, str(e), param="messages", code=e.code)
        except ServerStopping as e:
            return stopping_response(e)
        return StreamingResponse(
            completion_events(pieces, r, chat.name, _store),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )

    add_feedback_route(app, feedback, _json)

    if with_page:
        from rlhfkit.feedback.http_hardening import SecurityHeaders

        from .webchat import install_chat

        install_chat(
            app,
            model_name=chat.name,
            feedback=feedback,
            api_key=api_key,
            mode=chat_page,
            secret=chat_secret or secrets.token_bytes(32),
            read_json=_json,
            check_request=_request,
            stream_reply=_stream_reply,
            error=error_response,
            limits=chat_limits,
        )
        # a CSP without inline scripts on every answer (the page's and the API's alike)
        app.add_middleware(SecurityHeaders, csp=CHAT_CSP)
    return app
