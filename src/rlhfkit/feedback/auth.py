"""Accounts, passwords, sessions, CSRF tokens and log-in throttling.

- Passwords: argon2id through ``argon2-cffi`` (the reference implementation's maintained binding;
  parameters m=19 MiB, t=2, p=1: the OWASP Password Storage Cheat Sheet's first argon2id
  configuration). Hashes are PHC strings carrying their parameters, so they can be raised later:
  a log-in whose stored hash is older (``needs_rehash``: scrypt from before, or weaker argon2
  parameters) stores a fresh hash of the password it just verified. Verifications run at most
  ``VERIFY_SLOTS`` at a time (each needs 19 MiB: many parallel log-ins must not add up to GBs).
- Sessions: a random 256-bit token (``secrets.token_urlsafe(32)``) given to the client, stored as
  its SHA-256 (a fast hash is right for high-entropy tokens: no KDF on the request path), with a
  server-side expiry; checked on every request against an active user. Server-side sessions
  rather than signed cookies (e.g. itsdangerous): a signed cookie stays valid until it expires,
  while a row can be deleted, which is how log-out, a password reset and deactivation end
  sessions at once. Browser sessions travel in an HttpOnly, SameSite=Lax cookie; API sessions as
  ``Authorization: Bearer <token>``.
- CSRF: each session has its own random CSRF token; cookie-authenticated unsafe requests must
  echo it (form field ``csrf_token`` or header ``X-CSRF-Token``). The log-in form, which has no
  session yet, uses a double-submit cookie.
- Log-in throttling: :class:`LoginThrottle`, fixed-window counters in the store
  (``rate_limit.py``, which the web chat's limits use too).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from . import db
from .db import raw
from .queue import release_open_tasks
from .rate_limit import Throttled, hit, prune
from .rate_limit import bucket as _bucket

__all__ = [
    "ROLES",
    "clean_username",
    "hash_password",
    "verify_password",
    "needs_rehash",
    "new_token",
    "token_hash",
    "Principal",
    "create_user",
    "authenticate",
    "create_session",
    "lookup_session",
    "delete_session",
    "end_sessions",
    "update_user",
    "LoginLimits",
    "LoginThrottle",
    "Throttled",
    "VERIFY_SLOTS",
]

ROLES = ("admin", "labeler")
MIN_PASSWORD = 8
# OWASP Password Storage Cheat Sheet, argon2id: "m=19456 (19 MiB), t=2, p=1"
HASHER = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
VERIFY_SLOTS = 4
_verify_slots = threading.BoundedSemaphore(VERIFY_SLOTS)


def hash_password(password: str, hasher: PasswordHasher = HASHER) -> str:
    if not isinstance(password, str) or not password:
        raise ValueError("password must be a non-empty string")
    return hasher.hash(password)


def _verify_scrypt(password: str, stored: str) -> bool:
    """The hashes written before argon2: ``scrypt$N$r$p$salt$key`` (hashlib.scrypt, base64)."""
    try:
        algo, n, r, p, salt, key = stored.split("$")
        if algo != "scrypt":
            return False
        want = base64.b64decode(key)
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(want),
            maxmem=64 * 1024 * 1024,
        )
    except (ValueError, TypeError, UnicodeEncodeError):
        return False
    return hmac.compare_digest(got, want)


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (argon2id, or a legacy scrypt hash)."""
    with _verify_slots:
        if stored.startswith("scrypt$"):
            return _verify_scrypt(password, stored)
        try:
            return HASHER.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError, UnicodeEncodeError):
            return False


def needs_rehash(stored: str) -> bool:
    """A stored hash weaker than today's: not argon2id, or argon2id with other parameters."""
    if not stored.startswith("$argon2id$"):
        return True
    try:
        return HASHER.check_needs_rehash(stored)
    except InvalidHashError:
        return True


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


def _check_password(password: str) -> None:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise ValueError(f"password must have at least {MIN_PASSWORD} characters")


def clean_username(username: str) -> str:
    """A new user's name as stored: without surrounding spaces, 1-64 characters of printable
    text. Line breaks, tabs, terminal escapes, NUL, zero-width and bidirectional controls are
    refused (``ValueError``): a name is printed by ``feedback users`` and shown to admins, where
    such characters would forge lines and columns or recolour the operator's terminal."""
    name = (username or "").strip() if isinstance(username, str) else ""
    if not name or len(name) > 64:
        raise ValueError("username must be 1-64 characters")
    if not name.isprintable():  # str.isprintable: no control, format, separator or unassigned characters
        bad = next(ch for ch in name if not ch.isprintable())
        raise ValueError(f"username may not contain {bad!r} (only printable characters and spaces)")
    return name


