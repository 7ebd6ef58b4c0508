"""The secret end-user ids are hashed with under ``redact``, and the hashed form of an id.

Kept out of the database (``$RLHFKIT_END_USER_KEY`` or a key file beside a SQLite store), so that
its rows and exports alone do not turn a hash back into an id; ``key_id`` names a key so that a
store read with another one is told apart from a store where the person left nothing.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

END_USER_KEY_ENV = "RLHFKIT_END_USER_KEY"


def end_user_key(db_url: str, required: bool) -> bytes | None:
    """The secret that end-user ids are hashed with (HMAC-SHA256): ``$RLHFKIT_END_USER_KEY``,
    else the key file beside a SQLite store (``<db>.end_user_key``, 32 random bytes, created
    owner-only when ``required``). Kept out of the database, so that its rows and exports alone
    do not turn a hash back into an id by trying candidate ids (an unkeyed hash of an e-mail
    address would). None when no key exists and none is required."""

    from rlhfkit.feedback import db

    if os.environ.get(END_USER_KEY_ENV):
        return os.environ[END_USER_KEY_ENV].encode("utf-8")
    path = db.sqlite_file(db_url)
    if path is None:
        if required:
            raise EndUserKeyError(
                f"set ${END_USER_KEY_ENV}: hashed end-user ids need a secret kept outside the "
                f"database, and {_shown_url(db_url)!r} is not a file that a key file could sit beside"
            )
        return None
    key_file = path.with_name(path.name + ".end_user_key")
    if not key_file.is_file() and required:
        key_file.parent.mkdir(parents=True, exist_ok=True)
        create_key_file(key_file)
    return key_file.read_text(encoding="utf-8").strip().encode("utf-8") if key_file.is_file() else None


def _shown_url(url: str) -> str:
    """A database URL fit for a message: its password replaced by ***."""
    if "://" not in str(url):
        return str(url)
    try:
        from sqlalchemy.engine import make_url

        return make_url(str(url)).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy reads: show nothing of it
        return "(the database URL)"


def key_id(key: bytes) -> str:
    """A short public name of a key (an HMAC of a fixed text): stored ids carry it, so that a store
    read with another key (a key file lost with a copied database, another $RLHFKIT_END_USER_KEY)
    is told apart from one where the person simply left nothing."""
    import hmac

    return hmac.new(key, b"rlhfkit end-user key id", hashlib.sha256).hexdigest()[:8]


def hashed_user(user: str, key: bytes) -> str:
    """``hmac:KEYID:DIGEST``: the first 16 hex digits of HMAC-SHA256(key, user)."""
    import hmac

    return f"hmac:{key_id(key)}:" + hmac.new(key, user.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


class EndUserKeyError(ValueError):
    """The end-user ids in a store were hashed with a key that is not at hand."""


def create_key_file(key_file: Path) -> None:
    """Write a new random key to ``key_file`` whole or not at all: written and synced under a
    temporary name, then linked to its name, which fails when another process made it first (its
    key stands). Another process never reads the file half written."""
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{key_file.name}.", dir=key_file.parent)  # owner-only (0600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(secrets.token_hex(32))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, key_file)
        except FileExistsError:  # made by another process meanwhile
            pass
    finally:
        os.unlink(tmp)
