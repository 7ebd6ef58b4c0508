"""Accounts, passwords, sessions, CSRF tokens and login rate limiting.

- Passwords: ``hashlib.scrypt`` (N=2**14, r=8, p=1, 16-byte per-user salt, 32-byte key; the
  parameters are stored with the hash so they can be raised later). Verified in constant time.
- Sessions: a random 256-bit token (``secrets.token_urlsafe(32)``) given to the client, stored as
  its SHA-256 (a fast hash is right for high-entropy tokens: no KDF on the request path), with a
  server-side expiry; checked on every request. Browser sessions travel in an HttpOnly,
  SameSite=Lax cookie; API sessions as ``Authorization: Bearer <token>``.
- CSRF: each session has its own random CSRF token; cookie-authenticated unsafe requests must
  echo it (form field ``csrf_token`` or header ``X-CSRF-Token``). The log-in form, which has no
  session yet, uses a double-submit cookie.
- Login rate limiting: failed attempts per user name and per client address in a sliding window
  (in memory, per process).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection

from . import db

__all__ = [
    "ROLES", "hash_password", "verify_password", "new_token", "token_hash", "Principal",
    "create_user", "authenticate", "create_session", "lookup_session", "delete_session",
    "LoginLimiter",
]

ROLES = ("admin", "labeler")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    if not isinstance(password, str) or not password:
        raise ValueError("password must be a non-empty string")
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32, maxmem=64 * 1024 * 1024)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        algo, n, r, p, salt, key = stored.split("$")
        if algo != "scrypt":
            return False
        want = base64.b64decode(key)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r),
                             p=int(p), dklen=len(want), maxmem=64 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


# a hash to burn the same time on unknown user names (no user-enumeration by timing)
_DUMMY_HASH = None


def _dummy_hash() -> str:
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = hash_password("not a password")
    return _DUMMY_HASH


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """The signed-in user of a request and how they proved it (``via``: cookie | bearer)."""

    user_id: int
    username: str
    role: str
    csrf_token: str
    token_hash: str
    via: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def create_user(conn: Connection, username: str, password: str, role: str = "labeler") -> int:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    username = (username or "").strip()
    if not username or len(username) > 64:
        raise ValueError("username must be 1-64 characters")
    if len(password or "") < 8:
        raise ValueError("password must have at least 8 characters")
    res = conn.execute(insert(db.users).values(username=username, password_hash=hash_password(password),
                                               role=role, active=True, created_at=time.time()))
    return int(res.inserted_primary_key[0])


def authenticate(conn: Connection, username: str, password: str) -> dict | None:
    """The user row for valid credentials, else None (same work for unknown names)."""
    row = conn.execute(select(db.users).where(db.users.c.username == username)).mappings().first()
    if row is None or not row["active"]:
        verify_password(password, _dummy_hash())
        return None
    return dict(row) if verify_password(password, row["password_hash"]) else None


def create_session(conn: Connection, user_id: int, kind: str = "browser",
                   ttl_s: float = 12 * 3600) -> tuple[str, str, float]:
    """(token, csrf token, expiry) for a new session of ``user_id``."""
    token, csrf = new_token(), new_token()
    t = time.time()
    conn.execute(insert(db.sessions).values(token_hash=token_hash(token), user_id=user_id,
                                            csrf_token=csrf, kind=kind, created_at=t,
                                            expires_at=t + ttl_s))
    # opportunistic clean-up of this user's expired sessions
    conn.execute(delete(db.sessions).where(db.sessions.c.user_id == user_id,
                                           db.sessions.c.expires_at < t))
    return token, csrf, t + ttl_s


_LOOKUP = ("SELECT u.id, u.username, u.role, s.csrf_token, s.expires_at FROM sessions s "
           "JOIN users u ON u.id = s.user_id WHERE s.token_hash = :h AND u.active = :t")


def lookup_session(conn, token: str, via: str) -> Principal | None:
    """The principal of a live session token, or None (unknown, expired, or user disabled).
    ``conn``: a SQLAlchemy connection or a :class:`db.Store` (then its per-thread raw reader)."""
    if not token or len(token) > 200:
        return None
    h = token_hash(token)
    params = {"h": h, "t": True}
    if isinstance(conn, db.Store):
        row = conn.lookup(_LOOKUP, params)
    else:
        row = db.raw(conn, _LOOKUP, params).fetchone()  # hot path: see db.raw
    if row is None or row[4] <= time.time():
        return None
    return Principal(row[0], row[1], row[2], row[3], h, via)


def delete_session(conn: Connection, token_hash_: str) -> None:
    conn.execute(delete(db.sessions).where(db.sessions.c.token_hash == token_hash_))


class LoginLimiter:
    """At most ``per_user`` failed log-ins per user name and ``per_ip`` per client address in
    any ``window_s`` seconds; a success clears the user name's failures."""

    def __init__(self, per_user: int = 5, per_ip: int = 20, window_s: float = 300.0) -> None:
        self.per_user, self.per_ip, self.window_s = per_user, per_ip, window_s
        self._fail: dict[str, deque] = defaultdict(deque)
        self._lock = threading.Lock()

    def _count(self, key: str, t: float) -> int:
        q = self._fail.get(key)
        if not q:
            return 0
        while q and q[0] <= t - self.window_s:
            q.popleft()
        return len(q)

    def retry_after(self, username: str, ip: str) -> float:
        """0 if an attempt is allowed now, else the seconds to wait."""
        t = time.monotonic()
        with self._lock:
            waits = []
            for key, limit in ((f"u:{username}", self.per_user), (f"i:{ip}", self.per_ip)):
                if self._count(key, t) >= limit:
                    waits.append(self._fail[key][0] + self.window_s - t)
            return max(waits) if waits else 0.0

    def failed(self, username: str, ip: str) -> None:
        t = time.monotonic()
        with self._lock:
            self._fail[f"u:{username}"].append(t)
            self._fail[f"i:{ip}"].append(t)

    def succeeded(self, username: str) -> None:
        with self._lock:
            self._fail.pop(f"u:{username}", None)
