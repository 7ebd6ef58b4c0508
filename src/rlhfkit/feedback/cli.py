"""Configs and entry points of ``rlhfkit feedback serve | import | export | create-user | set-user |
members | users | forget``.

Passwords never travel on the command line (shell history, ``ps``): ``create-user`` and
``set-user --new_password true`` read ``$RLHFKIT_PASSWORD``, else prompt for it twice (getpass)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

__all__ = ["ServeConfig", "ImportConfig", "ExportConfig", "CreateUserConfig", "SetUserConfig", "MembersConfig",
           "UsersConfig", "ForgetConfig", "run_serve", "run_import", "run_export", "run_create_user",
           "run_set_user", "run_members", "run_users", "run_forget"]


def _err(msg: str):
    from rlhfkit.training.config import ConfigError

    return ConfigError(msg)


@dataclass
class ServeConfig:
    db: str = field(default="feedback.db", metadata={"help": "SQLite file or SQLAlchemy URL (postgresql://...)"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8000, metadata={"help": "port to listen on"})
    workers: int = field(default=1, metadata={"help": "uvicorn worker processes (1 is best for SQLite)"})
    secure_cookies: bool = field(default=False, metadata={"help": "mark cookies Secure (behind HTTPS)"})
    log_level: str = field(default="warning", metadata={"help": "uvicorn log level"})
    lease_minutes: float = field(default=30.0, metadata={
        "help": "an open task older than this may be reassigned to another labeler (0: never)"})
    policy: str = field(default="", metadata={
        "help": "model that answers live-generated items (admin API .../generate): a folder, .gguf, HF name, "
                "smollm2-135m, an `rlhfkit loop` output folder, whose current policy is used and followed "
                "round after round, or a learner folder (current.json + versions/), whose promoted version "
                "is followed (empty = items are imported only)"})
    max_new_tokens: int = field(default=64, metadata={"help": "live generation: response tokens at most"})
    temperature: float = field(default=1.0, metadata={"help": "live generation: sampling temperature"})
    redact: bool = field(default=False, metadata={
        "help": "replace personal data (e-mail, phone, card, IBAN, SSN, IP; rlhfkit.privacy) in every import "
                "through the admin page and API before labelers see it, and in every API export "
                "(a request's ?redact=true does it without this)"})
    trusted_proxies: list[str] = field(default_factory=list, metadata={
        "help": "comma-separated addresses or networks (10.0.0.0/8) of reverse proxies whose X-Forwarded-For "
                "names the client; empty: the connecting address is the client (the header is ignored)"})
    max_import_mb: float = field(default=50.0, metadata={
        "help": "largest JSONL upload to the admin import, in MB (413 above); every other request body: 1 MB"})


@dataclass
class ImportConfig:
    db: str = field(default="feedback.db", metadata={"help": "SQLite file or SQLAlchemy URL"})
    project: str = field(default="", metadata={"help": "project name (created when task_type is given and it is new)"})
    file: str = field(default="", metadata={"help": "JSONL / JSON-list file of items"})
    task_type: str = field(default="", metadata={"help": "pairwise, ranking, rating, thumbs or rewrite (new projects)"})
    overlap: int = field(default=1, metadata={"help": "labelers per item (new projects)"})
    gold_rate: float = field(default=0.0, metadata={"help": "share of gold questions mixed in (new projects)"})
    instructions: str = field(default="", metadata={"help": "instructions shown to labelers (new projects)"})
    redact: bool = field(default=False, metadata={
        "help": "replace personal data in prompts and responses by [KIND] before labelers see them (rlhfkit.privacy)"})


@dataclass
class ExportConfig:
    db: str = field(default="feedback.db", metadata={"help": "SQLite file or SQLAlchemy URL"})
    project: str = field(default="", metadata={"help": "project name"})
    kind: str = field(default="pairs", metadata={"help": "pairs, rankings, ratings, thumbs, sft or rewrites"})
    out: str = field(default="", metadata={"help": "output .jsonl file, or folder for format hf"})
    format: str = field(default="jsonl", metadata={"help": "jsonl or hf (datasets.save_to_disk)"})
    aggregate: str = field(default="none", metadata={"help": "none (a record per label) or majority (per item)"})
    include_gold: bool = field(default=False, metadata={"help": "also export labels on gold items"})
    redact: bool = field(default=False, metadata={
        "help": "replace personal data in the text (e-mail, phone, card, IBAN, SSN, IP) by [KIND] "
                "(rlhfkit.privacy; names and addresses are not found)"})


@dataclass
class CreateUserConfig:
    db: str = field(default="feedback.db", metadata={"help": "SQLite file or SQLAlchemy URL"})
    username: str = field(default="", metadata={"help": "user name"})
    password: str = field(default="", metadata={
        "help": "deprecated: a password here stays in the shell history and is visible to `ps`; "
                "set $RLHFKIT_PASSWORD or type it at the prompt"})
    role: str = field(default="labeler", metadata={"help": "admin or labeler"})


@dataclass
class SetUserConfig:
    db: str = field(default="feedback.db", metadata={"help": "SQLite file or SQLAlchemy URL"})
    username: str = field(default="", metadata={"help": "the user to change"})
    active: bool | None = field(default=None, metadata={
        "help": "false: the user can no longer log in, their sessions end at once and their open tasks go "
                "back to the queue; true: allowed again"})
    role: str = field(default="", metadata={"help": "admin or labeler (empty: unchanged)"})
    new_password: bool = field(default=False, metadata={
        "help": "set a new password, read from $RLHFKIT_PASSWORD or the prompt; ends the user's sessions"})


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


@dataclass
class ForgetConfig:
    db: str = field(default="feedback.db", metadata={"help": "SQLite file or SQLAlchemy URL"})
    end_user: str = field(default="", metadata={
        "help": "the end-user id that `rlhfkit serve` clients sent as `user` (also matched in its hashed form)"})
    project_prefix: str = field(default="serve", metadata={"help": "the served model's projects PREFIX-thumbs and PREFIX-ratings"})


def run_serve(c: ServeConfig) -> None:
    from .server import serve

    generator = None
    if c.policy:
        if c.workers > 1:
            raise _err("field 'policy': live generation runs in one worker process; set --workers 1")
        from .live import PolicyGenerator

        try:
            generator = PolicyGenerator(c.policy, max_new_tokens=c.max_new_tokens, temperature=c.temperature)
        except (OSError, ValueError) as e:
            raise _err(f"field 'policy': {e}") from None
        print(f"rlhfkit feedback: live generation by {generator.loaded}"
              + (f" (following {generator.version.kind} {c.policy})" if generator.loaded != c.policy else ""),
              flush=True)
    print(f"rlhfkit feedback: serving {c.db} on http://{c.host}:{c.port}", flush=True)
    if not c.max_import_mb > 0:
        raise _err(f"field 'max_import_mb': must be above 0, got {c.max_import_mb}")
    import ipaddress

    for h in c.trusted_proxies:
        try:
            ipaddress.ip_network(h.strip(), strict=False)
        except ValueError:
            raise _err(f"field 'trusted_proxies': {h!r} is not an address or network") from None
    serve(c.db, c.host, c.port, workers=c.workers, secure_cookies=c.secure_cookies, log_level=c.log_level,
          lease_s=c.lease_minutes * 60, generator=generator, redact=c.redact,
          trusted_proxies=[h.strip() for h in c.trusted_proxies], max_import_bytes=int(c.max_import_mb * 1e6))


def _project_id(conn, name: str):
    from sqlalchemy import select

    from . import db

    return conn.execute(select(db.projects.c.id).where(db.projects.c.name == name)).scalar()


def run_import(c: ImportConfig) -> None:
    from sqlalchemy import insert, select

    from . import db
    from .queue import add_items
    from .tasks import TASK_TYPES, parse_items

    if not c.project or not c.file:
        raise _err("give --project NAME and --file ITEMS.jsonl")
    if c.task_type and c.task_type not in TASK_TYPES:  # a typo, checked before the store is opened
        raise _err(f"field 'task_type': {c.task_type!r} is not a task type; choose one of "
                   f"{', '.join(TASK_TYPES)}")
    store = db.Store(c.db)
    try:
        with store.read() as conn:
            pid = _project_id(conn, c.project)
            proj = None if pid is None else conn.execute(
                select(db.projects).where(db.projects.c.id == pid)).mappings().one()
        if proj is None:
            if c.task_type not in TASK_TYPES:
                raise _err(f"project {c.project!r} does not exist; give --task_type "
                           f"({', '.join(TASK_TYPES)}) to create it")
            ttype, scale = c.task_type, (1, 7)
        else:
            ttype, scale = proj["task_type"], (proj["scale_min"], proj["scale_max"])
        parsed = parse_items(c.file, ttype, scale)  # DataError names file, line, field
        note = ""
        if c.redact:
            from .tasks import redact_items

            parsed, counts, n_equal = redact_items(parsed)
            note = _redaction_note(counts)
            if n_equal:
                note += f"; left out {n_equal} items whose responses became the same text"

        def job(conn):  # project creation and items in one transaction
            p = pid
            if p is None:
                p = int(conn.execute(insert(db.projects).values(
                    name=c.project, task_type=ttype, instructions=c.instructions, overlap=c.overlap,
                    gold_rate=c.gold_rate, scale_min=1, scale_max=7, active=True, n_items=0, n_labels=0,
                    created_at=time.time())).inserted_primary_key[0])
            return p, add_items(conn, p, parsed)
        p, n = store.write(job)
        print(f"imported {n} items into project {c.project!r} (id {p}){note}")
    finally:
        store.close()


def run_export(c: ExportConfig) -> None:
    from . import db
    from .export import export_records, write_records

    if not c.project or not c.out:
        raise _err("give --project NAME and --out PATH")
    if c.format not in ("jsonl", "hf"):
        raise _err(f"field 'format': {c.format!r} is not jsonl or hf")
    db.require_store_file(c.db)
    store = db.Store(c.db)
    try:
        with store.read() as conn:
            pid = _project_id(conn, c.project)
            if pid is None:
                raise _err(f"no project named {c.project!r}")
            try:
                records = export_records(conn, pid, c.kind, include_gold=c.include_gold, aggregate=c.aggregate)
            except ValueError as e:
                raise _err(str(e)) from None
    finally:
        store.close()
    note = ""
    if c.redact:
        from .export import redact_export

        records, counts, n_equal = redact_export(records)
        note = _redaction_note(counts)
        if n_equal:
            note += f"; left out {n_equal} pairs whose two answers became the same text"
    n = write_records(records, c.out, c.format)
    print(f"wrote {n} {c.kind} records to {c.out}{note}")


def _redaction_note(counts) -> str:
    """What redaction replaced, for the command's last line."""
    from rlhfkit.privacy import count_text

    return "; redacted " + (count_text(counts) or "nothing (none found)")