def create_user(conn: Connection, username: str, password: str, role: str = "labeler") -> int:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    username = clean_username(username)
    _check_password(password)
    res = conn.execute(
        insert(db.users).values(
            username=username, password_hash=hash_password(password), role=role, active=True, created_at=time.time()
        )
    )
    return int(res.inserted_primary_key[0])


def update_user(
    conn: Connection,
    user_id: int,
    *,
    active: bool | None = None,
    role: str | None = None,
    password_hash: str | None = None,
    keep_session: str | None = None,
) -> dict:
    """Change a user's active flag, role or password hash (``hash_password`` first, outside the
    write transaction: it is slow on purpose). Deactivating the user or setting a password ends
    their sessions at once (but ``keep_session``, a token hash: the caller's own, when people
    change their own password) and deactivation hands their open tasks back
    (``queue.release_open_tasks``). The last active admin can be neither deactivated nor demoted
    (``ValueError``): nobody could manage the app any more. Returns the user row as it is now;
    ``LookupError`` for an unknown id."""
    U = db.users
    row = conn.execute(select(U).where(U.c.id == user_id)).mappings().first()
    if row is None:
        raise LookupError(f"no user {user_id}")
    if role is not None and role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    values: dict = {}
    if active is not None and bool(active) != bool(row["active"]):
        values["active"] = bool(active)
    if role is not None and role != row["role"]:
        values["role"] = role
    if password_hash is not None:
        values["password_hash"] = password_hash
    loses_admin = (
        row["role"] == "admin"
        and row["active"]
        and (values.get("active") is False or values.get("role", "admin") != "admin")
    )
    if loses_admin:
        # the active admins' rows locked, in id order, before they are counted: two admins demoting
        # each other at once in two PostgreSQL server processes would otherwise each see the other
        # still an admin and both commit (write skew under READ COMMITTED). The second waits for
        # the first and then re-reads the rows it locked: the other is no longer an admin.
        # (SQLite renders no FOR UPDATE; its writers hold the one write lock from BEGIN IMMEDIATE.)
        admins = (
            conn.execute(
                select(U.c.id)
                .where(U.c.role == "admin", U.c.active == True)  # noqa: E712
                .order_by(U.c.id)
                .with_for_update()
            )
            .scalars()
            .all()
        )
        if not [a for a in admins if a != user_id]:
            raise ValueError(f"{row['username']!r} is the last active admin: make another admin first")
    if values:
        conn.execute(update(U).where(U.c.id == user_id).values(**values))
    if values.get("active") is False or password_hash is not None:
        end_sessions(conn, user_id, keep=keep_session)
    if values.get("active") is False:
        release_open_tasks(conn, user_id)
    return dict(
        conn.execute(select(U.c.id, U.c.username, U.c.role, U.c.active).where(U.c.id == user_id)).mappings().one()
    )


def authenticate(conn: Connection, username: str, password: str) -> dict | None:
    """The user row for valid credentials, else None (same work for unknown names)."""
    row = conn.execute(select(db.users).where(db.users.c.username == username)).mappings().first()
    if row is None or not row["active"]:
        verify_password(password, _dummy_hash())
        return None
    return dict(row) if verify_password(password, row["password_hash"]) else None


def create_session(
    conn: Connection, user_id: int, kind: str = "browser", ttl_s: float = 12 * 3600
) -> tuple[str, str, float]:
    """(token, csrf token, expiry) for a new session of ``user_id``."""
    token, csrf = new_token(), new_token()
    t = time.time()
    conn.execute(
        insert(db.sessions).values(
            token_hash=token_hash(token),
            user_id=user_id,
            csrf_token=csrf,
            kind=kind,
            created_at=t,
            expires_at=t + ttl_s,
        )
    )
    # opportunistic clean-up of this user's expired sessions
    conn.execute(delete(db.sessions).where(db.sessions.c.user_id == user_id, db.sessions.c.expires_at < t))
    return token, csrf, t + ttl_s


_LOOKUP = (
    "SELECT u.id, u.username, u.role, s.csrf_token, s.expires_at FROM sessions s "
    "JOIN users u ON u.id = s.user_id WHERE s.token_hash = :h AND u.active = :t"
)


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


def end_sessions(conn: Connection, user_id: int, keep: str | None = None) -> int:
    """Delete every session of ``user_id`` (but the one whose token hash is ``keep``)."""
    S = db.sessions
    q = delete(S).where(S.c.user_id == user_id)
    if keep is not None:
        q = q.where(S.c.token_hash != keep)
    return conn.execute(q).rowcount


