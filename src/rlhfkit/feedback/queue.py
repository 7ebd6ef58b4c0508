"""Queues: which task a labeler gets next, submitting and skipping. Every function here takes a
connection inside a write transaction (the group-commit writer) and is race-free:

- an item is handed out by ``UPDATE items SET n_assigned = n_assigned + 1 WHERE id = :id AND
  n_assigned < overlap`` (a conditional update: two claimants can never both pass the cap), then
  an assignment row is inserted under the unique constraint (item, labeler), so a labeler never
  gets the same item twice and the label table's own unique (item, labeler) makes a duplicated
  label impossible;
- open assignments are handed back first, so reloading the page gives the same task;
- gold items (known answers) are mixed in with probability ``gold_rate`` and do not count
  towards the overlap; a labeler with no real work left gets no gold either;
- a skipped task frees its slot (``n_assigned - 1``) for another labeler, never for the skipper;
- abandoned tasks are reclaimed: an open (regular) assignment older than the lease (``lease_s``,
  default 30 min) is marked ``expired`` and its slot handed to the next labeler who asks and has
  never had that item (labeled, skipped or open) -- the slot moves, ``n_assigned`` is unchanged.
  The old holder's late submit answers 409. Expiry is lazy: a task past its lease stays open (and
  submittable) until someone else actually needs it.

Every state change is a conditional UPDATE on the row (``... AND status = 'open'``) checked by its
row count, so two writers -- two server processes on PostgreSQL, where READ COMMITTED re-checks
the condition after waiting for the row lock -- can never both close, skip or reclaim one task.

Search order: the most-assigned items first (finish items to the overlap before opening new
ones, so agreement can be measured early), then oldest first. Each overlap level is one index
range ``(project_id, is_gold, n_assigned, id)``, so the search stays fast however many items are done.
"""

from __future__ import annotations

import random
import time
from typing import Any, NamedTuple

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from . import db
from .db import from_json, json_decoded, raw, to_json
from .tasks import LabelError, canonical_label, grade, screen_keys

__all__ = [
    "NotFound",
    "Conflict",
    "next_task",
    "get_task",
    "submit_label",
    "skip_task",
    "task_view",
    "add_items",
    "release_open_tasks",
    "may_label",
    "DEFAULT_LEASE_S",
]

DEFAULT_LEASE_S = 30 * 60.0  # an open task older than this may be reassigned

P, I, A, L = db.projects, db.items, db.assignments, db.labels


class NotFound(LookupError):
    """No such task for this user (also for other people's tasks: existence is not revealed)."""


class Conflict(RuntimeError):
    """The task is not open (already skipped)."""