def _read_password(what: str) -> str:
    """A password from ``$RLHFKIT_PASSWORD``, else typed twice at a prompt (not echoed)."""
    import sys

    env = os.environ.get("RLHFKIT_PASSWORD", "")
    if env:
        return env
    if not sys.stdin or not sys.stdin.isatty():
        raise _err(f"no password given for {what}: set $RLHFKIT_PASSWORD (or run in a terminal to be asked)")
    import getpass

    first = getpass.getpass(f"password for {what}: ")
    if first != getpass.getpass("again: "):
        raise _err("the two passwords differ")
    return first


def run_create_user(c: CreateUserConfig) -> None:
    import sys

    from . import db
    from .auth import MIN_PASSWORD, create_user

    if not c.username.strip():
        raise _err("field 'username': give --username NAME")
    if c.password:
        print("rlhfkit feedback create-user: warning: --password stays in the shell history and is visible "
              "to other users in `ps`; set $RLHFKIT_PASSWORD or type it at the prompt instead",
              file=sys.stderr, flush=True)
    password = c.password or _read_password(repr(c.username))
    if len(password) < MIN_PASSWORD:  # judged before the store is opened
        raise _err(f"password must have at least {MIN_PASSWORD} characters")
    store = db.Store(c.db)
    try:
        uid = store.write(lambda conn: create_user(conn, c.username, password, c.role))
    except ValueError as e:
        raise _err(str(e)) from None
    except Exception as e:  # noqa: BLE001 - e.g. the unique constraint
        if "unique" in str(e).lower():
            raise _err(f"user {c.username!r} exists") from None
        raise
    finally:
        store.close()
    print(f"created {c.role} {c.username!r} (id {uid})")


