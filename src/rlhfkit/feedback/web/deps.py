"""Who is asking: the dependencies a route declares to get its signed-in user.

Every request's session is looked up in the ``sessions`` table (token hash, expiry, active user),
once per request. Browsers hold the token in an HttpOnly cookie and must echo the session's CSRF
token on unsafe requests (form field ``csrf_token`` or header ``X-CSRF-Token``); scripts send
``Authorization: Bearer <token>`` (no CSRF: browsers never attach it by themselves).

- ``api_user`` / ``api_admin``: the JSON API; 401 when not signed in, 403 without the admin role
  or the CSRF token;
- ``page_user`` / ``page_admin``: the pages; not signed in redirects to the log-in page
  (:class:`LoginRequired`), the admin role is checked before a form is read (a labeler's upload is
  never parsed).
The test ``tests/feedback/test_routes.py`` lists every route with these dependencies.
"""

from __future__ import annotations

import hmac
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, HTTPException, Request
from fastapi.responses import RedirectResponse

from ..auth import Principal, lookup_session
from .context import COOKIE, SAFE_METHODS, get_context

__all__ = [
    "api_user",
    "api_admin",
    "page_user",
    "page_admin",
    "ApiUser",
    "ApiAdmin",
    "PageUser",
    "PageAdmin",
    "LoginRequired",
    "redirect_to_login",
    "principal",
    "check_csrf",
    "tokens_match",
    "SESSION_DEPENDENCIES",
    "ADMIN_DEPENDENCIES",
]


class LoginRequired(Exception):
    """A page asked for without a session: answered by :func:`redirect_to_login`."""


def principal(request: Request) -> Principal | None:
    """The request's signed-in user (bearer header first, else the session cookie), or None;
    looked up once per request."""
    if "principal" in request.scope:
        return request.scope["principal"]
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        token, via = auth[7:].strip(), "bearer"
    else:
        token, via = request.cookies.get(COOKIE, ""), "cookie"
    p = None
    if token:  # one indexed read on a kept-open connection; no KDF on the request path
        p = lookup_session(get_context(request).store, token, via)
    request.scope["principal"] = p
    return p


def tokens_match(supplied: str | None, expected: str) -> bool:
    """Whether a token sent by the client is ``expected``, in constant time. Compared as bytes:
    ``hmac.compare_digest`` raises TypeError for str with characters past ASCII, which a header,
    a cookie or a form field may hold -- a wrong token, answered 403, not a 500."""
    return bool(supplied) and hmac.compare_digest(
        supplied.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


def check_csrf(p: Principal, supplied: str | None) -> None:
    if p.via == "cookie" and not tokens_match(supplied, p.csrf_token):
        raise HTTPException(403, "missing or wrong CSRF token (send X-CSRF-Token)")


async def api_user(request: Request) -> Principal:
    p = principal(request)
    if p is None:
        raise HTTPException(401, "not signed in", headers={"WWW-Authenticate": "Bearer"})
    if request.method not in SAFE_METHODS:
        check_csrf(p, request.headers.get("x-csrf-token"))
    return p


async def api_admin(p: Principal = Depends(api_user)) -> Principal:
    if not p.is_admin:
        raise HTTPException(403, "admin role required")
    return p


async def _page_principal(request: Request, admin: bool) -> Principal:
    p = principal(request)
    if p is None:
        raise LoginRequired()
    if admin and not p.is_admin:  # before the form is read: a labeler's upload is never parsed
        raise HTTPException(403, "admin role required")
    if request.method not in SAFE_METHODS:
        supplied = request.headers.get("x-csrf-token")
        if not supplied:  # no page form carries more than one file (the import)
            supplied = (await request.form(max_files=1)).get("csrf_token")
        check_csrf(p, supplied if isinstance(supplied, str) else None)
    return p


async def page_user(request: Request) -> Principal:
    return await _page_principal(request, admin=False)


async def page_admin(request: Request) -> Principal:
    return await _page_principal(request, admin=True)


async def redirect_to_login(request: Request, exc: LoginRequired) -> RedirectResponse:
    """The exception handler of :class:`LoginRequired`: to the log-in page, back here after."""
    return RedirectResponse(f"/login?next={quote(request.url.path, safe='')}", status_code=303)


ApiUser = Annotated[Principal, Depends(api_user)]
ApiAdmin = Annotated[Principal, Depends(api_admin)]
PageUser = Annotated[Principal, Depends(page_user)]
PageAdmin = Annotated[Principal, Depends(page_admin)]
SESSION_DEPENDENCIES = (api_user, api_admin, page_user, page_admin)  # each one needs a session
ADMIN_DEPENDENCIES = (api_admin, page_admin)  # each one needs the admin role too
