"""The feedback web app: HTML pages for people and a JSON API under ``/api`` for scripts (OpenAPI
at ``/openapi.json``, docs at ``/docs``). ``create_app(db_url)`` builds it; ``server.serve`` runs it.

``create_app`` only composes: one :class:`web.context.AppContext` (store, throttle, templates,
settings) on ``app.state.ctx``, the middlewares, the log-in redirect, the routers of ``web`` --
``api`` (log-in, labelling), ``admin_api`` (``/api/admin/*``), ``pages`` and ``admin_pages``
(``/admin*``) -- and the static files.

Auth (``web.deps``): every request's session is looked up in the ``sessions`` table. Browsers hold
the token in an HttpOnly cookie and must echo the session's CSRF token on unsafe requests (form
field ``csrf_token`` or header ``X-CSRF-Token``); scripts send ``Authorization: Bearer <token>``
from ``POST /api/auth/login``. Labelers only ever see their own tasks (someone else's task id
answers 404); ``/api/admin/*`` and ``/admin*`` need the admin role (403).

Hardening (each limit answers before any work it guards):
- request bodies: FastAPI's own ``max_body_size`` (Starlette's ``RequestBodyLimitMiddleware``):
  a declared Content-Length over the limit is answered 413 before the body is read, a chunked
  body is counted as it streams and cut at the limit -- before the route parses it and before
  the session is looked up. 1 MB for everything but the file import (``max_import_bytes``), whose
  body is read only after the admin check and whose gzip is decompressed in steps up to the same
  limit (``web.upload``);
- JSON bodies are parsed strictly (``http_hardening.strict_json``): NaN, Infinity, numbers past the float range,
  lone surrogates and NUL characters answer 422 naming the field, not a 500 later in the database or an
  export; form fields get the same text check;
- log-ins: :class:`auth.LoginThrottle` (in the store; reserve before verifying);
- the client address is the socket peer; ``X-Forwarded-For`` is read only from the addresses in
  ``trusted_proxies`` (uvicorn's ``ProxyHeadersMiddleware``, which takes the right-most address
  not itself a trusted proxy);
- every response carries Content-Security-Policy, X-Frame-Options, X-Content-Type-Options and
  Referrer-Policy (``http_hardening.SecurityHeaders``);
- no page shows text from its link: the admin pages' messages come from a cookie the server
  signs (``web.flash``);
- state changes only on unsafe methods: a task is claimed by ``POST /api/tasks/next``.

Writes go through the store's group-commit writer and are answered only after their commit.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Sequence

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from . import db
from .auth import LoginLimits, LoginThrottle
from .http_hardening import SecurityHeaders, StrictJSONRoute
from .queue import DEFAULT_LEASE_S
from .web import admin_api, admin_pages, api, pages
from .web.context import COOKIE, FEEDBACK_DIR, MAX_BODY_BYTES, MAX_IMPORT_BYTES, AppContext
from .web.deps import LoginRequired, redirect_to_login

__all__ = ["create_app", "COOKIE", "MAX_BODY_BYTES", "MAX_IMPORT_BYTES"]


class _FeedbackApp(FastAPI):
    """FastAPI with :class:`SecurityHeaders` outside everything else, so that the responses of
    its own outer layers (the body limit's 413, the server-error 500) carry the headers too."""

    def build_middleware_stack(self):
        return SecurityHeaders(super().build_middleware_stack())


def create_app(
    db_url: str = "feedback.db",
    *,
    store: db.Store | None = None,
    secure_cookies: bool = False,
    session_ttl_s: float = 12 * 3600,
    login_limits: LoginLimits | None = None,
    generator: Callable | None = None,
    lease_s: float | None = DEFAULT_LEASE_S,
    clock: Callable[[], float] = time.time,
    redact: bool = False,
    trusted_proxies: Sequence[str] = (),
    max_body_bytes: int = MAX_BODY_BYTES,
    max_import_bytes: int = MAX_IMPORT_BYTES,
) -> FastAPI:
    """The app on the database at ``db_url`` (SQLite path or SQLAlchemy URL; migrations are applied).

    ``generator``: optional live-generation hook, ``generator(prompts, n) -> list[list[dict]]``
    (for each prompt, n responses ``{"text", "model"}``), used by ``POST
    /api/admin/projects/{id}/generate`` (see ``rlhfkit.feedback.generation``).

    ``lease_s``: an open task older than this may be reassigned to another labeler (None: never);
    ``clock``: the time source of the task queue (tests pass a controllable one);
    ``redact``: replace personal data (``rlhfkit.privacy``) in every import before labelers see
    it and in every API export (without it, a request's ``?redact=true`` asks for it);
    ``trusted_proxies``: addresses (or networks) of reverse proxies whose ``X-Forwarded-For`` names
    the client (else the socket peer is the client); ``max_body_bytes``: the largest request body
    (413 above), ``max_import_bytes`` that of the file import."""
    store = store or db.Store(db_url)
    ctx = AppContext(
        store=store,
        throttle=LoginThrottle(login_limits),
        templates=Jinja2Templates(directory=str(FEEDBACK_DIR / "templates")),
        secure_cookies=secure_cookies,
        session_ttl_s=session_ttl_s,
        generator=generator,
        lease_s=lease_s,
        clock=clock,
        redact_all=redact,
        max_import_bytes=max_import_bytes,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        store.close()

    app = _FeedbackApp(
        title="rlhfkit feedback",
        version="1",
        lifespan=lifespan,
        max_body_size=max_body_bytes,
        description="Human feedback collection: tasks, labels, projects, users, exports.",
    )
    app.router.route_class = StrictJSONRoute  # before any route is added
    if trusted_proxies:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(trusted_proxies))
    app.state.ctx = ctx  # what the routes read (web.context.Ctx)
    app.state.store = store  # for callers that hold the app: tests, serve/live.py
    app.state.throttle = ctx.throttle
    app.add_exception_handler(LoginRequired, redirect_to_login)
    app.mount("/static", StaticFiles(directory=str(FEEDBACK_DIR / "static")), name="static")
    app.include_router(api.router)
    app.include_router(admin_api.router)
    app.include_router(admin_api.upload_router, max_body_size=max_import_bytes)
    app.include_router(pages.router)
    app.include_router(admin_pages.router)
    app.include_router(admin_pages.upload_router, max_body_size=max_import_bytes)
    app.add_api_route("/healthz", _healthz, include_in_schema=False)
    return app


async def _healthz():
    return {"ok": True}