def _user_id(conn, username: str):
    from sqlalchemy import select

    from . import db

    return conn.execute(select(db.users.c.id).where(db.users.c.username == username)).scalar()


def run_set_user(c: SetUserConfig) -> None:
    from . import db
    from .auth import ROLES, hash_password, update_user

    if not c.username.strip():
        raise _err("field 'username': give --username NAME")
    if c.role and c.role not in ROLES:
        raise _err(f"field 'role': {c.role!r} is not one of {', '.join(ROLES)}")
    if c.active is None and not c.role and not c.new_password:
        raise _err("nothing to change: give --active true|false, --role ROLE or --new_password true")
    db.require_store_file(c.db)
    new_hash = None
    if c.new_password:
        from .auth import MIN_PASSWORD

        password = _read_password(repr(c.username))
        if len(password) < MIN_PASSWORD:
            raise _err(f"password must have at least {MIN_PASSWORD} characters")
        new_hash = hash_password(password)
    store = db.Store(c.db)
    try:
        def job(conn):
            uid = _user_id(conn, c.username)
            if uid is None:
                raise LookupError(f"field 'username': no user {c.username!r}")
            return update_user(conn, uid, active=c.active, role=c.role or None, password_hash=new_hash)
        try:
            row = store.write(job)
        except (LookupError, ValueError) as e:
            raise _err(str(e)) from None
    finally:
        store.close()
    extra = "; password set, sessions ended" if new_hash else ""
    extra += "; sessions ended, open tasks handed back" if c.active is False else ""
    print(f"{row['username']!r}: {row['role']}, {'active' if row['active'] else 'inactive'}{extra}")