# Hot-path statements: plain SQL, the same text on SQLite and PostgreSQL, run through ``db.raw``
# (see there: SQLAlchemy's execution layer would cost more than the database work).
# a project with members is offered only to them; one with none to every labeler (two probes of
# the members' primary key per project)
_MEMBER_OK = (
    "(NOT EXISTS (SELECT 1 FROM project_members m WHERE m.project_id = projects.id) "
    "OR EXISTS (SELECT 1 FROM project_members m WHERE m.project_id = projects.id AND m.user_id = :u))"
)
_PROJECTS = f"SELECT id, task_type, overlap, gold_rate FROM projects WHERE active = :t AND {_MEMBER_OK} ORDER BY id"
_PROJECT = f"SELECT id, task_type, overlap, gold_rate FROM projects WHERE active = :t AND id = :p AND {_MEMBER_OK}"
# the labeler must still be active when the claim runs, not only when the request's session was
# looked up: a deactivation hands back every open task, and a claim in flight must not take a new
# one after it. One writer runs jobs one after another, so a plain read sees a deactivation
# committed before; on PostgreSQL FOR SHARE also makes a claim in another server process wait for
# a deactivation still in flight (its UPDATE of the user row) and then read its outcome.
_ACTIVE = {
    "sqlite": "SELECT 1 FROM users WHERE id = :u AND active = :t",
    "postgresql": "SELECT 1 FROM users WHERE id = :u AND active = :t FOR SHARE",
}
_OPEN = "SELECT id FROM assignments WHERE user_id = :u AND project_id = :p AND status = 'open' ORDER BY id LIMIT 1"
_CANDIDATES = (
    "SELECT i.id, i.responses FROM items i WHERE i.project_id = :p AND i.is_gold = :g AND i.n_assigned = :lvl "
    "AND NOT EXISTS (SELECT 1 FROM assignments a WHERE a.item_id = i.id AND a.user_id = :u) "
    "ORDER BY i.id LIMIT 4"
)
_GOLD = (
    "SELECT i.id, i.responses FROM items i WHERE i.project_id = :p AND i.is_gold = :g "
    "AND NOT EXISTS (SELECT 1 FROM assignments a WHERE a.item_id = i.id AND a.user_id = :u) "
    "ORDER BY i.n_assigned, i.id LIMIT 4"
)
# abandoned tasks: open regular assignments past their lease (index ix_assignments_open_lease), on
# items this labeler never had
_EXPIRED = (
    "SELECT a.id, a.item_id, i.responses FROM assignments a JOIN items i ON i.id = a.item_id "
    "WHERE a.project_id = :p AND a.status = 'open' AND a.created_at < :cutoff AND i.is_gold = :g "
    "AND NOT EXISTS (SELECT 1 FROM assignments b WHERE b.item_id = a.item_id AND b.user_id = :u) "
    "ORDER BY a.created_at LIMIT 4"
)
_EXPIRE = "UPDATE assignments SET status = 'expired', finished_at = :t WHERE id = :a AND status = 'open'"
_CLAIM = "UPDATE items SET n_assigned = n_assigned + 1 WHERE id = :i AND n_assigned < :cap"
_INSERT_ASSIGNMENT = (
    "INSERT INTO assignments (project_id, item_id, user_id, display_order, status, created_at) "
    "VALUES (:p, :i, :u, :o, 'open', :t) RETURNING id"
)
_USER_DONE = "SELECT count(*) FROM assignments WHERE user_id = :u AND project_id = :p AND status = 'done'"
_TASK_COLS = (
    "id",
    "user_id",
    "status",
    "display_order",
    "item_id",
    "created_at",
    "prompt",
    "messages",
    "responses",
    "is_gold",
    "gold",
    "project_id",
    "project_name",
    "task_type",
    "instructions",
    "scale_min",
    "scale_max",
    "overlap",
    "n_items",
    "n_labels",
)
_TASK = (
    "SELECT a.id, a.user_id, a.status, a.display_order, a.item_id, a.created_at, i.prompt, i.messages, "
    "i.responses, i.is_gold, i.gold, p.id, p.name, p.task_type, "
    "p.instructions, p.scale_min, p.scale_max, p.overlap, p.n_items, p.n_labels "
    "FROM assignments a JOIN items i ON i.id = a.item_id JOIN projects p ON p.id = a.project_id "
    "WHERE a.id = :a"
)
_LABEL_OF = "SELECT id FROM labels WHERE assignment_id = :a"
_INSERT_LABEL = (
    "INSERT INTO labels (assignment_id, project_id, item_id, user_id, payload, is_gold, correct, duration_ms, "
    "created_at) VALUES (:a, :p, :i, :u, :payload, :g, :correct, :d, :t) RETURNING id"
)
_DONE = "UPDATE assignments SET status = 'done', finished_at = :t WHERE id = :a AND status = 'open'"
_STATUS = "SELECT status FROM assignments WHERE id = :a"
_COUNT_LABEL = "UPDATE projects SET n_labels = n_labels + 1 WHERE id = :p"
_NO_CAP = 2**31 - 1


class _Project(NamedTuple):
    id: int
    task_type: str
    overlap: int
    gold_rate: float


def _load_task(conn: Connection, assignment_id: int) -> dict | None:
    row = raw(conn, _TASK, {"a": assignment_id}).fetchone()
    if row is None:
        return None
    d = dict(zip(_TASK_COLS, row))
    dec = json_decoded(conn)
    for k in ("display_order", "messages", "responses", "gold"):
        d[k] = from_json(d[k], dec)
    d["is_gold"] = bool(d["is_gold"])
    return d


def _assign(
    conn: Connection, item_id: int, responses_json: Any, user_id: int, project: _Project, rng: random.Random, now: float
) -> int:
    order = list(range(len(from_json(responses_json, json_decoded(conn)))))
    if project.task_type in ("pairwise", "ranking"):
        rng.shuffle(order)  # left/right (and ranking) order randomised per task
    return raw(
        conn, _INSERT_ASSIGNMENT, {"p": project.id, "i": item_id, "u": user_id, "o": to_json(order), "t": now}
    ).fetchone()[0]


def _claim(
    conn: Connection,
    item_id: int,
    responses_json: Any,
    user_id: int,
    project: _Project,
    is_gold: bool,
    rng: random.Random,
    now: float,
) -> int | None:
    cap = _NO_CAP if is_gold else project.overlap  # gold items do not count towards the overlap
    if raw(conn, _CLAIM, {"i": item_id, "cap": cap}).rowcount != 1:
        return None
    return _assign(conn, item_id, responses_json, user_id, project, rng, now)


