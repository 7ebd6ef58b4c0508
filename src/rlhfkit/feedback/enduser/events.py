"""End users' verdicts as a learner reads them: ``FeedbackEvent``, ``feedback_events`` and
``last_event_id`` (the reading side of the end-user store; ``log.FeedbackLog`` writes)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from rlhfkit.feedback.enduser.kinds import (
    _KIND_OF_TYPE,
    _TASK_TYPE,
    _index,
    _served_to,
    project_names,
)
from rlhfkit.feedback.enduser.log import FeedbackLog
from rlhfkit.feedback.tasks import render_prompt


@dataclass(frozen=True)
class FeedbackEvent:
    """One end-user verdict, as a learner reads it (``feedback_events``).

    ``id``: the label id; ids only grow (a changed verdict is a new event with a new id, the old
    one is gone), so "every event with id <= X" is a snapshot a learner can name and read again.
    ``kind``: ``thumbs`` | ``rating`` | ``edit`` | ``choice``. ``messages``: the conversation the
    reply answered (as stored: redacted under ``redact``, empty turns as "(empty message)");
    ``prompt`` the same rendered as exports render it. ``responses``: the reply judged (one), or
    the two replies of a choice; ``versions`` the policy version that wrote each (None for
    completions stored without one); ``choice_indices`` which choices of the completion they are.
    ``value``: thumbs ``True`` (up) / ``False``; rating the integer, on ``scale``; edit the better
    reply; choice the index (0 or 1) into ``responses`` of the reply picked. ``reason``: the user's
    words, if any. ``end_user``: who gave it (the id sent as ``user``, an HMAC under ``redact``;
    the completion's end user when the feedback named none). ``created_at``: when it was stored
    (seconds since the epoch)."""

    id: int
    kind: str
    completion_id: str
    messages: tuple
    prompt: str
    responses: tuple
    versions: tuple
    choice_indices: tuple
    value: Any
    reason: str | None
    end_user: str | None
    created_at: float
    scale: tuple | None = None

    @property
    def response(self) -> str:
        """The reply judged (the first of a choice's two)."""
        return self.responses[0]

    @property
    def version(self) -> str | None:
        return self.versions[0]

    def to_dict(self) -> dict:
        """A JSON-ready dict (lists for the tuples)."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _event_source(source: Any, prefix: str):
    """``(connection context, project ids by task type or None to look up, owned store or None)``."""
    from rlhfkit.feedback import db

    if isinstance(source, FeedbackLog):
        return source.store.read(), source._pids, None
    if isinstance(source, db.Store):
        return source.read(), None, None
    if isinstance(source, str):
        store = db.Store(source)
        return store.read(), None, store
    return _Borrowed(source), None, None  # a SQLAlchemy connection the caller holds


class _Borrowed:
    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        return self.conn

    def __exit__(self, *exc):
        return False


def _project_ids(conn, prefix: str) -> dict[int, str]:
    """``{project id: task type}`` of the end-user projects of ``prefix`` that exist."""
    from sqlalchemy import select

    from rlhfkit.feedback import db

    names = project_names(prefix)
    rows = conn.execute(
        select(db.projects.c.id, db.projects.c.name, db.projects.c.task_type).where(
            db.projects.c.name.in_(list(names.values()))
        )
    ).all()
    kind_of_name = {name: kind for kind, name in names.items()}
    # a project of the right name and another task type is not end-user feedback (FeedbackLog refuses it)
    return {int(r.id): r.task_type for r in rows if _TASK_TYPE[kind_of_name[r.name]] == r.task_type}


def feedback_events(
    source: Any, after_id: int = 0, until_id: int | None = None, *, prefix: str = "serve", limit: int | None = None
) -> list[FeedbackEvent]:
    """Every end-user verdict with ``after_id < id <= until_id`` (``until_id`` None: no bound),
    ordered by id, at most ``limit``. ``source``: a ``FeedbackLog``, a ``feedback.db.Store``, a
    database URL / SQLite path, or an open SQLAlchemy connection (read in its transaction).

    A learner takes a snapshot with ``until_id = last_event_id(...)`` and resumes with
    ``after_id`` = the last id it used: ids only grow, so nothing is read twice or missed. What
    ``forget`` erased is gone from later reads (a snapshot the learner saved keeps it: honour
    erasure there too). Ids are assigned in commit order when one process writes the end-user
    projects (one ``rlhfkit serve``); with several serving processes on one PostgreSQL database
    an id can become visible after a larger one, so read up to an id older than the writers'
    slowest transaction."""
    from sqlalchemy import select

    from rlhfkit.feedback import db

    ctx, _, owned = _event_source(source, prefix)
    try:
        with ctx as conn:
            pids = _project_ids(conn, prefix)
            if not pids:
                return []
            L, I, P = db.labels, db.items, db.projects
            q = (
                select(
                    L.c.id,
                    L.c.project_id,
                    L.c.payload,
                    L.c.created_at,
                    I.c.external_id,
                    I.c.prompt,
                    I.c.messages,
                    I.c.responses,
                    P.c.scale_min,
                    P.c.scale_max,
                )
                .select_from(L.join(I, I.c.id == L.c.item_id).join(P, P.c.id == L.c.project_id))
                .where(L.c.project_id.in_(list(pids)), L.c.id > int(after_id))
                .order_by(L.c.id)
            )
            if until_id is not None:
                q = q.where(L.c.id <= int(until_id))
            if limit is not None:
                q = q.limit(int(limit))
            rows = conn.execute(q).all()
    finally:
        if owned is not None:
            owned.close()
    out = []
    for r in rows:
        kind = _KIND_OF_TYPE[pids[r.project_id]]
        p = r.payload or {}
        responses = list(r.responses or [])
        value = {
            "thumbs": lambda: bool(p["label"]),
            "rating": lambda: int(p["rating"]),
            "edit": lambda: p["rewrite"],
            "choice": lambda: {"first": 0, "second": 1}.get(p.get("verdict"), p.get("verdict")),
        }[kind]()
        out.append(
            FeedbackEvent(
                id=int(r.id),
                kind=kind,
                completion_id=r.external_id,
                messages=tuple(r.messages or ()),
                prompt=render_prompt(r.prompt, r.messages),
                responses=tuple(x["text"] for x in responses),
                versions=tuple(x.get("version") for x in responses),
                choice_indices=tuple(_index(x) for x in responses),
                value=value,
                reason=p.get("reason") or p.get("comment"),
                end_user=p.get("end_user") or _served_to(responses),
                created_at=float(r.created_at),
                scale=(int(r.scale_min), int(r.scale_max)) if kind == "rating" else None,
            )
        )
    return out


def last_event_id(source: Any, *, prefix: str = "serve") -> int:
    """The largest event id stored now (0 when there is none): the ``until_id`` of a snapshot."""
    from sqlalchemy import func, select

    from rlhfkit.feedback import db

    ctx, _, owned = _event_source(source, prefix)
    try:
        with ctx as conn:
            pids = _project_ids(conn, prefix)
            if not pids:
                return 0
            return int(
                conn.execute(select(func.max(db.labels.c.id)).where(db.labels.c.project_id.in_(list(pids)))).scalar()
                or 0
            )
    finally:
        if owned is not None:
            owned.close()
