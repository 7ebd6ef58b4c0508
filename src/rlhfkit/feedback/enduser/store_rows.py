"""The rows of the end-user projects in the feedback store, one transaction's worth each: the
projects made on first use, the one labeler account every end-user verdict is written under, a
completion's items by choice index, an item's copy in another kind's project, and a verdict written
as a label. ``FeedbackLog`` (``log.py``) calls these inside its store's transactions (``conn``).
"""

from __future__ import annotations

import secrets
import time

from rlhfkit.feedback.enduser.kinds import _INSTRUCTIONS, _TASK_TYPE, _index, _served_to


def ensure_projects(
    conn, names: dict[str, str], scale: tuple[int, int], create: bool
) -> tuple[dict[str, int], tuple[int, int] | None]:
    """The project id of each kind in ``names`` by task type, made (inactive, on ``scale``) when
    missing and ``create``; and the rating scale of a ratings project that exists already."""
    from sqlalchemy import insert, select

    from rlhfkit.feedback import db

    P = db.projects
    out, found_scale = {}, None
    for kind, name in names.items():
        ttype = _TASK_TYPE[kind]
        row = conn.execute(select(P.c.id, P.c.task_type, P.c.scale_min, P.c.scale_max).where(P.c.name == name)).first()
        if row is not None:
            if row.task_type != ttype:
                raise ValueError(f"project {name!r} exists with task type {row.task_type}, expected {ttype}")
            out[ttype] = int(row.id)
            if kind == "rating":
                found_scale = (int(row.scale_min), int(row.scale_max))
            continue
        if not create:
            continue
        out[ttype] = int(
            conn.execute(
                insert(P).values(
                    name=name,
                    task_type=ttype,
                    instructions=_INSTRUCTIONS[kind],
                    overlap=1,
                    gold_rate=0.0,
                    scale_min=scale[0],
                    scale_max=scale[1],
                    active=False,
                    n_items=0,
                    n_labels=0,
                    created_at=time.time(),
                )
            ).inserted_primary_key[0]
        )
    return out, found_scale


def enduser_account(conn) -> int:
    """The id of the ``enduser`` labeler account every end-user verdict is written under."""
    from sqlalchemy import select

    from rlhfkit.feedback import db
    from rlhfkit.feedback.auth import create_user

    name = "enduser"
    uid = conn.execute(select(db.users.c.id).where(db.users.c.username == name)).scalar()
    if uid is None:  # an account nobody can log into (random password, never shown)
        uid = create_user(conn, name, secrets.token_urlsafe(24), "labeler")
    return int(uid)


def stored_key_ids(conn, pids: list[int]) -> dict[str, int]:
    """How many stored end-user ids (of the replies and the labels of projects ``pids``) were
    hashed under each key id."""
    from sqlalchemy import select

    from rlhfkit.feedback import db

    counts: dict[str, int] = {}

    def note(user) -> None:
        if isinstance(user, str) and user.startswith("hmac:"):
            kid = user.split(":")[1] if user.count(":") == 2 else "(unnamed)"
            counts[kid] = counts.get(kid, 0) + 1

    for r in conn.execute(select(db.items.c.responses).where(db.items.c.project_id.in_(pids))):
        note(_served_to(r.responses))
    for r in conn.execute(select(db.labels.c.payload).where(db.labels.c.project_id.in_(pids))):
        note((r.payload or {}).get("end_user"))
    return counts


def completion_items(conn, project_id: int, completion_id: str) -> list[dict]:
    """The items of one completion in a project, by choice index."""
    from sqlalchemy import select

    from rlhfkit.feedback import db

    rows = (
        conn.execute(
            select(db.items)
            .where(db.items.c.project_id == project_id, db.items.c.external_id == str(completion_id))
            .order_by(db.items.c.id)
        )
        .mappings()
        .all()
    )
    return sorted((dict(r) for r in rows), key=lambda r: _index(r["responses"][0]))


def completion_item(conn, project_id: int, completion_id: str, index: int = 0) -> dict | None:
    """The item of reply ``index`` of one completion in a project, or None."""
    return next(
        (r for r in completion_items(conn, project_id, completion_id) if _index(r["responses"][0]) == index), None
    )


def write_label(conn, project_id: int, item: dict, user_id: int, body: dict, extra: dict) -> int:
    """Store a verdict on ``item`` (in screen terms with the identity order); one already
    there is replaced by a new label (a new, larger id), so stored label ids never change
    meaning."""
    from sqlalchemy import delete, insert, select, update

    from rlhfkit.feedback import db
    from rlhfkit.feedback.queue import submit_label

    A, L, P = db.assignments, db.labels, db.projects
    prev = conn.execute(
        select(L.c.id, L.c.assignment_id).where(L.c.item_id == item["id"], L.c.user_id == user_id)
    ).first()
    if prev is not None:  # a changed mind: the old verdict goes, the task is open again
        conn.execute(delete(L).where(L.c.id == prev.id))
        conn.execute(update(A).where(A.c.id == prev.assignment_id).values(status="open", finished_at=None))
        conn.execute(update(P).where(P.c.id == project_id).values(n_labels=P.c.n_labels - 1))
        aid = int(prev.assignment_id)
    else:
        order = list(range(len(item["responses"])))
        aid = int(
            conn.execute(
                insert(A).values(
                    project_id=project_id,
                    item_id=item["id"],
                    user_id=user_id,
                    display_order=order,
                    status="open",
                    created_at=time.time(),
                )
            ).inserted_primary_key[0]
        )
        conn.execute(update(db.items).where(db.items.c.id == item["id"]).values(n_assigned=db.items.c.n_assigned + 1))
    res = submit_label(conn, user_id, aid, body, duration_ms=0)
    if extra:
        payload = conn.execute(select(L.c.payload).where(L.c.id == res["label_id"])).scalar()
        conn.execute(update(L).where(L.c.id == res["label_id"]).values(payload={**payload, **extra}))
    return int(res["label_id"])


def item_copy(conn, project_id: int, completion_id: str, sources: list[dict]) -> dict:
    """The item in project ``project_id`` (another kind's) for these thumbs items (one reply, or
    a comparison's two), made on first use."""
    from rlhfkit.feedback.queue import add_items

    index = _index(sources[0]["responses"][0]) if len(sources) == 1 else 0
    item = completion_item(conn, project_id, completion_id, index)
    if item is None:
        copy = {k: sources[0][k] for k in ("prompt", "messages", "external_id")}
        copy["responses"] = [s["responses"][0] for s in sources]
        add_items(conn, project_id, [dict(copy, is_gold=False, gold=None)], source="serve")
        item = completion_item(conn, project_id, completion_id, index)
    return item
