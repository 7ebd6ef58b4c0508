"""Messages for the admin pages ("user lena saved", an import's error), set by the server only.

An admin form answers with a redirect (303) that carries its outcome in a short-lived cookie;
the page it leads to shows the message once and clears the cookie. A link cannot set a message:
the pages read no message from their query string (a crafted ``/admin?error=...`` link would put
an attacker's text on an admin's page), and the cookie's value is signed with the session's CSRF
token as the key, so a cookie planted by a neighbouring site (a sibling subdomain may set
cookies for ours) is ignored. HttpOnly, SameSite=strict, path ``/admin``, 60 s.

Signing is itsdangerous' (Pallets, the signer under Flask's sessions): a keyed HMAC over a
compact payload with a salt per use and a time stamp checked on reading, rather than our own
HMAC and encoding."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from itsdangerous import BadData, URLSafeTimedSerializer

from ..auth import Principal

__all__ = ["FLASH_COOKIE", "MAX_CHARS", "redirect_with_flash", "pop_flash", "clear_flash", "sign"]

FLASH_COOKIE = "rlhf_flash"
_PATH = "/admin"  # every admin page, nothing else
_MAX_AGE_S = 60
MAX_CHARS = 1000  # a cookie holds ~4 KB; an import error naming its file fits


def _serializer(key: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(key, salt="rlhfkit-admin-flash")


def sign(key: str, values: dict[str, str]) -> str:
    """The cookie's value: the messages, signed under ``key`` (the session's CSRF token)."""
    return _serializer(key).dumps(values)


def redirect_with_flash(
    url: str, p: Principal, *, secure: bool, msg: Any = None, error: Any = None
) -> RedirectResponse:
    """A 303 to ``url`` whose page will show ``msg`` (or ``error``) to ``p``."""
    values = {k: str(v)[:MAX_CHARS] for k, v in (("msg", msg), ("error", error)) if v is not None}
    resp = RedirectResponse(url, status_code=303)
    resp.set_cookie(
        FLASH_COOKIE,
        sign(p.csrf_token, values),
        max_age=_MAX_AGE_S,
        path=_PATH,
        httponly=True,
        samesite="strict",
        secure=secure,
    )
    return resp


def pop_flash(request: Request, p: Principal) -> tuple[dict[str, str], bool]:
    """``({"msg": ..., "error": ...}, present)``: the messages of the request's flash cookie when
    ``p``'s session signed it (else none), and whether the page must clear the cookie."""
    raw = request.cookies.get(FLASH_COOKIE)
    if raw is None:
        return {}, False
    try:  # another session's key, a forged or stale cookie, characters past ASCII: no message
        values = _serializer(p.csrf_token).loads(raw, max_age=_MAX_AGE_S)
    except (BadData, UnicodeError):
        return {}, True
    if not isinstance(values, dict):
        return {}, True
    return {k: str(values[k]) for k in ("msg", "error") if isinstance(values.get(k), str)}, True


def clear_flash(resp: Response, *, secure: bool) -> Response:
    resp.delete_cookie(FLASH_COOKIE, path=_PATH, secure=secure, httponly=True, samesite="strict")
    return resp
