"""What the JSON API and the pages both do, on an :class:`AppContext`: log-ins and password
changes under the log-in throttle, projects, users and members, the item import and the export.
Errors are ``HTTPException`` s with the status each route answers."""

from __future__ import annotations

import json
import time
from typing import Any, Callable

from fastapi import HTTPException, Request
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from rlhfkit.data import DataError
from rlhfkit.privacy import redact_value

from .. import db
from ..auth import (
    Principal,
    Throttled,
    authenticate,
    clean_username,
    create_session,
    create_user as insert_user,
    hash_password,
    needs_rehash,
    update_user as change_user,
    verify_password,
)
from ..export import LABELER_KEY_ENV, export_labels, labeler_key, redact_export
from ..queue import Conflict, NotFound, add_items, release_open_tasks
from ..stats import overview
from ..tasks import LabelError, drop_duplicate_items, parse_items, redact_items
from .context import AppContext
from .schemas import ProjectIn, UserPatch

__all__ = [
    "write",
    "client_address",
    "login",
    "change_password",
    "my_projects",
    "get_project",
    "create_project",
    "import_items",
    "project_labels",
    "project_export",
    "create_user",
    "update_user",
    "project_members",
    "set_members",
]


async def write(ctx: AppContext, fn: Callable) -> Any:
    """``fn(conn)`` in the store's writer; the queue's errors become 404, 409 and 422."""
    try:
        return await ctx.store.awrite(fn)
    except NotFound as e:
        raise HTTPException(404, str(e)) from None
    except Conflict as e:
        raise HTTPException(409, str(e)) from None
    except (LabelError, ValueError) as e:
        raise HTTPException(422, str(e)) from None


def client_address(request: Request) -> str:
    return request.client.host if request.client else "?"


# ----------------------------------------------------------------------------- accounts
def _reserve(ctx: AppContext, username: str, address: str) -> bool:
    """A log-in slot (see ``LoginThrottle``), or 429 with Retry-After."""
    try:
        return ctx.store.write(lambda c: ctx.throttle.reserve(c, username, address))
    except Throttled as e:
        raise HTTPException(
            429, "too many failed log-ins; try again later", headers={"Retry-After": str(int(e.retry_after) + 1)}
        ) from None


def login(ctx: AppContext, username: str, password: str, address: str, kind: str):
    """``(user, token, csrf_token, expires_at)`` of a new session, or None for wrong credentials.
    Call it from the thread pool (sync endpoints): the password check must not block the loop."""
    known = _reserve(ctx, username, address)
    with ctx.store.read() as conn:
        user = authenticate(conn, username, password)
    if user is None:
        return None  # the reserved slot stays counted: that is the failure
    old_hash = user["password_hash"]
    new_hash = hash_password(password) if needs_rehash(old_hash) else None  # outside the writer

    def job(c):
        ctx.throttle.succeeded(c, username, address, known)
        if new_hash is not None:  # upgrade an older hash (scrypt, weaker argon2) now that we know the password
            c.execute(
                update(db.users)
                .where(db.users.c.id == user["id"], db.users.c.password_hash == old_hash)
                .values(password_hash=new_hash)
            )
        return create_session(c, user["id"], kind, ctx.session_ttl_s)

    token, csrf, exp = ctx.store.write(job)
    return user, token, csrf, exp


def change_password(ctx: AppContext, p: Principal, current: str, new: str, address: str) -> None:
    """The signed-in user's own password change: the current password is checked under the
    log-in throttle (a stolen session must not become a way to guess it); every other
    session of the user ends."""
    known = _reserve(ctx, p.username, address)
    with ctx.store.read() as conn:
        row = conn.execute(select(db.users.c.password_hash).where(db.users.c.id == p.user_id)).first()
    if row is None or not verify_password(current, row[0]):
        raise HTTPException(403, "the current password is wrong")
    new_hash = hash_password(new)

    def job(c):
        ctx.throttle.succeeded(c, p.username, address, known)
        change_user(c, p.user_id, password_hash=new_hash, keep_session=p.token_hash)

    ctx.store.write(job)


def create_user(ctx: AppContext, username: str, password: str, role: str) -> dict:
    try:
        username = clean_username(username)  # the name as stored: the one to look for
    except ValueError as e:
        raise HTTPException(422, str(e)) from None

    def job(c):
        if c.execute(select(db.users.c.id).where(db.users.c.username == username)).first():
            raise Conflict(f"user {username!r} exists")
        return insert_user(c, username, password, role)

    try:
        uid = ctx.store.write(job)
    except (Conflict, IntegrityError):  # the unique name: a create in another server process won
        raise HTTPException(409, f"user {username!r} exists") from None
    except ValueError as e:
        raise HTTPException(422, str(e)) from None
    return {"id": uid, "username": username, "role": role}


