"""Messages for the admin pages ("user lena saved", an import's error), set by the server only.

An admin form answers with a redirect (303) that carries its outcome in a short-lived cookie;
the page it leads to shows the message once and clears the cookie. A link cannot set a message:
the pages read no message from their query string (a crafted ``/admin?error=...`` link would put
an attacker's text on an admin's page), and the cookie's value is signed with the session's CSRF
token (HMAC-SHA256), so a cookie planted by a neighbouring site (a sibling subdomain may set
cookies for ours) is ignored. HttpOnly, SameSite=strict, path ``/admin``, 60 s."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from fastapi import Request
from fastapi.responses import RedirectResponse, Response

from ..auth import Principal
from .deps import tokens_match

__all__ = ["FLASH_COOKIE", "MAX_CHARS", "redirect_with_flash", "pop_flash", "clear_flash", "sign"]

FLASH_COOKIE = "rlhf_flash"
_PATH = "/admin"  # every admin page, nothing else
_MAX_AGE_S = 60
MAX_CHARS = 1000  # a cookie holds ~4 KB; an import error naming its file fits


def sign(key: str, values: dict[str, str]) -> str:
    """The cookie's value: the messages as base64url JSON, a dot, their HMAC-SHA256 under ``key``
    (the session's CSRF token)."""
    payload = base64.urlsafe_b64encode(json.dumps(values, ensure_ascii=False).encode()).decode().rstrip("=")
    return payload + "." + _mac(key, payload)


def _mac(key: str, payload: str) -> str:
    return hmac.new(key.encode(), payload.encode(), hashlib.sha256).hexdigest()


def redirect_with_flash(url: str, p: Principal, *, secure: bool, msg: Any = None,
                        error: Any = None) -> RedirectResponse:
    """A 303 to ``url`` whose page will show ``msg`` (or ``error``) to ``p``."""
    values = {k: str(v)[:MAX_CHARS] for k, v in (("msg", msg), ("error", error)) if v is not None}
    resp = RedirectResponse(url, status_code=303)
    resp.set_cookie(FLASH_COOKIE, sign(p.csrf_token, values), max_age=_MAX_AGE_S, path=_PATH, httponly=True,
                    samesite="strict", secure=secure)
    return resp


def pop_flash(request: Request, p: Principal) -> tuple[dict[str, str], bool]:
    """``({"msg": ..., "error": ...}, present)``: the messages of the request's flash cookie when
    ``p``'s session signed it (else none), and whether the page must clear the cookie."""
    raw = request.cookies.get(FLASH_COOKIE)
    if raw is None:
        return {}, False
    payload, _, mac = raw.partition(".")
    if not tokens_match(mac, _mac(p.csrf_token, payload)):
        return {}, True
    try:
        values = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except ValueError:
        return {}, True
    if not isinstance(values, dict):
        return {}, True
    return {k: str(values[k]) for k in ("msg", "error") if isinstance(values.get(k), str)}, True


def clear_flash(resp: Response, *, secure: bool) -> Response:
    resp.delete_cookie(FLASH_COOKIE, path=_PATH, secure=secure, httponly=True, samesite="strict")
    return resp