def run_members(c: MembersConfig) -> None:
    from sqlalchemy import delete, insert, select

    from . import db
    from .queue import release_open_tasks

    if not c.project:
        raise _err("field 'project': give --project NAME")
    db.require_store_file(c.db)
    store = db.Store(c.db)
    M, U, A = db.project_members, db.users, db.assignments
    try:
        def job(conn):
            pid = _project_id(conn, c.project)
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
                holders = {r[0] for r in conn.execute(select(A.c.user_id).where(A.c.project_id == pid,
                                                                                 A.c.status == "open"))}
                for u in holders - after:
                    release_open_tasks(conn, u, pid)
            return sorted(conn.execute(select(U.c.username).where(U.c.id.in_(after))).scalars()) if after else []
        try:
            names = store.write(job)
        except LookupError as e:
            raise _err(str(e)) from None
    finally:
        store.close()
    print(f"project {c.project!r}: " + ("open to every labeler" if not names else "labelers " + ", ".join(names)))


def run_users(c: UsersConfig) -> None:
    from sqlalchemy import select

    from . import db

    db.require_store_file(c.db)
    store = db.Store(c.db)
    U, M, P = db.users, db.project_members, db.projects
    try:
        with store.read() as conn:
            users = conn.execute(select(U.c.id, U.c.username, U.c.role, U.c.active).order_by(U.c.id)).all()
            member_of: dict = {}
            for uid, name in conn.execute(select(M.c.user_id, P.c.name).select_from(M.join(P, P.c.id == M.c.project_id))):
                member_of.setdefault(uid, []).append(name)
    finally:
        store.close()
    for uid, name, role, active in users:
        projects = ", ".join(sorted(member_of.get(uid, []))) or "-"
        print(f"{uid}\t{name}\t{role}\t{'active' if active else 'inactive'}\tmember of: {projects}")


def run_forget(c: ForgetConfig) -> None:
    from sqlalchemy.exc import SQLAlchemyError

    from . import db

    if not c.end_user.strip():
        raise _err("field 'end_user': give the end user's id (the `user` their requests carried)")
    db.require_store_file(c.db)
    from rlhfkit.feedback.enduser import FeedbackLog

    try:
        log = FeedbackLog(c.db, prefix=c.project_prefix, create=False)
    except SQLAlchemyError as e:
        raise _err(f"field 'db': cannot open the feedback store {c.db!r}: {getattr(e, 'orig', None) or e}") from None
    except ValueError as e:  # a project of that name with another task type
        raise _err(f"field 'project_prefix': {e}") from None
    try:
        if not log.projects:
            raise _err(f"field 'project_prefix': no projects {c.project_prefix}-thumbs or "
                       f"{c.project_prefix}-ratings in {c.db}")
        try:
            gone = log.forget(c.end_user)
        except ValueError as e:  # the ids were hashed with a key not at hand
            raise _err(f"field 'end_user': {e}") from None
    finally:
        log.close()
    wal = {True: "", None: "",
           False: "; the SQLite write-ahead log is held by another connection (a running server?) and still "
                  "holds the erased rows until its next checkpoint: run this again when it is stopped"}
    print(f"erased {gone['items']} completions and {gone['labels']} feedback labels of end user "
          f"{c.end_user.strip()!r} from {c.db}{wal[gone['wal_truncated']]}")
