"""Configs and entry points of the user-management commands ``rlhfkit feedback create-user |
set-user | members | users``.

Passwords never travel on the command line (shell history, ``ps``): ``create-user`` and
``set-user --new_password true`` read ``$RLHFKIT_PASSWORD``, else prompt for it twice (getpass)."""

from __future__ import annotations

import getpass
import os
import sys
from dataclasses import dataclass, field

from sqlalchemy import delete, insert, select

from rlhfkit.training.config import ConfigError

from . import db
from .auth import MIN_PASSWORD, ROLES, clean_username, create_user, hash_password, update_user
from .cli import project_id
from .queue import release_open_tasks

__all__ = [
    "CreateUserConfig",
    "SetUserConfig",
    "MembersConfig",
    "UsersConfig",
    "run_create_user",
    "run_set_user",
    "run_members",
    "run_users",
]


@dataclass
class CreateUserConfig:
    db: str = field(default="feedback.db", metadata={"help": "SQLite file or SQLAlchemy URL"})
    username: str = field(default="", metadata={"help": "user name"})
    password: str = field(
        default="",
        metadata={
            "help": "deprecated: a password here stays in the shell history and is visible to `ps`; "
            "set $RLHFKIT_PASSWORD or type it at the prompt"
        },
    )
    role: str = field(default="labeler", metadata={"help": "admin or labeler"})


@dataclass
class SetUserConfig:
    db: str = field(default="feedback.db", metadata={"help": "SQLite file or SQLAlchemy URL"})
    username: str = field(default="", metadata={"help": "the user to change"})
    active: bool | None = field(
        default=None,
        metadata={
            "help": "false: the user can no longer log in, their sessions end at once and their open tasks go "
            "back to the queue; true: allowed again"
        },
    )
    role: str = field(default="", metadata={"help": "admin or labeler (empty: unchanged)"})
    new_password: bool = field(
        default=False,
        metadata={"help": "set a new password, read from $RLHFKIT_PASSWORD or the prompt; ends the user's sessions"},
    )


@dataclass
class MembersConfig:
    db: str = field(default="feedback.db", metadata={"help": "SQLite file or SQLAlchemy URL"})
    project: str = field(default="", metadata={"help": "project name"})
    add: list[str] = field(default_factory=list, metadata={"help": "comma-separated user names to add"})
    remove: list[str] = field(default_factory=list, metadata={"help": "comma-separated user names to remove"})
    clear: bool = field(default=False, metadata={"help": "remove every member: the project is open to all labelers"})


@dataclass
class UsersConfig:
    db: str = field(default="feedback.db", metadata={"help": "SQLite file or SQLAlchemy URL"})


def _read_password(what: str) -> str:
    """A password from ``$RLHFKIT_PASSWORD``, else typed twice at a prompt (not echoed)."""
    env = os.environ.get("RLHFKIT_PASSWORD", "")
    if env:
        return env
    if not sys.stdin or not sys.stdin.isatty():
        raise ConfigError(f"no password given for {what}: set $RLHFKIT_PASSWORD (or run in a terminal to be asked)")
    first = getpass.getpass(f"password for {what}: ")
    if first != getpass.getpass("again: "):
        raise ConfigError("the two passwords differ")
    return first


def run_create_user(c: CreateUserConfig) -> None:
    if not c.username.strip():
        raise ConfigError("field 'username': give --username NAME")
    try:
        username = clean_username(c.username)  # judged before a password is asked for
    except ValueError as e:
        raise ConfigError(f"field 'username': {e}") from None
    if c.password:
        print(
            "rlhfkit feedback create-user: warning: --password stays in the shell history and is visible "
            "to other users in `ps`; set $RLHFKIT_PASSWORD or type it at the prompt instead",
            file=sys.stderr,
            flush=True,
        )
    password = c.password or _read_password(repr(username))
    if len(password) < MIN_PASSWORD:  # judged before the store is opened
        raise ConfigError(f"password must have at least {MIN_PASSWORD} characters")
    store = db.Store(c.db)
    try:
        uid = store.write(lambda conn: create_user(conn, username, password, c.role))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - e.g. the unique constraint
        if "unique" in str(e).lower():
            raise ConfigError(f"user {username!r} exists") from None
        raise
    finally:
        store.close()
    print(f"created {c.role} {username!r} (id {uid})")