def update_user(ctx: AppContext, user_id: int, body: UserPatch, p: Principal) -> dict:
    new_hash = None if body.password is None else hash_password(body.password)  # outside the writer
    keep = p.token_hash if user_id == p.user_id else None  # an admin resetting their own: stay signed in

    def job(c):
        return change_user(c, user_id, active=body.active, role=body.role, password_hash=new_hash, keep_session=keep)

    try:
        return ctx.store.write(job)
    except LookupError as e:
        raise HTTPException(404, str(e)) from None
    except ValueError as e:
        raise HTTPException(409, str(e)) from None


# ----------------------------------------------------------------------------- projects
def _members(conn) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for pid, uid in conn.execute(select(db.project_members.c.project_id, db.project_members.c.user_id)):
        out.setdefault(pid, set()).add(uid)
    return out


def my_projects(ctx: AppContext, p: Principal) -> list[dict]:
    """Active projects offered to ``p`` (a member, or the project has no members) with their
    progress and ``p``'s own label count."""
    A = db.assignments
    with ctx.store.read() as conn:
        mine = dict(
            conn.execute(
                select(A.c.project_id, func.count())
                .where(A.c.user_id == p.user_id, A.c.status == "done")
                .group_by(A.c.project_id)
            ).all()
        )
        members = _members(conn)
        out = []
        for row in overview(conn):
            allowed = members.get(row["id"])
            if row["active"] and (not allowed or p.user_id in allowed):
                out.append(dict(row, mine=mine.get(row["id"], 0)))
    return out


def get_project(ctx: AppContext, project_id: int) -> dict:
    with ctx.store.read() as conn:
        row = conn.execute(select(db.projects).where(db.projects.c.id == project_id)).mappings().first()
    if row is None:
        raise HTTPException(404, f"no project {project_id}")
    return dict(row)


def create_project(ctx: AppContext, body: ProjectIn) -> dict:
    if body.scale_min >= body.scale_max:
        raise HTTPException(422, "scale_min must be below scale_max")

    def job(c):
        exists = c.execute(select(db.projects.c.id).where(db.projects.c.name == body.name)).first()
        if exists:
            raise ValueError(f"a project named {body.name!r} exists")
        res = c.execute(
            insert(db.projects).values(
                name=body.name,
                task_type=body.task_type,
                instructions=body.instructions,
                overlap=body.overlap,
                gold_rate=body.gold_rate,
                scale_min=body.scale_min,
                scale_max=body.scale_max,
                active=True,
                n_items=0,
                n_labels=0,
                created_at=time.time(),
            )
        )
        return {"id": int(res.inserted_primary_key[0]), **body.model_dump()}

    try:
        return ctx.store.write(job)
    except ValueError as e:
        raise HTTPException(409, str(e)) from None


def project_members(ctx: AppContext, project_id: int) -> list[dict]:
    U, M = db.users, db.project_members
    with ctx.store.read() as conn:
        return [
            dict(r)
            for r in conn.execute(
                select(U.c.id, U.c.username, U.c.role, U.c.active)
                .select_from(M.join(U, U.c.id == M.c.user_id))
                .where(M.c.project_id == project_id)
                .order_by(U.c.username)
            ).mappings()
        ]


def set_members(ctx: AppContext, project_id: int, usernames: list[str]) -> list[dict]:
    """Restrict the project to these users (none: open to every labeler); whoever had open
    tasks here and is no longer offered the project hands them back. ``LabelError`` names an
    unknown user."""
    get_project(ctx, project_id)
    names = list(dict.fromkeys(n.strip() for n in usernames if n.strip()))
    U, M = db.users, db.project_members

    def job(c):
        ids = dict(c.execute(select(U.c.username, U.c.id).where(U.c.username.in_(names))).all()) if names else {}
        unknown = [n for n in names if n not in ids]
        if unknown:
            raise LabelError(f"field 'usernames': no user {unknown[0]!r}")
        after = set(ids.values())
        c.execute(delete(M).where(M.c.project_id == project_id))
        if after:
            c.execute(insert(M), [{"project_id": project_id, "user_id": u} for u in sorted(after)])
            # whoever had work here and is no longer offered the project hands it back
            holders = {
                r[0]
                for r in c.execute(
                    select(db.assignments.c.user_id).where(
                        db.assignments.c.project_id == project_id, db.assignments.c.status == "open"
                    )
                )
            }
            for u in holders - after:
                release_open_tasks(c, u, project_id)

    ctx.store.write(job)
    return project_members(ctx, project_id)


