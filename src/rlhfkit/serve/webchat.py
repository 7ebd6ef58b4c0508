"""The web chat for end users at ``/chat``: a conversation with streamed replies and the feedback
a chat assistant collects (thumbs with a reason, a 1-5 rating, a better reply, regenerate, the
choice between two replies when the server shows a comparison).

Who is who. Each browser gets an anonymous session: a random id in a cookie signed with
``itsdangerous`` (HMAC-SHA1 over the payload and its timestamp, checked on every request, the age
limited to ``SESSION_DAYS``). itsdangerous is the Pallets project's signing library (Flask's and
Starlette's sessions use it): a forged or altered cookie fails the signature, and no session
table is needed. The end user's pseudonymous id is ``chat:<session id>``; a person who signs in
with an account of the store (``rlhfkit feedback create-user``; the password checked with the
app's argon2 hashes and failed attempts limited by its ``LoginThrottle``) is
``chat-account:<account number>`` and finds their conversations in any browser (the account is
looked up on every request: a deactivated one is signed out). The completions of the page are
stored under that id like any API caller's ``user`` (hashed under ``--redact``, erased by
``rlhfkit feedback forget --end_user chat:...``; the page shows the id so a person can ask).
Every conversation read and every piece of feedback is checked against it: another session's
conversation or completion answers 404.

The API key. ``--chat auto`` (the default): with no API key the page is open, as the API is;
with one, the page asks for the key once and the signed session remembers that it was given
(a browser cannot send a bearer header on page loads; the key is never stored in the cookie;
wrong keys are limited like wrong passwords). Signing in does not stand in for the key.
``--chat open``: the page is open to anyone even though the API needs a key -- a public chat
in front of a private API, which the deployer must ask for by name. ``--chat off``: no page.
The page needs a feedback store (``--db``): it keeps the conversations there.

Hardening: cookie-authenticated POSTs carry the session's CSRF token (``X-CSRF-Token``,
compared in constant time) and, when the browser sends one, an ``Origin`` of this server; the
cookie is HttpOnly, SameSite=Strict, Path=/chat (Secure behind https); every answer has a
Content-Security-Policy without inline scripts or styles (the page's JS and CSS are static
files), X-Frame-Options DENY, nosniff, Referrer-Policy; the session and CSRF token are checked
before a body is read, and bodies are read under the server's size limit before they are parsed;
a message goes through the same checks and limits as ``/v1/chat/completions``. Rate limits
(``ChatLimits``, counted in the store by ``feedback.rate_limit``, as failed log-ins are): messages
per session (an account's: per account) and minute, and new sessions per client address and hour
(each new session would otherwise bring a fresh message budget); over a limit the answer is 429
with ``Retry-After``, checked before the body is read.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

# at module level: the routes' annotations are strings (``from __future__ import annotations``)
# that FastAPI resolves in this module's globals
from fastapi import Request

from .openai_request import unknown_field_response
from .webchat_page import chat_page_html

__all__ = ["CHAT_MODES", "CHAT_CSP", "SESSION_COOKIE", "ChatLimits", "chat_secret", "install_chat"]

CHAT_MODES = ("auto", "open", "off")
SESSION_COOKIE = "rlhfkit_chat"
SESSION_DAYS = 30
CHAT_SECRET_ENV = "RLHFKIT_CHAT_SECRET"
STATIC = Path(__file__).with_name("static")
# nothing inline: scripts and styles only from this server's files; fetches only to it
CHAT_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_CONVERSATION_ID = re.compile(r"^[A-Za-z0-9_-]{8,40}$")
CHAT_FEEDBACK_FIELDS = ("completion_id", "choice_index", "thumbs", "reason", "rating", "edit", "choice")
SEND_FIELDS = ("conversation", "messages")


@dataclass(frozen=True)
class ChatLimits:
    """What one visitor may ask of the page (0: no limit): messages per session (or per
    account, for a signed-in one) per minute, new anonymous sessions per client address per
    hour, messages per client address per minute (sessions last 30 days, so without it one
    address could hoard sessions and send through all of them), and feedback per session per
    minute (each is a write to the store). Behind a proxy the address is the one uvicorn's
    proxy headers give."""

    sends_per_minute: int = 20
    sessions_per_hour: int = 100
    address_sends_per_minute: int = 120
    feedback_per_minute: int = 60


def chat_secret(db_url: str | None) -> tuple[bytes, str]:
    """The key that signs chat sessions and where it came from: ``$RLHFKIT_CHAT_SECRET``, else a
    key file beside a SQLite store (``<db>.chat_secret``, made owner-only), so sessions outlive a
    restart; else a random key for this process (sessions end when it stops)."""
    if os.environ.get(CHAT_SECRET_ENV):
        return os.environ[CHAT_SECRET_ENV].encode("utf-8"), f"${CHAT_SECRET_ENV}"
    from rlhfkit.feedback import db
    from rlhfkit.feedback.enduser.keys import create_key_file

    path = db.sqlite_file(db_url) if db_url else None
    if path is None:
        return secrets.token_bytes(32), "a random key of this process"
    key_file = path.with_name(path.name + ".chat_secret")
    if not key_file.is_file():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        create_key_file(key_file)  # written whole under a temporary name: never read half made
    return key_file.read_text(encoding="utf-8").strip().encode("utf-8"), str(key_file)


def install_chat(
    app,
    *,
    model_name: str,
    feedback,
    api_key: str | None,
    mode: str,
    secret: bytes,
    read_json: Callable,
    check_request: Callable,
    stream_reply: Callable,
    error: Callable,
    limits: ChatLimits | None = None,
) -> None:
    """Add ``/chat`` (the page), ``/chat/static/*`` and ``/chat/api/*`` to ``app``. The
    caller's ``read_json`` (size-limited body reader), ``check_request`` (the completion
    request's checks) and ``stream_reply`` (its server-sent events) are the API's own, so the
    page meets the same limits. ``feedback``: the store (required); ``limits``: the page's rate
    limits (default ``ChatLimits()``)."""
    from fastapi.responses import HTMLResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from itsdangerous import BadSignature, URLSafeTimedSerializer
    from starlette.concurrency import run_in_threadpool

    from rlhfkit.feedback.auth import LoginThrottle, authenticate
    from rlhfkit.feedback.enduser import FeedbackError
    from rlhfkit.feedback.rate_limit import RateLimit, Throttled

    if mode not in CHAT_MODES:
        raise ValueError(f"chat must be one of {', '.join(CHAT_MODES)}")
    signer = URLSafeTimedSerializer(secret, salt="rlhfkit-chat-session")
    key_needed = bool(api_key) and mode == "auto"
    max_age = SESSION_DAYS * 86400

    throttle = LoginThrottle()
    limits = limits or ChatLimits()
    sends = RateLimit("chat-send", limits.sends_per_minute, 60.0, "messages")
    sessions = RateLimit("chat-session", limits.sessions_per_hour, 3600.0, "new chat sessions")
    address_sends = RateLimit("chat-send-address", limits.address_sends_per_minute, 60.0, "messages")
    feedback_rate = RateLimit("chat-feedback", limits.feedback_per_minute, 60.0, "feedback")

    def new_session(**kw) -> dict:
        return {"sid": secrets.token_urlsafe(16), "csrf": secrets.token_urlsafe(24), "key": False, **kw}

    def account_active(s: dict) -> bool:
        """A signed-in session's account still exists, active, under the same name (checked on
        every request: an operator's ``feedback set-user --active false`` ends its sessions)."""
        if "account" not in s:
            return True
        from sqlalchemy import select

        from rlhfkit.feedback import db

        with feedback.store.read() as conn:
            row = conn.execute(
                select(db.users.c.username, db.users.c.active).where(db.users.c.id == s["account"])
            ).first()
        return row is not None and bool(row.active) and row.username == s.get("name")

    async def current(request: Request) -> dict | None:
        s = session_of(request)
        if s is not None and not await run_in_threadpool(account_active, s):
            return None
        return s

    def too_many(e: Throttled, message: str):
        resp = error(429, message, code="rate_limited")
        resp.headers["Retry-After"] = str(int(e.retry_after) + 1)
        return no_store(resp)

    def client_address(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    def reserve(what: str, request: Request):
        """A slot for one guess (a password, the API key) from this address, or the 429 answer."""
        address = client_address(request)
        try:
            return feedback.store.write(lambda c: throttle.reserve(c, what, address)), address
        except Throttled as e:
            return too_many(e, "too many failed attempts; try again later"), address

    async def over(rate: RateLimit, key: str, whose: str):
        """None once one more hit of ``rate`` for ``key`` is counted; the 429 answer when the
        window is full (a write job of the store, in a worker thread)."""
        try:
            await run_in_threadpool(feedback.store.write, lambda c: rate.hit(c, key))
        except Throttled as e:
            return too_many(e, f"too many {rate.what} from {whose}; try again in {int(e.retry_after) + 1} s")
        return None

    def session_of(request: Request) -> dict | None:
        raw = request.cookies.get(SESSION_COOKIE)
        if not raw:
            return None
        try:
            s = signer.loads(raw, max_age=max_age)
        except BadSignature:  # forged, altered, signed with another key, or too old
            return None
        ok = isinstance(s, dict) and all(isinstance(s.get(k), str) for k in ("sid", "csrf"))
        return s if ok and ("account" not in s or isinstance(s["account"], int)) else None

    def with_cookie(request: Request, resp, s: dict):
        # Secure when the page was asked for over https (behind a proxy: as uvicorn's proxy headers say)
        resp.set_cookie(
            SESSION_COOKIE,
            signer.dumps(s),
            max_age=max_age,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/chat",
        )
        return resp

    def end_user(s: dict) -> str:
        # an account's conversations follow it from browser to browser; the id names no person
        # by itself (the account's number, not its name)
        return f"chat-account:{s['account']}" if "account" in s else f"chat:{s['sid']}"

    def no_store(resp):
        resp.headers["Cache-Control"] = "no-store"
        return resp

    async def guard(request: Request, unsafe: bool, needs_key: bool = True) -> dict | Any:
        """The request's session, or the error answer: no valid session (or its account gone)
        401; the key not yet given 401 ``key_required``; a POST without its CSRF token or from
        another origin 403."""
        s = await current(request)
        if s is None:
            return error(401, "no chat session: open /chat", code="no_session")
        if needs_key and key_needed and not s.get("key"):
            return error(401, "give this server's API key on the chat page first", code="key_required")
        if unsafe:
            origin = request.headers.get("origin")
            here = f"{request.url.scheme}://{request.headers.get('host', '')}"
            supplied = request.headers.get("x-csrf-token") or ""
            if origin is not None and origin != here:
                return error(403, "a request from another site", code="bad_origin")
            if not (supplied and hmac.compare_digest(supplied.encode(), s["csrf"].encode())):
                return error(403, "missing or wrong CSRF token", code="csrf")
        return s

    async def session_and_body(
        request: Request, fields: Sequence[str], rate=None, address_rate=None
    ) -> tuple[dict, dict] | Any:
        """``(session, body)`` of a POST that needs the key, or the error answer: ``guard``'s,
        the session over ``rate`` or its address over ``address_rate`` 429 (before the body is
        read), a body that is not a JSON object 400, a field not among ``fields`` 400."""
        s = await guard(request, unsafe=True)
        if not isinstance(s, dict):
            return s
        if rate is not None and (refused := await over(rate, end_user(s), "this chat session")) is not None:
            return refused
        if address_rate is not None:
            if (refused := await over(address_rate, client_address(request), "this address")) is not None:
                return refused
        body = await read_json(request)
        if body is None:
            return error(400, "the body must be a JSON object (UTF-8 text)")
        unknown = unknown_field_response(body, fields)
        return (s, body) if unknown is None else unknown

    app.mount("/chat/static", StaticFiles(directory=STATIC), name="chat-static")

    @app.get("/chat", include_in_schema=False)
    async def page(request: Request):
        s = await current(request)
        fresh = s is None
        if fresh and (refused := await over(sessions, client_address(request), "this address")) is not None:
            return refused
        s = s or new_session()
        resp = HTMLResponse(
            chat_page_html(model_name, s["csrf"], end_user(s), key_needed and not s.get("key"), s.get("name"))
        )
        no_store(resp)
        return with_cookie(request, resp, s) if fresh else resp

    @app.post("/chat/api/key", include_in_schema=False)
    async def give_key(request: Request):
        s = await guard(request, unsafe=True, needs_key=False)
        if not isinstance(s, dict):
            return s
        body = await read_json(request)
        got = body.get("key") if isinstance(body, dict) else None
        known, address = await run_in_threadpool(reserve, "(the API key)", request)
        if not isinstance(known, bool):
            return known
        if not isinstance(got, str) or not api_key or not hmac.compare_digest(got.encode(), api_key.encode()):
            return error(401, "wrong API key", param="key", code="invalid_api_key")
        await run_in_threadpool(feedback.store.write, lambda c: throttle.succeeded(c, "(the API key)", address, known))
        # a new session id and CSRF token once the key is given: nothing of the locked session carries over
        unlocked = new_session(key=True, **{k: s[k] for k in ("account", "name") if k in s})
        return with_cookie(
            request,
            no_store(JSONResponse({"unlocked": True, "csrf_token": unlocked["csrf"], "end_user": end_user(unlocked)})),
            unlocked,
        )

    @app.post("/chat/api/login", include_in_schema=False)
    async def login(request: Request):
        """Sign in with an account of the store (``rlhfkit feedback create-user``): the session
        becomes the account's, whose conversations it then sees from any browser. Failed
        attempts are limited per name and address (``feedback.auth.LoginThrottle``)."""
        s = await guard(request, unsafe=True, needs_key=False)
        if not isinstance(s, dict):
            return s
        body = await read_json(request)
        name, password = (body.get("username"), body.get("password")) if isinstance(body, dict) else (None, None)
        if not (isinstance(name, str) and isinstance(password, str) and 0 < len(name) <= 200 and len(password) <= 1000):
            return error(400, "give username and password", param="username")

        def check():
            known, address = reserve(name, request)
            if not isinstance(known, bool):
                return known
            with feedback.store.read() as conn:
                user = authenticate(conn, name, password)
            if user is None:
                return None
            feedback.store.write(lambda c: throttle.succeeded(c, name, address, known))
            return user

        user = await run_in_threadpool(check)
        if user is None:
            return error(401, "wrong user name or password", param="username", code="invalid_login")
        if not isinstance(user, dict):
            return user
        signed_in = new_session(key=s.get("key", False), account=int(user["id"]), name=user["username"])
        return with_cookie(
            request, no_store(JSONResponse({"signed_in": user["username"], "end_user": end_user(signed_in)})), signed_in
        )

    @app.post("/chat/api/logout", include_in_schema=False)
    async def logout(request: Request):
        s = await guard(request, unsafe=True, needs_key=False)
        if not isinstance(s, dict):
            return s
        if (refused := await over(sessions, client_address(request), "this address")) is not None:
            return refused  # signing out gives a new anonymous session: counted as one
        fresh = new_session(key=s.get("key", False))  # an anonymous session again, with nothing of the account's
        return with_cookie(request, no_store(JSONResponse({"signed_in": None, "end_user": end_user(fresh)})), fresh)

    @app.get("/chat/api/conversations", include_in_schema=False)
    async def conversations(request: Request):
        s = await guard(request, unsafe=False)
        if not isinstance(s, dict):
            return s
        found = await run_in_threadpool(feedback.conversations, end_user(s))
        return no_store(JSONResponse({"data": [{k: c[k] for k in ("id", "title", "updated")} for c in found]}))

    @app.get("/chat/api/conversations/{conversation_id}", include_in_schema=False)
    async def conversation(request: Request, conversation_id: str):
        s = await guard(request, unsafe=False)
        if not isinstance(s, dict):
            return s
        found = await run_in_threadpool(feedback.conversations, end_user(s))
        mine = next((c for c in found if c["id"] == conversation_id), None)
        if mine is None:  # someone else's is as absent as one that never was
            return error(404, "no such conversation", param="conversation_id", code="not_found")
        return no_store(JSONResponse(mine))

    @app.post("/chat/api/send", include_in_schema=False)
    async def send(request: Request):
        checked = await session_and_body(request, SEND_FIELDS, rate=sends, address_rate=address_sends)
        if not isinstance(checked, tuple):
            return checked
        s, body = checked
        cid = body.get("conversation")
        if cid is None:
            cid = secrets.token_urlsafe(12)
        elif not isinstance(cid, str) or not _CONVERSATION_ID.match(cid):
            return error(400, "conversation must be the id this server gave", param="conversation")
        # the API's own checks and limits; the page always accepts a comparison
        r = check_request({"messages": body.get("messages"), "stream": True, "rlhfkit": {"compare": True}})
        if not isinstance(r, dict):
            return r
        r = dict(r, user=end_user(s), conversation=cid)
        return no_store(stream_reply(r))

    @app.post("/chat/api/feedback", include_in_schema=False)
    async def give_feedback(request: Request):
        checked = await session_and_body(request, CHAT_FEEDBACK_FIELDS, rate=feedback_rate)
        if not isinstance(checked, tuple):
            return checked
        s, body = checked
        cid, user = body.get("completion_id"), end_user(s)

        def store() -> dict:
            if not feedback.served_to(cid, user):  # another session's reply is as absent as an unknown one
                raise FeedbackError(f"no completion {str(cid)[:100]!r}", status=404, param="completion_id")
            return feedback.feedback(
                cid,
                thumbs=body.get("thumbs"),
                rating=body.get("rating"),
                user=user,
                reason=body.get("reason"),
                edit=body.get("edit"),
                choice=body.get("choice"),
                choice_index=body.get("choice_index"),
            )

        try:
            res = await run_in_threadpool(store)
        except FeedbackError as e:
            return error(e.status, str(e), param=e.param)
        return no_store(JSONResponse({"object": "feedback", "stored": True, **res}))
