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
"""

from __future__ import annotations

import hmac
import json
import logging
import random
import secrets
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rlhfkit.feedback.enduser import FeedbackError, FeedbackLog

from .engine import ChatModel, PromptError, new_completion_id, validate_messages

__all__ = ["create_app"]

log = logging.getLogger("rlhfkit.serve")


def _error(
    status: int, message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}, status_code=status
    )


def _unsupported(body: dict) -> str | None:
    """The first option set in ``body`` that this server cannot honour: answering as if it had
    not been sent (no tool call, no log-probs, free text where JSON was asked for) would break
    the caller."""
    for key in ("tools", "functions", "logprobs", "top_logprobs"):
        if body.get(key) not in (None, False, [], ""):
            return key
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return "response_format"
    return None


def _stop_strings(body: dict) -> tuple[str, ...]:
    """OpenAI's ``stop``: a string or up to 4 strings; ``ValueError`` otherwise."""
    stop = body.get("stop")
    if stop is None:
        return ()
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not 1 <= len(stop) <= 4 or not all(isinstance(x, str) and x for x in stop):
        raise ValueError("stop must be a non-empty string or a list of 1 to 4 of them")
    return tuple(stop)


def _num(body: dict, key: str, kind: type, lo: float, hi: float):
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()):
        raise ValueError(key)
    if not lo <= v <= hi:
        raise ValueError(key)
    return kind(v)


MAX_MESSAGES = 512
FEEDBACK_FIELDS = ("completion_id", "choice_index", "thumbs", "reason", "comment", "rating", "edit", "choice", "user")
_OPEN_PATHS = ("/health",)  # answered without the API key: a load balancer's probe has none


def _resolve(future) -> None:
    if not future.done():  # a client gone meanwhile cancelled it
        future.set_result(None)