def _user_id(conn, username: str):
    return conn.execute(select(db.users.c.id).where(db.users.c.username == username)).scalar()


def run_set_user(c: SetUserConfig) -> None:
    if not c.username.strip():
        raise ConfigError("field 'username': give --username NAME")
    if c.role and c.role not in ROLES:
        raise ConfigError(f"field 'role': {c.role!r} is not one of {', '.join(ROLES)}")
    if c.active is None and not c.role and not c.new_password:
        raise ConfigError("nothing to change: give --active true|false, --role ROLE or --new_password true")
    db.require_store_file(c.db)
    new_hash = None
    if c.new_password:
        password = _read_password(repr(c.username))
        if len(password) < MIN_PASSWORD:
            raise ConfigError(f"password must have at least {MIN_PASSWORD} characters")
        new_hash = hash_password(password)
    store = db.Store(c.db)
    try:

        def job(conn):
            uid = _user_id(conn, c.username.strip())  # names are stored without surrounding spaces
            if uid is None:
                raise LookupError(f"field 'username': no user {c.username.strip()!r}")
            return update_user(conn, uid, active=c.active, role=c.role or None, password_hash=new_hash)

        try:
            row = store.write(job)
        except (LookupError, ValueError) as e:
            raise ConfigError(str(e)) from None
    finally:
        store.close()
    extra = "; password set, sessions ended" if new_hash else ""
    extra += "; sessions ended, open tasks handed back" if c.active is False else ""
    print(f"{row['username']!r}: {row['role']}, {'active' if row['active'] else 'inactive'}{extra}")


def run_members(c: MembersConfig) -> None:
    if not c.project:
        raise ConfigError("field 'project': give --project NAME")
    db.require_store_file(c.db)
    store = db.Store(c.db)
    M, U, A = db.project_members, db.users, db.assignments
    try:

        def job(conn):
            pid = project_id(conn, c.project)
            if pid is None:
                raise LookupError(f"field 'project': no project named {c.project!r}")
            ids = {}
            for field_name, names in (("add", c.add), ("remove", c.remove)):
                for n in names:
                    uid = _user_id(conn, n.strip())
                    if uid is None:
                        raise LookupError(f"field '{field_name}': no user {n.strip()!r}")
                    ids[n.strip()] = uid
            members = {r[0] for r in conn.execute(select(M.c.user_id).where(M.c.project_id == pid))}
            after = set() if c.clear else set(members)
            after |= {ids[n.strip()] for n in c.add}
            after -= {ids[n.strip()] for n in c.remove}
            conn.execute(delete(M).where(M.c.project_id == pid))
            if after:
                conn.execute(insert(M), [{"project_id": pid, "user_id": u} for u in sorted(after)])
                holders = {
                    r[0] for r in conn.execute(select(A.c.user_id).where(A.c.project_id == pid, A.c.status == "open"))
                }
                for u in holders - after:
                    release_open_tasks(conn, u, pid)
            return sorted(conn.execute(select(U.c.username).where(U.c.id.in_(after))).scalars()) if after else []

        try:
            names = store.write(job)
        except LookupError as e:
            raise ConfigError(str(e)) from None
    finally:
        store.close()
    print(f"project {c.project!r}: " + ("open to every labeler" if not names else "labelers " + ", ".join(names)))


def run_users(c: UsersConfig) -> None:
    db.require_store_file(c.db)
    store = db.Store(c.db)
    U, M, P = db.users, db.project_members, db.projects
    try:
        with store.read() as conn:
            users = conn.execute(select(U.c.id, U.c.username, U.c.role, U.c.active).order_by(U.c.id)).all()
            member_of: dict = {}
            for uid, name in conn.execute(
                select(M.c.user_id, P.c.name).select_from(M.join(P, P.c.id == M.c.project_id))
            ):
                member_of.setdefault(uid, []).append(name)
    finally:
        store.close()
    for uid, name, role, active in users:
        projects = ", ".join(_printable(n) for n in sorted(member_of.get(uid, []))) or "-"
        print(f"{uid}\t{_printable(name)}\t{role}\t{'active' if active else 'inactive'}\tmember of: {projects}")


def _printable(name: str) -> str:
    """A stored name as it may go to a terminal: itself, or quoted with escapes when it holds a
    tab, line break or control character (names stored before the rules of ``clean_username``,
    project names): never a forged line or column, never a terminal escape sequence."""
    return name if name.isprintable() else ascii(name)
