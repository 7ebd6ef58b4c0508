"""HTTP hardening shared by the web apps (the feedback app now; ``rlhfkit serve`` can take the same):
strict JSON request bodies (and form fields held to the same text rules) and security headers.

Request body limits need nothing here: FastAPI's own ``max_body_size`` (app-wide, and per route
for a larger upload) refuses a declared Content-Length over the limit before reading the body and
cuts a chunked body at the limit as it streams (Starlette's ``RequestBodyLimitMiddleware``).
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable

from fastapi import HTTPException, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

__all__ = ["strict_json", "StrictJSONRoute", "SecurityHeaders", "escape_surrogates", "bad_text", "PAGE_CSP", "DOCS_CSP"]


# ----------------------------------------------------------------------------- strict JSON
class _NonFinite:
    """What NaN, Infinity and numbers past the float range parse to: no JSON value."""

    __slots__ = ()


_NONFINITE = _NonFinite()


def _finite(text: str):
    v = float(text)
    return v if math.isfinite(v) else _NONFINITE


def escape_surrogates(key: Any) -> Any:
    """A location part safe to send back (a key holding a lone surrogate, escaped)."""
    return key.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(key, str) else key


def bad_text(s: str) -> str | None:
    """Why ``s`` is no text every store can keep, or None: a lone surrogate (no UTF-8 for it) or
    a NUL character (PostgreSQL text columns refuse it: the insert would fail as a 500)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid Unicode text (a lone surrogate such as \\ud800)"
    if "\x00" in s:
        return "a NUL character (\\u0000) is not text any store keeps"
    return None


def _first_bad_value(obj: Any) -> tuple[list, str] | None:
    """(location, reason) of the first non-finite number or non-text string in ``obj``; iterative
    (the parser already accepted the nesting; a recursive walk on top could overflow the stack)."""
    stack: list[tuple[Any, list]] = [(obj, [])]
    while stack:
        v, loc = stack.pop()
        if v is _NONFINITE:
            return loc, "NaN, Infinity and numbers beyond the float range are not JSON numbers"
        if isinstance(v, str):
            reason = bad_text(v)
            if reason:
                return loc, reason
        elif isinstance(v, dict):
            for k, x in reversed(list(v.items())):
                stack.append((x, loc + [escape_surrogates(k)]))
                stack.append((k, loc + [escape_surrogates(k)]))
        elif isinstance(v, list):
            stack.extend((x, loc + [i]) for i, x in reversed(list(enumerate(v))))
    return None


def strict_json(data: bytes) -> Any:
    """Parse a request body as JSON that every later step can store and send again: NaN,
    Infinity, numbers past the float range, lone surrogates (which ``json.loads`` accepts) and NUL
    characters (which PostgreSQL cannot store) are a 422 naming the field (``loc``, as FastAPI's
    own validation errors). Malformed JSON raises ``json.JSONDecodeError`` (FastAPI answers it 422
    with the position); undecodable bytes, integers of more than 4300 digits or nesting past the
    stack are a 422 too."""
    flagged: list[str] = []

    def constant(name: str):
        flagged.append(name)
        return _NONFINITE

    def number(text: str):
        v = _finite(text)
        if v is _NONFINITE:
            flagged.append(text)
        return v

    try:
        obj = json.loads(data, parse_constant=constant, parse_float=number)
    except json.JSONDecodeError:
        raise
    except (ValueError, RecursionError) as e:  # bad UTF-8, an int past 4300 digits, deep nesting
        raise HTTPException(
            422, [{"type": "json_invalid", "loc": ["body"], "msg": f"not valid JSON: {e}"[:300], "input": None}]
        ) from None
    if not flagged and b"\\u0000" not in data:  # a NUL can only come as that escape
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
            return obj
        except UnicodeEncodeError:
            pass
    found = _first_bad_value(obj)
    if found is None:  # "\\u0000" was an escaped backslash followed by "u0000"
        return obj
    loc, reason = found
    raise HTTPException(422, [{"type": "value_error", "loc": ["body", *loc], "msg": reason, "input": None}])


class _StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = strict_json(await self.body())
        return self._json

    async def _get_form(self, **limits):  # what Request.form() awaits: every form is checked here
        form = await super()._get_form(**limits)
        for key, value in form.multi_items():
            reason = bad_text(key) or (bad_text(value) if isinstance(value, str) else None)
            if reason:
                raise HTTPException(
                    422,
                    [{"type": "value_error", "loc": ["body", escape_surrogates(key)], "msg": reason, "input": None}],
                )
        return form


class StrictJSONRoute(APIRoute):
    """Routes whose JSON bodies are parsed by :func:`strict_json` (FastAPI's documented way to
    change how a request is read: a custom ``Request`` in a custom ``APIRoute``)."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(_StrictJSONRequest(request.scope, request.receive))

        return strict_handler


# ----------------------------------------------------------------------------- headers
# The pages load only their own script and stylesheet; ``style-src-attr 'unsafe-inline'`` allows
# the progress bars' ``style="width: N%"`` attributes (a style attribute cannot run script).
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
# FastAPI's /docs and /redoc pages load Swagger UI / ReDoc from its CDN with an inline script
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly; "
    "worker-src blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc")


class SecurityHeaders:
    """Pure ASGI middleware that adds security headers to every response (and ``Cache-Control:
    no-store`` to every one but static files) (a pure one, not
    ``@app.middleware("http")``: that wraps each request in extra tasks, on the labelling hot path)."""

    def __init__(
        self,
        app,
        csp: str = PAGE_CSP,
        docs_csp: str = DOCS_CSP,
        docs_paths=DOCS_PATHS,
        cacheable_prefix: str = "/static/",
    ) -> None:
        self.app = app
        self.cacheable_prefix = cacheable_prefix
        common = [
            (b"x-frame-options", b"DENY"),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"same-origin"),
        ]
        self.headers = [(b"content-security-policy", csp.encode())] + common
        self.docs_headers = [(b"content-security-policy", docs_csp.encode())] + common
        self.docs_paths = set(docs_paths)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        extra = self.docs_headers if path in self.docs_paths else self.headers
        if not path.startswith(self.cacheable_prefix):
            # pages and API answers hold one person's tasks, items and tokens: a shared or
            # back-button cache must not keep them after log-out (static files stay cacheable)
            extra = extra + [(b"cache-control", b"no-store")]

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message = dict(
                    message, headers=list(message.get("headers", [])) + [(k, v) for k, v in extra if k not in names]
                )
            await send(message)

        await self.app(scope, receive, send_with_headers)