@dataclass(frozen=True)
class LoginLimits:
    """How many failed log-ins each bucket allows in its window (fixed windows, in seconds, each
    opened by its first failure: the limit holds per window, so around a window's end a guesser
    can fit ``2 * limit - 1`` checks within one window's length; the long-run rate is the limit).

    - ``per_user_address``: one user name from one address. Always applies. A person who
      mistypes their password waits at most ``user_address_window_s``.
    - ``per_address``: every user name from one address (guessing many accounts).
    - ``per_user``: one user name from every address (a distributed guess at one account): the
      slower, hour-long limit.
    ``per_address`` and ``per_user`` are not applied to an address the user has logged in from
    before (within ``known_address_s``): whoever knows a user's name can exhaust those two
    buckets from elsewhere, but never lock the user out of their own address (the idea of the
    OWASP "device cookies" scheme, keyed on the address so that API clients get it too)."""

    per_user_address: int = 5
    user_address_window_s: float = 300.0
    per_address: int = 20
    address_window_s: float = 300.0
    per_user: int = 30
    user_window_s: float = 3600.0
    known_address_s: float = 30 * 86400.0


# the failed log-ins' own rows of the rate limits' table (rate_limit.py counts the hits)
_THROTTLE_REFUND = "UPDATE login_throttle SET hits = hits - 1 WHERE key = :k AND hits > 0"
_THROTTLE_DROP = "DELETE FROM login_throttle WHERE key = :k"
_THROTTLE_KNOWN = "SELECT 1 FROM login_throttle WHERE key = :k AND expires_at >= :now"
_THROTTLE_REMEMBER = (
    "INSERT INTO login_throttle (key, hits, window_start, expires_at) VALUES (:k, 0, :now, :exp) "
    "ON CONFLICT (key) DO UPDATE SET expires_at = :exp"
)


class LoginThrottle:
    """Failed-log-in limits kept in the store (table ``login_throttle``), so they hold across
    restarts and server processes.

    A slot is reserved *before* the password is checked (:meth:`reserve`, one write job: the
    check and the count are one conditional UPDATE per bucket, ``rate_limit.hit``), so N parallel guesses can never
    all pass the check before any is counted: at most ``per_user_address`` passwords are ever
    verified per window, however many requests arrive at once. A success hands the slot back
    (:meth:`succeeded`). Why not the ``limits`` library, whose fixed-window strategy this mirrors:
    its storages are memory, Redis, Memcached and MongoDB, none of them our SQL store, and its
    ``hit`` counts one key per call, while an attempt here must reserve up to three buckets
    together or none (a refused attempt may not use up another bucket).

    Bounded: keys are hashes (``_bucket``), expired rows are deleted on every reservation, and
    an address can add at most ``per_address`` new user-name rows per window."""

    def __init__(self, limits: LoginLimits | None = None, clock=time.time) -> None:
        self.limits = limits or LoginLimits()
        self.clock = clock

    def _buckets(self, username: str, address: str, known: bool) -> list[tuple[str, int, float]]:
        L = self.limits
        out = [(_bucket("user-address", username, address), L.per_user_address, L.user_address_window_s)]
        if not known:
            out += [
                (_bucket("address", address), L.per_address, L.address_window_s),
                (_bucket("user", username), L.per_user, L.user_window_s),
            ]
        return out

    def _known(self, conn: Connection, username: str, address: str, now: float) -> bool:
        return raw(conn, _THROTTLE_KNOWN, {"k": _bucket("known", username, address), "now": now}).fetchone() is not None

    def reserve(self, conn: Connection, username: str, address: str) -> bool:
        """Count one attempt in every bucket that applies, or raise :class:`Throttled` (counting
        nothing: the write job's savepoint undoes the buckets already counted). Returns whether
        the address is known for this user (pass it to :meth:`succeeded`). A write job."""
        now = self.clock()
        prune(conn, now)
        known = self._known(conn, username, address, now)
        for key, limit, window in self._buckets(username, address, known):
            hit(conn, key, limit, window, now)
        return known

    def succeeded(self, conn: Connection, username: str, address: str, known: bool) -> None:
        """The reserved attempt was right: clear the user-and-address bucket, hand the slot back
        to the other two, and remember the address as this user's. A write job."""
        now = self.clock()
        buckets = self._buckets(username, address, known)
        raw(conn, _THROTTLE_DROP, {"k": buckets[0][0]})
        for key, _, _ in buckets[1:]:
            raw(conn, _THROTTLE_REFUND, {"k": key})
        raw(
            conn,
            _THROTTLE_REMEMBER,
            {"k": _bucket("known", username, address), "now": now, "exp": now + self.limits.known_address_s},
        )