# ----------------------------------------------------------------------------- import and export
def import_items(
    ctx: AppContext, project_id: int, source, label: str | None = None, redact_request: bool = False
) -> dict:
    """Items from ``source`` (a file path or a list of dicts) into the project, all or nothing:
    the first bad item is a 422 naming file (``label``), line or index, and field."""
    proj = get_project(ctx, project_id)
    try:
        parsed = parse_items(source, proj["task_type"], (proj["scale_min"], proj["scale_max"]))
    except DataError as e:
        if label is not None:
            e = DataError(
                e.message,
                path=label,
                line=e.line if e.index is None else None,
                index=e.index,
                field=e.field,
                reason=e.reason,
            )
        raise HTTPException(
            422, {"error": str(e), "file": e.path, "line": e.line, "field": e.field, "imported": 0}
        ) from None
    parsed, n_copies = drop_duplicate_items(parsed)  # as `feedback import` does
    out: dict = {"duplicates_dropped": n_copies} if n_copies else {}
    if ctx.redact_all or redact_request:
        parsed, counts, n_equal = redact_items(parsed)
        out["redacted"] = dict(counts)
        if n_equal:
            out["left_out"] = n_equal  # items whose responses became one text
    n = ctx.store.write(lambda c: add_items(c, project_id, parsed))  # one transaction: all or nothing
    return {"imported": n, "gold": sum(1 for x in parsed if x["is_gold"]), **out}


def project_labels(ctx: AppContext, project_id: int, redact: bool) -> list[dict]:
    """Every label of the project as stored, personal data replaced in their payloads when asked."""
    L, U = db.labels, db.users
    with ctx.store.read() as conn:
        rows = conn.execute(
            select(
                L.c.id,
                L.c.item_id,
                L.c.assignment_id,
                U.c.username,
                L.c.payload,
                L.c.is_gold,
                L.c.correct,
                L.c.duration_ms,
                L.c.created_at,
            )
            .select_from(L.join(U, U.c.id == L.c.user_id))
            .where(L.c.project_id == project_id)
            .order_by(L.c.id)
        ).mappings()
        out = [dict(r) for r in rows]
    if redact or ctx.redact_all:
        for r in out:
            r["payload"] = redact_value(r["payload"])
    return out


def project_export(
    ctx: AppContext,
    project_id: int,
    kind: str,
    aggregate: str,
    include_gold: bool,
    redact: bool,
    with_labeler: bool = True,
    min_gold_accuracy: float = 0.0,
    weight_by_gold: bool = False,
) -> tuple[bytes, str, dict[str, str]]:
    """The project's records of ``kind`` as JSON lines: ``(body, file name, extra headers)``.
    ``with_labeler``, ``min_gold_accuracy``, ``weight_by_gold`` act as in ``feedback export``
    (labeler pseudonyms; a gold-accuracy threshold; weights); the header ``X-Export-Note`` says
    what they left out or gave, as that command's last line does, and ``X-Redacted`` what
    redaction replaced and left out."""
    proj = get_project(ctx, project_id)
    try:
        key = labeler_key(ctx.store.url) if with_labeler and aggregate == "none" else None
    except ValueError as e:  # the store's key file: the server's problem, not the request's
        raise HTTPException(500, str(e)) from None
    with ctx.store.read() as conn:
        try:
            result = export_labels(
                conn,
                project_id,
                kind,
                include_gold=include_gold,
                aggregate=aggregate,
                labeler_key=key,
                min_gold_accuracy=min_gold_accuracy or None,
                weight_by_gold=weight_by_gold,
            )
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
    recs, note = result.records, result.note()
    if with_labeler and aggregate == "none" and key is None:
        note += f"; labeler ids left out: set ${LABELER_KEY_ENV} to give them from a database URL"
    headers = {"X-Export-Note": note.removeprefix("; ")} if note else {}
    if redact or ctx.redact_all:
        recs, counts, n_equal = redact_export(recs)
        headers["X-Redacted"] = json.dumps({**dict(sorted(counts.items())), "pairs_left_out": n_equal})
    body = "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in recs)
    return body.encode(), f"{_slug(proj['name'])}-{kind}.jsonl", headers


def _slug(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in s).strip("-") or "project"
