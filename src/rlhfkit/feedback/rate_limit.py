"""Fixed-window rate limits kept in the store (table ``login_throttle``), so they hold across
restarts and server processes: the failed log-ins of ``auth.LoginThrottle`` and the web chat's
messages and new sessions (``serve/webchat.py``) count in the same table, under keys of their
own kind.

A bucket allows ``limit`` hits per window of ``window_s`` seconds that begins at its first hit
(so a burst at a window's end and one at the next window's start can fit ``2 * limit - 1`` hits
within one window's length; the long-run rate is the limit). A hit is counted, or refused
(:class:`Throttled`, with the seconds until the window ends), by one conditional UPDATE: the
check and the count are one statement, whose row lock makes concurrent hits -- threads of one
process or several server processes on PostgreSQL -- count one after the other. A refused hit is
not counted. Why not the ``limits`` library, whose fixed-window strategy this mirrors: its
storages are memory, Redis, Memcached and MongoDB, none of them our SQL store.

Bounded: keys are hashes (:func:`bucket`), and expired rows are deleted on every hit.
"""

from __future__ import annotations

import hashlib
import time

from sqlalchemy.engine import Connection

from .db import raw

__all__ = ["Throttled", "RateLimit", "bucket", "hit", "prune"]


class Throttled(Exception):
    """Too many hits in a bucket's window; ``retry_after`` seconds to wait."""

    def __init__(self, retry_after: float, what: str = "failed log-ins") -> None:
        super().__init__(f"too many {what}; retry after {retry_after:.0f} s")
        self.retry_after = retry_after


def bucket(kind: str, *parts: str) -> str:
    """The row key of a bucket: a hash, so a 5 MB user name costs one 64-character key."""
    h = hashlib.sha256(kind.encode())
    for part in parts:
        h.update(b"\0" + part.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


# Portable SQL (SQLite >= 3.24 and PostgreSQL both have INSERT ... ON CONFLICT); SET expressions
# read the row's values from before the update on both back ends.
_ENSURE = (
    "INSERT INTO login_throttle (key, hits, window_start, expires_at) VALUES (:k, 0, :now, :exp) "
    "ON CONFLICT (key) DO NOTHING"
)
_HIT = (
    "UPDATE login_throttle SET "
    "hits = CASE WHEN window_start <= :start THEN 1 ELSE hits + 1 END, "
    "expires_at = CASE WHEN window_start <= :start THEN :exp ELSE window_start + :w END, "
    "window_start = CASE WHEN window_start <= :start THEN :now ELSE window_start END "
    "WHERE key = :k AND (window_start <= :start OR hits < :limit)"
)
_WINDOW = "SELECT window_start FROM login_throttle WHERE key = :k"
_PRUNE = "DELETE FROM login_throttle WHERE expires_at < :now"


def prune(conn: Connection, now: float) -> None:
    """Delete the buckets whose window has ended."""
    raw(conn, _PRUNE, {"now": now})


def hit(conn: Connection, key: str, limit: int, window_s: float, now: float, what: str = "failed log-ins") -> None:
    """Count one hit in bucket ``key``, or raise :class:`Throttled` (counting nothing). Several
    hits that must all pass or none: call this for each inside one write job (its savepoint
    undoes the ones already counted when a later one raises)."""
    p = {"k": key, "now": now, "start": now - window_s, "w": window_s, "exp": now + window_s, "limit": limit}
    raw(conn, _ENSURE, p)
    if raw(conn, _HIT, p).rowcount != 1:
        start = raw(conn, _WINDOW, {"k": key}).fetchone()[0]
        raise Throttled(max(1.0, start + window_s - now), what)


class RateLimit:
    """At most ``limit`` hits per ``window_s`` seconds for each key (``kind`` keeps one limit's
    keys apart from another's); ``limit`` 0: no limit."""

    def __init__(self, kind: str, limit: int, window_s: float, what: str, clock=time.time) -> None:
        if limit < 0 or window_s <= 0:
            raise ValueError("a rate limit needs limit >= 0 and window_s > 0")
        self.kind, self.limit, self.window_s, self.what, self.clock = kind, int(limit), float(window_s), what, clock

    def hit(self, conn: Connection, *key: str) -> None:
        """Count one hit for ``key``, or raise :class:`Throttled`. A write job."""
        if self.limit:
            now = self.clock()
            prune(conn, now)
            hit(conn, bucket(self.kind, *key), self.limit, self.window_s, now, self.what)
