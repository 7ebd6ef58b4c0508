"""What the routes of the feedback app share, passed explicitly: ``create_app`` puts one
:class:`AppContext` on ``app.state.ctx`` and a route receives it by declaring ``ctx: Ctx``; the
request limits, cookie names and the id type of path parameters."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable

from fastapi import Depends, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from ..auth import LoginThrottle, Principal
from ..db import Store
from ..queue import DEFAULT_LEASE_S

__all__ = [
    "AppContext",
    "Ctx",
    "get_context",
    "Id",
    "json_response",
    "COOKIE",
    "LOGIN_CSRF_COOKIE",
    "SAFE_METHODS",
    "MAX_BODY_BYTES",
    "MAX_IMPORT_BYTES",
    "MAX_ID",
    "MAX_DURATION_MS",
    "FEEDBACK_DIR",
]

FEEDBACK_DIR = Path(__file__).resolve().parent.parent  # its templates/ and static/
COOKIE = "rlhf_session"
LOGIN_CSRF_COOKIE = "rlhf_login_csrf"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
MAX_BODY_BYTES = 1_000_000  # every JSON or form body (a verdict, a log-in, a batch of items)
MAX_IMPORT_BYTES = 50_000_000  # the JSONL file import (``feedback serve --max_import_mb``)
MAX_ID = 2**31 - 1  # ids are 32-bit integer columns on PostgreSQL
MAX_DURATION_MS = 2**31 - 1  # duration_ms is one too (~24.8 days)
Id = Annotated[int, PathParam(ge=1, le=MAX_ID)]


@dataclass(frozen=True)
class AppContext:
    """One app's store and settings (see ``create_app`` for each one's meaning)."""

    store: Store
    throttle: LoginThrottle
    templates: Jinja2Templates
    secure_cookies: bool = False
    session_ttl_s: float = 12 * 3600
    generator: Callable | None = None
    lease_s: float | None = DEFAULT_LEASE_S
    clock: Callable[[], float] = time.time
    redact_all: bool = False  # the server's ``--redact``; a request's own ``?redact=`` adds to it
    max_import_bytes: int = MAX_IMPORT_BYTES

    def render(self, request: Request, name: str, p: Principal | None, status: int = 200, **values) -> HTMLResponse:
        """The page ``templates/name`` for the signed-in ``p`` (None on the log-in page)."""
        return self.templates.TemplateResponse(request, name, {"user": p, **values}, status_code=status)


def get_context(request: Request) -> AppContext:
    return request.app.state.ctx


Ctx = Annotated[AppContext, Depends(get_context)]


def json_response(obj: Any) -> Response:
    """A JSON reply without FastAPI's recursive ``jsonable_encoder`` (hot paths return plain dicts)."""
    return Response(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode(), media_type="application/json")
