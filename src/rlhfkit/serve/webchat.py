"""The web chat for end users at ``/chat``: a conversation with streamed replies and the feedback
a chat assistant collects (thumbs with a reason, a 1-5 rating, a better reply, regenerate, the
choice between two replies when the server shows a comparison).

Who is who. Each browser gets an anonymous session: a random id in a cookie signed with
``itsdangerous`` (HMAC-SHA1 over the payload and its timestamp, checked on every request, the age
limited to ``SESSION_DAYS``). itsdangerous is the Pallets project's signing library (Flask's and
Starlette's sessions use it): a forged or altered cookie fails the signature, and no session
table is needed. The end user's pseudonymous id is ``chat:<session id>``: the completions of
the page are stored under it like any API caller's ``user`` (hashed under ``--redact``, erased
by ``rlhfkit feedback forget --end_user chat:...``; the page shows the id so a person can ask).
Every conversation read and every piece of feedback is checked against it: another session's
conversation or completion answers 404.

The API key. ``--chat auto`` (the default): with no API key the page is open, as the API is;
with one, the page asks for the key once and the signed session remembers that it was given
(a browser cannot send a bearer header on page loads; the key is never stored in the cookie).
``--chat open``: the page is open to anyone even though the API needs a key -- a public chat
in front of a private API, which the deployer must ask for by name. ``--chat off``: no page.
The page needs a feedback store (``--db``): it keeps the conversations there.

Hardening: cookie-authenticated POSTs carry the session's CSRF token (``X-CSRF-Token``,
compared in constant time) and, when the browser sends one, an ``Origin`` of this server; the
cookie is HttpOnly, SameSite=Strict, Path=/chat (Secure behind https); every answer has a
Content-Security-Policy without inline scripts or styles (the page's JS and CSS are static
files), X-Frame-Options DENY, nosniff, Referrer-Policy; the session and CSRF token are checked
before a body is read, and bodies are read under the server's size limit before they are parsed;
a message goes through the same checks and limits as ``/v1/chat/completions``.
"""
from __future__ import annotations

import hmac
import html
import os
import re
import secrets
from pathlib import Path
from typing import Any, Callable

# at module level: the routes' annotations are strings (``from __future__ import annotations``)
# that FastAPI resolves in this module's globals
from fastapi import Request
__all__ = ["CHAT_MODES", "CHAT_CSP", "SESSION_COOKIE", "chat_secret", "install_chat"]

CHAT_MODES = ("auto", "open", "off")
SESSION_COOKIE = "rlhfkit_chat"
SESSION_DAYS = 30
CHAT_SECRET_ENV = "RLHFKIT_CHAT_SECRET"
STATIC = Path(__file__).with_name("static")
# nothing inline: scripts and styles only from this server's files; fetches only to it
CHAT_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_CONVERSATION_ID = re.compile(r"^[A-Za-z0-9_-]{8,40}$")
CHAT_FEEDBACK_FIELDS = ("completion_id", "choice_index", "thumbs", "reason", "rating", "edit", "choice")


def chat_secret(db_url: str | None) -> tuple[bytes, str]:
    """The key that signs chat sessions and where it came from: ``$RLHFKIT_CHAT_SECRET``, else a
    key file beside a SQLite store (``<db>.chat_secret``, made owner-only), so sessions outlive a
    restart; else a random key for this process (sessions end when it stops)."""
    if os.environ.get(CHAT_SECRET_ENV):
        return os.environ[CHAT_SECRET_ENV].encode("utf-8"), f"${CHAT_SECRET_ENV}"
    from rlhfkit.feedback import db

    path = db.sqlite_file(db_url) if db_url else None
    if path is None:
        return secrets.token_bytes(32), "a random key of this process"
    key_file = path.with_name(path.name + ".chat_secret")
    if not key_file.is_file():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # made by another process meanwhile
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
    return key_file.read_text(encoding="utf-8").strip().encode("utf-8"), str(key_file)


