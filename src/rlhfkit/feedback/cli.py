"""Configs and entry points of ``rlhfkit feedback serve | import | export | forget``; the
user-management commands (``create-user | set-user | members | users``) are in ``cli_users``."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field

from sqlalchemy import insert, select
from sqlalchemy.exc import SQLAlchemyError

from rlhfkit.privacy import count_text
from rlhfkit.training.config import ConfigError

from . import db
from .export import LABELER_KEY_ENV, export_labels, labeler_key, redact_export, write_records
from .queue import add_items
from .tasks import TASK_TYPES, drop_duplicate_items, parse_items, redact_items

__all__ = [
    "ServeConfig",
    "ImportConfig",
    "ExportConfig",
    "ForgetConfig",
    "run_serve",
    "run_import",
    "run_export",
    "run_forget",
    "project_id",
]


def _err(msg: str) -> ConfigError:
    return ConfigError(msg)


@dataclass
class ServeConfig:
    db: str = field(default="feedback.db", metadata={"help": "SQLite file or SQLAlchemy URL (postgresql://...)"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8000, metadata={"help": "port to listen on"})
    workers: int = field(default=1, metadata={"help": "uvicorn worker processes (1 is best for SQLite)"})
    secure_cookies: bool = field(default=False, metadata={"help": "mark cookies Secure (behind HTTPS)"})
    log_level: str = field(default="warning", metadata={"help": "uvicorn log level"})
    lease_minutes: float = field(
        default=30.0, metadata={"help": "an open task older than this may be reassigned to another labeler (0: never)"}
    )
    policy: str = field(
        default="",
        metadata={
            "help": "model that answers live-generated items (admin API .../generate): a folder, .gguf, HF name, "
            "smollm2-135m, an `rlhfkit loop` output folder, whose current policy is used and followed "
            "round after round, or a learner folder (current.json + versions/), whose promoted version "
            "is followed (empty = items are imported only)"
        },
    )
    max_new_tokens: int = field(default=64, metadata={"help": "live generation: response tokens at most"})
    temperature: float = field(default=1.0, metadata={"help": "live generation: sampling temperature"})
    redact: bool = field(
        default=False,
        metadata={
            "help": "replace personal data (e-mail, phone, card, IBAN, SSN, IP; rlhfkit.privacy) in every import "
            "through the admin page and API before labelers see it, and in every API export "
            "(a request's ?redact=true does it without this)"
        },
    )
    trusted_proxies: list[str] = field(
        default_factory=list,
        metadata={
            "help": "comma-separated addresses or networks (10.0.0.0/8) of reverse proxies whose X-Forwarded-For "
            "names the client; empty: the connecting address is the client (the header is ignored)"
        },
    )
    max_import_mb: float = field(
        default=50.0,
        metadata={
            "help": "largest JSONL upload to the admin import, in MB (413 above; a gzip upload by its decompressed "
            "size); every other request body: 1 MB"
        },
    )


@dataclass
class ImportConfig:
    db: str = field(default="feedback.db", metadata={"help": "SQLite file or SQLAlchemy URL"})
    project: str = field(default="", metadata={"help": "project name (created when task_type is given and it is new)"})
    file: str = field(default="", metadata={"help": "JSONL / JSON-list file of items"})
    task_type: str = field(default="", metadata={"help": "pairwise, ranking, rating, thumbs or rewrite (new projects)"})
    overlap: int = field(default=1, metadata={"help": "labelers per item (new projects)"})
    gold_rate: float = field(default=0.0, metadata={"help": "share of gold questions mixed in (new projects)"})
    instructions: str = field(default="", metadata={"help": "instructions shown to labelers (new projects)"})
    redact: bool = field(
        default=False,
        metadata={
            "help": "replace personal data in prompts and responses by [KIND] before labelers see them (rlhfkit.privacy)"
        },
    )
    max_field_chars: int = field(
        default=100_000,
        metadata={"help": "longest text allowed in one field of an item (prompt, message, response); 0 = no limit"},
    )

    def validate(self) -> None:
        if self.max_field_chars < 0:
            raise ValueError(f"field 'max_field_chars': must be >= 0 (0 = no limit), got {self.max_field_chars}")


@dataclass
class ExportConfig:
    db: str = field(default="feedback.db", metadata={"help": "SQLite file or SQLAlchemy URL"})
    project: str = field(default="", metadata={"help": "project name"})
    kind: str = field(default="pairs", metadata={"help": "pairs, rankings, ratings, thumbs, sft or rewrites"})
    out: str = field(default="", metadata={"help": "output .jsonl file, or folder for format hf"})
    format: str = field(default="jsonl", metadata={"help": "jsonl or hf (datasets.save_to_disk)"})
    aggregate: str = field(default="none", metadata={"help": "none (a record per label) or majority (per item)"})
    include_gold: bool = field(default=False, metadata={"help": "also export labels on gold items"})
    redact: bool = field(
        default=False,
        metadata={
            "help": "replace personal data in the text (e-mail, phone, card, IBAN, SSN, IP) by [KIND] "
            "(rlhfkit.privacy; names and addresses are not found)"
        },
    )
    with_labeler: bool = field(
        default=True,
        metadata={
            "help": "give each record its labeler's pseudonym `labeler-<hmac>` (the same in every export of this "
            "store; key in $RLHFKIT_LABELER_KEY or <db>.labeler_key beside a SQLite store; never the user name)"
        },
    )
    min_gold_accuracy: float = field(
        default=0.0,
        metadata={
            "help": "leave out the labels of labelers whose accuracy on this project's gold questions is below this "
            "(0 = keep everyone; a labeler without gold answers counts at the project's pooled accuracy)"
        },
    )
    weight_by_gold: bool = field(
        default=False,
        metadata={"help": "give each record a `weight`: its labeler's gold accuracy (training scales its loss by it)"},
    )

    def validate(self) -> None:
        if not 0 <= self.min_gold_accuracy <= 1:
            raise ValueError(f"field 'min_gold_accuracy': must be in [0, 1], got {self.min_gold_accuracy}")


@dataclass
class ForgetConfig:
    db: str = field(default="feedback.db", metadata={"help": "SQLite file or SQLAlchemy URL"})
    end_user: str = field(
        default="",
        metadata={
            "help": "the end-user id that `rlhfkit serve` clients sent as `user` (also matched in its hashed form)"
        },
    )
    project_prefix: str = field(
        default="serve", metadata={"help": "the served model's projects PREFIX-thumbs and PREFIX-ratings"}
    )


def run_serve(c: ServeConfig) -> None:
    # the web stack (fastapi, uvicorn, jinja2) and a policy's model load only for this command
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
        print(
            f"rlhfkit feedback: live generation by {generator.loaded}"
            + (f" (following {generator.version.kind} {c.policy})" if generator.loaded != c.policy else ""),
            flush=True,
        )
    print(f"rlhfkit feedback: serving {c.db} on http://{c.host}:{c.port}", flush=True)
    if not c.max_import_mb > 0:
        raise _err(f"field 'max_import_mb': must be above 0, got {c.max_import_mb}")
    for h in c.trusted_proxies:
        try:
            ipaddress.ip_network(h.strip(), strict=False)
        except ValueError:
            raise _err(f"field 'trusted_proxies': {h!r} is not an address or network") from None
    serve(
        c.db,
        c.host,
        c.port,
        workers=c.workers,
        secure_cookies=c.secure_cookies,
        log_level=c.log_level,
        lease_s=c.lease_minutes * 60,
        generator=generator,
        redact=c.redact,
        trusted_proxies=[h.strip() for h in c.trusted_proxies],
        max_import_bytes=int(c.max_import_mb * 1e6),
    )


def project_id(conn, name: str) -> int | None:
    """The id of the project named ``name``, None when there is none."""
    return conn.execute(select(db.projects.c.id).where(db.projects.c.name == name)).scalar()


def run_import(c: ImportConfig) -> None:
    if not c.project or not c.file:
        raise _err("give --project NAME and --file ITEMS.jsonl")
    if c.task_type and c.task_type not in TASK_TYPES:  # a typo, checked before the store is opened
        raise _err(f"field 'task_type': {c.task_type!r} is not a task type; choose one of {', '.join(TASK_TYPES)}")
    store = db.Store(c.db)
    try:
        with store.read() as conn:
            pid = project_id(conn, c.project)
            proj = (
                None
                if pid is None
                else conn.execute(select(db.projects).where(db.projects.c.id == pid)).mappings().one()
            )
        if proj is None:
            if c.task_type not in TASK_TYPES:
                raise _err(
                    f"project {c.project!r} does not exist; give --task_type ({', '.join(TASK_TYPES)}) to create it"
                )
            ttype, scale = c.task_type, (1, 7)
        else:
            ttype, scale = proj["task_type"], (proj["scale_min"], proj["scale_max"])
        parsed = parse_items(c.file, ttype, scale, c.max_field_chars or None)  # DataError names file, line, field
        parsed, n_copies = drop_duplicate_items(parsed)
        note = f"; dropped {n_copies} exact duplicate items of {c.file}" if n_copies else ""
        if c.redact:
            parsed, counts, n_equal = redact_items(parsed)
            note += _redaction_note(counts)
            if n_equal:
                note += f"; left out {n_equal} items whose responses became the same text"

        def job(conn):  # project creation and items in one transaction
            p = pid
            if p is None:
                p = int(
                    conn.execute(
                        insert(db.projects).values(
                            name=c.project,
                            task_type=ttype,
                            instructions=c.instructions,
                            overlap=c.overlap,
                            gold_rate=c.gold_rate,
                            scale_min=1,
                            scale_max=7,
                            active=True,
                            n_items=0,
                            n_labels=0,
                            created_at=time.time(),
                        )
                    ).inserted_primary_key[0]
                )
            return p, add_items(conn, p, parsed)

        p, n = store.write(job)
        print(f"imported {n} items into project {c.project!r} (id {p}){note}")
    finally:
        store.close()


def run_export(c: ExportConfig) -> None:
    if not c.project or not c.out:
        raise _err("give --project NAME and --out PATH")
    if c.format not in ("jsonl", "hf"):
        raise _err(f"field 'format': {c.format!r} is not jsonl or hf")
    db.require_store_file(c.db)
    store = db.Store(c.db)
    try:
        with store.read() as conn:
            pid = project_id(conn, c.project)
            if pid is None:
                raise _err(f"no project named {c.project!r}")
            try:
                key = labeler_key(c.db) if c.with_labeler and c.aggregate == "none" else None
                result = export_labels(
                    conn,
                    pid,
                    c.kind,
                    include_gold=c.include_gold,
                    aggregate=c.aggregate,
                    labeler_key=key,
                    min_gold_accuracy=c.min_gold_accuracy or None,
                    weight_by_gold=c.weight_by_gold,
                )
            except ValueError as e:
                raise _err(str(e)) from None
    finally:
        store.close()
    records, note = result.records, result.note()
    if c.with_labeler and c.aggregate == "none" and key is None:
        note += f"; labeler ids left out: set ${LABELER_KEY_ENV} to give them from a database URL"
    if c.redact:
        records, counts, n_equal = redact_export(records)
        note = _redaction_note(counts)
        if n_equal:
            note += f"; left out {n_equal} pairs whose two answers became the same text"
    n = write_records(records, c.out, c.format)
    print(f"wrote {n} {c.kind} records to {c.out}{note}")


def _redaction_note(counts) -> str:
    """What redaction replaced, for the command's last line."""
    return "; redacted " + (count_text(counts) or "nothing (none found)")


def run_forget(c: ForgetConfig) -> None:
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
            raise _err(
                f"field 'project_prefix': no projects {c.project_prefix}-thumbs or {c.project_prefix}-ratings in {c.db}"
            )
        try:
            gone = log.forget(c.end_user)
        except ValueError as e:  # the ids were hashed with a key not at hand
            raise _err(f"field 'end_user': {e}") from None
    finally:
        log.close()
    wal = {
        True: "",
        None: "",
        False: "; the SQLite write-ahead log is held by another connection (a running server?) and still "
        "holds the erased rows until its next checkpoint: run this again when it is stopped",
    }
    print(
        f"erased {gone['items']} completions and {gone['labels']} feedback labels of end user "
        f"{c.end_user.strip()!r} from {c.db}{wal[gone['wal_truncated']]}"
    )