def _reclaim(
    conn: Connection, user_id: int, project: _Project, rng: random.Random, now: float, lease_s: float
) -> int | None:
    """Take over an abandoned task: expire the old assignment, give its slot to ``user_id``."""
    for old_id, item_id, resp in raw(
        conn, _EXPIRED, {"p": project.id, "cutoff": now - lease_s, "g": False, "u": user_id}
    ).fetchall():
        if raw(conn, _EXPIRE, {"a": old_id, "t": now}).rowcount == 1:  # else submitted/taken meanwhile
            return _assign(conn, item_id, resp, user_id, project, rng, now)
    return None


def _pick(
    conn: Connection, user_id: int, project: _Project, rng: random.Random, now: float, lease_s: float | None
) -> int | None:
    pid = project.id
    if project.gold_rate > 0 and rng.random() < project.gold_rate:
        for item_id, resp in raw(conn, _GOLD, {"p": pid, "g": True, "u": user_id}).fetchall():
            a = _claim(conn, item_id, resp, user_id, project, True, rng, now)
            if a is not None:
                return a
    if lease_s is not None and lease_s > 0:  # abandoned tasks first: they are the oldest work
        a = _reclaim(conn, user_id, project, rng, now, lease_s)
        if a is not None:
            return a
    for level in range(project.overlap - 1, -1, -1):
        for item_id, resp in raw(conn, _CANDIDATES, {"p": pid, "g": False, "lvl": level, "u": user_id}).fetchall():
            a = _claim(conn, item_id, resp, user_id, project, False, rng, now)
            if a is not None:
                return a
    return None


_rng = random.Random()


def next_task(
    conn: Connection,
    user_id: int,
    project_id: int | None = None,
    rng: random.Random | None = None,
    *,
    now: float | None = None,
    lease_s: float | None = DEFAULT_LEASE_S,
) -> dict | None:
    """The labeler's next task (their open one if any, else an abandoned one past its lease, else
    a newly assigned one) as the view sent to the client; None when there is nothing left for
    them (or they are no longer active). ``now``: the clock (default ``time.time()``);
    ``lease_s``: None or 0 never reclaims."""
    rng = rng or _rng
    now = time.time() if now is None else now
    if raw(conn, _ACTIVE.get(conn.dialect.name, _ACTIVE["sqlite"]), {"u": user_id, "t": True}).fetchone() is None:
        return None  # deactivated since the request was let in
    if project_id is None:
        rows = raw(conn, _PROJECTS, {"t": True, "u": user_id}).fetchall()
    else:
        rows = raw(conn, _PROJECT, {"t": True, "p": project_id, "u": user_id}).fetchall()
    for project in map(_Project._make, rows):
        a = raw(conn, _OPEN, {"u": user_id, "p": project.id}).fetchone()
        a = a[0] if a else _pick(conn, user_id, project, rng, now, lease_s)
        if a is not None:
            return get_task(conn, user_id, a)
    return None


def get_task(conn: Connection, user_id: int, assignment_id: int) -> dict:
    row = _load_task(conn, assignment_id)
    if row is None or row["user_id"] != user_id:
        raise NotFound("no such task")
    return task_view(conn, row)


def task_view(conn: Connection, row: dict) -> dict:
    """What a labeler sees: responses in this task's screen order under keys A, B, ... with no
    model names and no gold flag."""
    order = row["display_order"]
    keys = screen_keys(len(order))
    responses = row["responses"]
    user_done = raw(conn, _USER_DONE, {"u": row["user_id"], "p": row["project_id"]}).fetchone()[0]
    return {
        "task_id": row["id"],
        "project_id": row["project_id"],
        "project_name": row["project_name"],
        "type": row["task_type"],
        "status": row["status"],
        "instructions": row["instructions"],
        "prompt": row["prompt"],
        "messages": row["messages"],
        "responses": [{"key": k, "text": responses[i]["text"]} for k, i in zip(keys, order)],
        "scale": {"min": row["scale_min"], "max": row["scale_max"]},
        "progress": {
            "user_done": user_done,
            "project_done": row["n_labels"],
            "project_total": row["n_items"] * row["overlap"],
        },
    }