def _page(model: str, csrf: str, end_user: str, locked: bool) -> str:
    e = html.escape
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{e(csrf)}">
<meta name="chat-locked" content="{'1' if locked else '0'}">
<title>Chat with {e(model)}</title>
<link rel="stylesheet" href="/chat/static/chat.css">
<script src="/chat/static/chat.js" defer></script>
</head>
<body>
<header class="top">
  <h1>Chat with <span class="model">{e(model)}</span></h1>
  <button type="button" id="new-chat">New conversation</button>
</header>
<div class="layout">
  <nav aria-labelledby="conversations-title">
    <h2 id="conversations-title">Your conversations</h2>
    <ul id="conversations"></ul>
  </nav>
  <main>
    <form id="key-form" class="key-form" hidden>
      <label for="api-key">This server needs its API key once</label>
      <input id="api-key" type="password" autocomplete="off" required>
      <button type="submit">Unlock</button>
    </form>
    <ol id="messages" class="messages" aria-label="Conversation"></ol>
    <form id="composer" class="composer">
      <label for="prompt">Message</label>
      <textarea id="prompt" rows="3" autofocus
        placeholder="Write a message. Enter sends, Shift+Enter starts a new line."></textarea>
      <button type="submit" id="send">Send</button>
    </form>
    <p id="status" class="status" role="status" aria-live="polite"></p>
  </main>