def _rlhfkit_options(body: dict) -> dict:
    """The request's ``rlhfkit`` object: ``{"compare": bool}``; ``ValueError(field)`` otherwise."""
    opts = body.get("rlhfkit")
    if opts is None:
        return {}
    if not isinstance(opts, dict):
        raise ValueError("rlhfkit")
    for key, value in opts.items():
        if key != "compare" or not isinstance(value, bool):
            raise ValueError(f"rlhfkit.{key}")
    return opts


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
) -> FastAPI:
    """The server for ``chat``; completions and feedback go to ``feedback`` when given (else the
    feedback endpoint answers 503). A request body over ``max_request_bytes`` is answered 413
    (every served conversation is stored with its completion, so the store grows by at most that
    much per request), a conversation of more than ``MAX_MESSAGES`` messages 400. A share
    ``compare_share`` of the requests that opt in get two replies to compare (``rng`` draws
    which); ``n`` is at most ``max_n``. ``line``: the ``PolicyWatcher`` following a learner
    folder, shown in ``/health``. ``chat_page``: the end users' web chat at ``/chat``
    (``webchat.CHAT_MODES``: ``auto``, ``open`` or ``off``; it needs ``feedback``), its sessions
    signed with ``chat_secret`` (default: a random key). The caller owns ``chat`` and ``line``
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
                return _error(401, "invalid API key", "invalid_request_error", code="invalid_api_key")
        return await call_next(request)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        # routing's own 404 / 405, in the shape OpenAI clients parse
        return _error(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)

    @app.exception_handler(Exception)
    async def _server_error(_request: Request, _exc: Exception):
        # the traceback goes to the server's log, not to the client
        return _error(500, "the server failed to answer this request", "server_error")

    class TooLarge(Exception):
        pass

    async def _json(request: Request) -> dict | None:
        """The JSON object of the body (None if it is not one); ``TooLarge`` past the limit,
        read in chunks so a huge body is never held whole."""

        if int(request.headers.get("content-length") or 0) > max_request_bytes:
            raise TooLarge()
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > max_request_bytes:
                raise TooLarge()
        try:
            body = json.loads(bytes(data))
            # a lone surrogate (``"\\ud800"``) parses but is no text: the tokenizer and the stored
            # JSON would fail on it later, after the work was done
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except (ValueError, RecursionError):  # malformed JSON or text, nesting past the stack
            return None
        return body if isinstance(body, dict) else None

    @app.exception_handler(TooLarge)
    async def _too_large(_request: Request, _exc: TooLarge):
        return _error(413, f"the request body is larger than {max_request_bytes} bytes")

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
            return _error(
                404,
                f"the model {model_id!r} does not exist; this server serves {chat.name!r}",
                param="model",
                code="model_not_found",
            )
        return model_card()

    def _request(body: dict) -> dict | JSONResponse:
        """The checked settings of a completion request, or the error answer."""
        bad = _unsupported(body)
        if bad is not None:
            return _error(400, f"{bad} is not supported by this server", param=bad)
        model = body.get("model")
        if model not in (None, "", chat.name):
            return _error(
                404,
                f"the model {model!r} does not exist; this server serves {chat.name!r}",
                param="model",
                code="model_not_found",
            )
        try:
            messages = validate_messages(body.get("messages"))
        except ValueError as e:
            return _error(400, str(e), param="messages")
        if len(messages) > MAX_MESSAGES:
            return _error(400, f"at most {MAX_MESSAGES} messages per request", param="messages")
        try:
            max_tokens = _num(body, "max_completion_tokens", int, 1, max_tokens_limit)
            if max_tokens is None:
                max_tokens = _num(body, "max_tokens", int, 1, max_tokens_limit)
            temperature = _num(body, "temperature", float, 0.0, 2.0)
            top_p = _num(body, "top_p", float, 0.0, 1.0)
            seed = _num(body, "seed", int, -(2**63), 2**63 - 1)
            n = _num(body, "n", int, 1, max_n)
            opts = _rlhfkit_options(body)
        except ValueError as e:
            what = f"n must be an integer from 1 to {max_n}" if e.args[0] == "n" else f"invalid value for {e.args[0]}"
            return _error(400, what, param=e.args[0])
        try:
            stop = _stop_strings(body)
        except ValueError as e:
            return _error(400, str(e), param="stop")
        user = body.get("user")
        if user is not None and not isinstance(user, str):
            return _error(400, "user must be a string", param="user")
        if top_p == 0.0:  # only the likeliest token is left: greedy decoding
            temperature, top_p = 0.0, None
        stream, options = body.get("stream"), body.get("stream_options")
        if stream not in (None, True, False):
            return _error(400, "stream must be true or false", param="stream")
        if options is not None and (
            not stream or not isinstance(options, dict) or options.get("include_usage") not in (None, True, False)
        ):
            return _error(
                400, 'stream_options is {"include_usage": true|false}, with stream: true', param="stream_options"
            )
        n = n or 1
        if opts.get("compare") and n != 1:
            return _error(
                400, "a comparison shows two replies of one request: ask for it with n = 1", param="rlhfkit.compare"
            )
        # the opted-in share of requests shows two replies; a client that did not opt in never does
        comparison = bool(opts.get("compare")) and compare_share > 0 and draw.random() < compare_share
        return dict(
            messages=messages,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=None if seed is None else seed % (2**63 - 1),
            stop=stop,
            user=user,
            n=2 if comparison else n,
            comparison=comparison,
            stream=bool(stream),
            include_usage=bool((options or {}).get("include_usage")),
        )

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

    def _usage(outs: list) -> dict:
        completion = sum(o.completion_tokens for o in outs)
        return {
            "prompt_tokens": outs[0].prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": outs[0].prompt_tokens + completion,
        }

    @app.post("/v1/chat/completions")
    async def completions(request: Request):
        body = await _json(request)
        if body is None:
            return _error(400, "the body must be a JSON object (UTF-8 text)")
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
            return _error(400, str(e), param="messages", code=e.code)
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
                "usage": _usage(outs),
                "rlhfkit": {"version": outs[0].version, "comparison": r["comparison"]},
            }

        try:
            return await run_in_threadpool(work)
        except PromptError as e:  # queued before a swap, refused by the new version
            return _error(400, str(e), param="messages", code=e.code)

    def _generation(r: dict) -> dict:
        return dict(
            max_tokens=r["max_tokens"], temperature=r["temperature"], top_p=r["top_p"], seed=r["seed"], stop=r["stop"]
        )

    def _stream_reply(r: dict):
        try:  # a conversation the model cannot answer is refused before the 200 and the first event
            pieces = chat.stream(r["messages"], n=r["n"], **_generation(r))
        except PromptError as e:
            return _error(400, str(e), param="messages", code=e.code)
        return StreamingResponse(
            _events(pieces, r), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    def _events(pieces, r: dict):
        """Server-sent events as OpenAI streams them: ``chat.completion.chunk`` objects, each
        choice's role first (once generation has begun), then content deltas (``index`` says
        whose), then each finish reason (and, asked for, a last chunk with the usage and no
        choices), then ``[DONE]``. The completion is stored before the finish chunks, so feedback
        on its id can be sent as soon as the stream ends."""
        cid, created = new_completion_id(), int(time.time())
        marks = {"version": pieces.version, "comparison": r["comparison"]}
        if r.get("conversation"):  # the web chat's
            marks["conversation"] = r["conversation"]

        def chunk(choices: list, usage: dict | None = None) -> str:
            out = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": chat.name,
                "system_fingerprint": None,
                "choices": choices,
                "rlhfkit": marks,
            }
            if r["include_usage"]:
                out["usage"] = usage
            return f"data: {json.dumps(out, ensure_ascii=False)}\n\n"

        def delta(i: int, d: dict, finish: str | None = None) -> list:
            return [{"index": i, "delta": d, "logprobs": None, "finish_reason": finish}]

        def roles():
            # sent once the batch has begun: a request queued before a swap is drawn by the new
            # version (and rendered for it), and every chunk names the version that drew it
            marks["version"] = pieces.version
            return [chunk(delta(i, {"role": "assistant", "content": ""})) for i in range(r["n"])]

        announced = False
        try:
            for i, piece in pieces.events():
                if not announced:
                    yield from roles()
                    announced = True
                yield chunk(delta(i, {"content": piece}))
            outs = pieces.results
            if not announced:  # no piece: every reply empty
                yield from roles()
            marks["version"] = outs[0].version
            _store(cid, r, outs)
        except Exception:  # noqa: BLE001 - the 200 is sent: the error can only be an event
            log.exception("streamed completion %s failed", cid)
            yield f"data: {json.dumps({'error': {'message': 'the server failed to finish this reply', 'type': 'server_error', 'param': None, 'code': None}})}\n\n"
            return
        for i, o in enumerate(outs):
            yield chunk(delta(i, {}, o.finish_reason))
        if r["include_usage"]:
            yield chunk([], _usage(outs))
        yield "data: [DONE]\n\n"

    @app.post("/v1/feedback")
    async def post_feedback(request: Request):
        if feedback is None:
            return _error(503, "this server was started without a feedback store (--db)", "server_error")
        body = await _json(request)
        if body is None:
            return _error(400, "the body must be a JSON object (UTF-8 text)")
        unknown = next((k for k in body if k not in FEEDBACK_FIELDS), None)
        if unknown is not None:
            return _error(
                400,
                f"unknown field {unknown[:100]!r}; the fields are {', '.join(FEEDBACK_FIELDS)}",
                param=unknown[:100],
            )
        cid = body.get("completion_id")
        if not isinstance(cid, str) or not cid:
            return _error(400, "completion_id is required", param="completion_id")
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
            return _error(e.status, str(e), param=e.param)
        return {"object": "feedback", "stored": True, **res}

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
            error=_error,
        )
        # a CSP without inline scripts on every answer (the page's and the API's alike)
        app.add_middleware(SecurityHeaders, csp=CHAT_CSP)
    return app