def submit_label(
    conn: Connection,
    user_id: int,
    assignment_id: int,
    body: dict,
    duration_ms: int | None = None,
    *,
    now: float | None = None,
) -> dict:
    """Store a verdict. Idempotent: submitting again for a task already done returns the stored
    label with ``duplicate: true`` (a client retrying after a lost reply never duplicates)."""
    row = _load_task(conn, assignment_id)
    if row is None or row["user_id"] != user_id:
        raise NotFound("no such task")
    if row["status"] != "open":
        return _closed(conn, assignment_id, row["status"], row["project_id"])
    payload = canonical_label(row["task_type"], body, row["display_order"], (row["scale_min"], row["scale_max"]))
    t = time.time() if now is None else now
    if duration_ms is None:
        duration_ms = int((t - row["created_at"]) * 1000)
    correct = grade(row["task_type"], payload, row["gold"]) if row["is_gold"] else None
    # close the task first, conditionally: it locks the row, and a concurrent submit / reclaim in
    # another process either already closed it (0 rows) or waits for this transaction
    if raw(conn, _DONE, {"a": assignment_id, "t": t}).rowcount != 1:
        return _closed(conn, assignment_id, raw(conn, _STATUS, {"a": assignment_id}).fetchone()[0], row["project_id"])
    lid = raw(
        conn,
        _INSERT_LABEL,
        {
            "a": assignment_id,
            "p": row["project_id"],
            "i": row["item_id"],
            "u": user_id,
            "payload": to_json(payload),
            "g": row["is_gold"],
            "correct": correct,
            "d": max(0, int(duration_ms)),
            "t": t,
        },
    ).fetchone()[0]
    if not row["is_gold"]:
        raw(conn, _COUNT_LABEL, {"p": row["project_id"]})
    return {"label_id": lid, "task_id": assignment_id, "duplicate": False, "project_id": row["project_id"]}


def _closed(conn: Connection, assignment_id: int, status: str, project_id: int) -> dict:
    """The answer to a submit on a task that is no longer open."""
    if status == "done":  # a retried submit: the stored label
        lid = raw(conn, _LABEL_OF, {"a": assignment_id}).fetchone()[0]
        return {"label_id": lid, "task_id": assignment_id, "duplicate": True, "project_id": project_id}
    if status == "expired":
        raise Conflict(f"task {assignment_id} expired (not done within its lease) and was given to another labeler")
    raise Conflict(f"task {assignment_id} was {status}")


def skip_task(conn: Connection, user_id: int, assignment_id: int, *, now: float | None = None) -> dict:
    row = conn.execute(select(A.c.user_id, A.c.status, A.c.item_id).where(A.c.id == assignment_id)).first()
    if row is None or row.user_id != user_id:
        raise NotFound("no such task")
    status = row.status
    if status == "open":
        t = time.time() if now is None else now
        res = conn.execute(
            update(A).where(A.c.id == assignment_id, A.c.status == "open").values(status="skipped", finished_at=t)
        )
        if res.rowcount == 1:
            conn.execute(update(I).where(I.c.id == row.item_id).values(n_assigned=I.c.n_assigned - 1))
            return {"task_id": assignment_id, "status": "skipped"}
        status = conn.execute(select(A.c.status).where(A.c.id == assignment_id)).scalar()  # lost a race
    if status == "skipped":
        return {"task_id": assignment_id, "status": "skipped"}
    raise Conflict(f"task {assignment_id} is already {status}")


def release_open_tasks(
    conn: Connection, user_id: int, project_id: int | None = None, *, now: float | None = None
) -> int:
    """Hand back the open tasks of ``user_id`` (in ``project_id``, or everywhere): each becomes
    ``released`` and its slot free for another labeler at once (a deactivated labeler, or one
    taken off a project, is not coming back for it). Their late submit answers 409."""
    t = time.time() if now is None else now
    q = select(A.c.id, A.c.item_id).where(A.c.user_id == user_id, A.c.status == "open")
    if project_id is not None:
        q = q.where(A.c.project_id == project_id)
    n = 0
    for a_id, item_id in conn.execute(q).all():
        res = conn.execute(
            update(A).where(A.c.id == a_id, A.c.status == "open").values(status="released", finished_at=t)
        )
        if res.rowcount == 1:
            conn.execute(update(I).where(I.c.id == item_id).values(n_assigned=I.c.n_assigned - 1))
            n += 1
    return n


def may_label(conn: Connection, user_id: int, project_id: int) -> bool:
    """Whether the project is active and offered to the user (a member, or it has no members)."""
    return raw(conn, _PROJECT, {"t": True, "p": project_id, "u": user_id}).fetchone() is not None


def add_items(conn: Connection, project_id: int, parsed: list[dict], source: str = "import") -> int:
    """Insert validated items (``tasks.parse_items``) into a project, in the caller's transaction."""
    if not parsed:
        return 0
    t = time.time()
    conn.execute(insert(I), [dict(p, project_id=project_id, n_assigned=0, source=source, created_at=t) for p in parsed])
    n_regular = sum(1 for p in parsed if not p["is_gold"])
    conn.execute(update(P).where(P.c.id == project_id).values(n_items=P.c.n_items + n_regular))
    return len(parsed)


LabelError = LabelError  # re-exported for callers catching queue errors