</div>
<footer>Your anonymous id is <code id="end-user">{e(end_user)}</code>: give it to the operator to have
what you wrote here erased.</footer>
</body>
</html>
"""


def install_chat(app, *, model_name: str, feedback, api_key: str | None, mode: str, secret: bytes,
                 read_json: Callable, check_request: Callable, stream_reply: Callable, error: Callable) -> None:
    """Add ``/chat`` (the page), ``/chat/static/*`` and ``/chat/api/*`` to ``app``. The
    caller's ``read_json`` (size-limited body reader), ``check_request`` (the completion
    request's checks) and ``stream_reply`` (its server-sent events) are the API's own, so the
    page meets the same limits. ``feedback``: the store (required)."""
    from fastapi.responses import HTMLResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from itsdangerous import BadSignature, URLSafeTimedSerializer
    from starlette.concurrency import run_in_threadpool

    from rlhfkit.feedback.enduser import FeedbackError

    if mode not in CHAT_MODES:
        raise ValueError(f"chat must be one of {', '.join(CHAT_MODES)}")
    signer = URLSafeTimedSerializer(secret, salt="rlhfkit-chat-session")
    key_needed = bool(api_key) and mode == "auto"
    max_age = SESSION_DAYS * 86400

    def new_session() -> dict:
        return {"sid": secrets.token_urlsafe(16), "csrf": secrets.token_urlsafe(24), "key": False}

    def session_of(request: Request) -> dict | None:
        raw = request.cookies.get(SESSION_COOKIE)
        if not raw:
            return None
        try:
            s = signer.loads(raw, max_age=max_age)
        except BadSignature:  # forged, altered, signed with another key, or too old
            return None
        ok = isinstance(s, dict) and all(isinstance(s.get(k), str) for k in ("sid", "csrf"))
        return s if ok else None

    def with_cookie(request: Request, resp, s: dict):
        # Secure when the page was asked for over https (behind a proxy: as uvicorn's proxy headers say)
        resp.set_cookie(SESSION_COOKIE, signer.dumps(s), max_age=max_age, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/chat")
        return resp

    def end_user(s: dict) -> str:
        return f"chat:{s['sid']}"

    def no_store(resp):
        resp.headers["Cache-Control"] = "no-store"
        return resp

    def guard(request: Request, unsafe: bool, needs_key: bool = True) -> dict | Any:
        """The request's session, or the error answer: no valid session 401; the key not yet
        given 401 ``key_required``; a POST without its CSRF token or from another origin 403."""
        s = session_of(request)
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

    app.mount("/chat/static", StaticFiles(directory=STATIC), name="chat-static")

    @app.get("/chat", include_in_schema=False)
    def page(request: Request):
        s = session_of(request)
        fresh = s is None
        s = s or new_session()
        resp = HTMLResponse(_page(model_name, s["csrf"], end_user(s), key_needed and not s.get("key")))
        no_store(resp)
        return with_cookie(request, resp, s) if fresh else resp

    @app.post("/chat/api/key", include_in_schema=False)
    async def give_key(request: Request):
        s = guard(request, unsafe=True, needs_key=False)
        if not isinstance(s, dict):
            return s
        body = await read_json(request)
        got = body.get("key") if isinstance(body, dict) else None
        if not isinstance(got, str) or not api_key or not hmac.compare_digest(got.encode(), api_key.encode()):
            return error(401, "wrong API key", param="key", code="invalid_api_key")
        # a new session id and CSRF token once the key is given: nothing of the locked session carries over
        unlocked = dict(new_session(), key=True)
        return with_cookie(request, no_store(JSONResponse({"unlocked": True, "csrf_token": unlocked["csrf"],
                                                  "end_user": end_user(unlocked)})), unlocked)

    @app.get("/chat/api/conversations", include_in_schema=False)
    async def conversations(request: Request):
        s = guard(request, unsafe=False)
        if not isinstance(s, dict):
            return s
        found = await run_in_threadpool(feedback.conversations, end_user(s))
        return no_store(JSONResponse({"data": [{k: c[k] for k in ("id", "title", "updated")} for c in found]}))

    @app.get("/chat/api/conversations/{conversation_id}", include_in_schema=False)
    async def conversation(request: Request, conversation_id: str):
        s = guard(request, unsafe=False)
        if not isinstance(s, dict):
            return s
        found = await run_in_threadpool(feedback.conversations, end_user(s))
        mine = next((c for c in found if c["id"] == conversation_id), None)
        if mine is None:  # someone else's is as absent as one that never was
            return error(404, "no such conversation", param="conversation_id", code="not_found")
        return no_store(JSONResponse(mine))

    @app.post("/chat/api/send", include_in_schema=False)
    async def send(request: Request):
        s = guard(request, unsafe=True)
        if not isinstance(s, dict):
            return s
        body = await read_json(request)
        if body is None:
            return error(400, "the body must be a JSON object (UTF-8 text)")
        unknown = next((k for k in body if k not in ("conversation", "messages")), None)
        if unknown is not None:
            return error(400, f"unknown field {unknown[:100]!r}; the fields are conversation, messages",
                         param=unknown[:100])
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
        s = guard(request, unsafe=True)
        if not isinstance(s, dict):
            return s
        body = await read_json(request)
        if body is None:
            return error(400, "the body must be a JSON object (UTF-8 text)")
        unknown = next((k for k in body if k not in CHAT_FEEDBACK_FIELDS), None)
        if unknown is not None:
            return error(400, f"unknown field {unknown[:100]!r}; the fields are {', '.join(CHAT_FEEDBACK_FIELDS)}",
                         param=unknown[:100])
        cid, user = body.get("completion_id"), end_user(s)

        def store() -> dict:
            if not feedback.served_to(cid, user):  # another session's reply is as absent as an unknown one
                raise FeedbackError(f"no completion {str(cid)[:100]!r}", status=404, param="completion_id")
            return feedback.feedback(cid, thumbs=body.get("thumbs"), rating=body.get("rating"), user=user,
                                     reason=body.get("reason"), edit=body.get("edit"), choice=body.get("choice"),
                                     choice_index=body.get("choice_index"))
        try:
            res = await run_in_threadpool(store)
        except FeedbackError as e:
            return error(e.status, str(e), param=e.param)
        return no_store(JSONResponse({"object": "feedback", "stored": True, **res}))
