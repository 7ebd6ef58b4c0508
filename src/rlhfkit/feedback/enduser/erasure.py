"""Erasing one end user from the end-user store (the right to erasure, GDPR art. 17).

``FeedbackLog.forget`` works out the names the person is stored under (as given, and hashed with
the key at hand) and calls ``erase`` with them; ``truncate_wal`` then empties SQLite's
write-ahead log, where the erased rows' old pages would otherwise live on.
"""

from __future__ import annotations

from rlhfkit.feedback.enduser.kinds import _served_to


def erase(store, pids: list[int], names: set[str]) -> dict:
    """Delete, in the projects ``pids`` of ``store``, every completion served to one of ``names``
    (its ``end_user``), every completion served to no one named on which they gave feedback, the
    copies of those completions, all feedback on them, and their feedback on other completions;
    the projects' counts follow and deleted rows are overwritten (SQLite ``secure_delete``).
    Returns ``{"items", "labels"}`` (completions and labels erased)."""
    from sqlalchemy import delete, select, update

    from rlhfkit.feedback import db

    I, L, A, P = db.items, db.labels, db.assignments, db.projects

    def job(conn):
        if store.is_sqlite:  # freed pages are zeroed, not left holding the erased text
            conn.exec_driver_sql("PRAGMA secure_delete=ON")
        rows = conn.execute(
            select(I.c.id, I.c.external_id, I.c.responses, I.c.project_id, I.c.is_gold).where(I.c.project_id.in_(pids))
        ).all()
        labels = conn.execute(
            select(L.c.id, L.c.item_id, L.c.payload, L.c.project_id, L.c.assignment_id, L.c.is_gold).where(
                L.c.project_id.in_(pids)
            )
        ).all()
        users_labels = [r for r in labels if (r.payload or {}).get("end_user") in names]
        by_user = {r.item_id for r in users_labels}
        erased = {
            r.external_id
            for r in rows
            if _served_to(r.responses) in names or (_served_to(r.responses) is None and r.id in by_user)
        }
        item_projects = [r for r in rows if r.external_id in erased]  # with the completions' copies
        items = {r.id for r in item_projects}
        user_label_ids = {r.id for r in users_labels}
        touched = [r for r in labels if r.item_id in items or r.id in user_label_ids]
        gone_labels = {t.id for t in touched}
        if not items and not gone_labels:
            return {"items": 0, "labels": 0}
        conn.execute(delete(L).where(L.c.id.in_(gone_labels)))
        conn.execute(delete(A).where(A.c.id.in_([t.assignment_id for t in touched])))
        for t in touched:  # the feedback left on items that stay
            if t.item_id not in items:
                conn.execute(update(I).where(I.c.id == t.item_id).values(n_assigned=I.c.n_assigned - 1))
        conn.execute(delete(A).where(A.c.item_id.in_(items)))
        conn.execute(delete(I).where(I.c.id.in_(items)))
        for pid in pids:  # the denormalised counts: non-gold items and their labels
            n_items = sum(1 for r in item_projects if r.project_id == pid and not r.is_gold)
            n_labels = sum(1 for t in touched if t.project_id == pid and not t.is_gold)
            if n_items or n_labels:
                conn.execute(
                    update(P)
                    .where(P.c.id == pid)
                    .values(n_items=P.c.n_items - n_items, n_labels=P.c.n_labels - n_labels)
                )
        return {"items": len(erased), "labels": len(gone_labels)}

    return store.write(job)


def truncate_wal(store) -> bool | None:
    """Checkpoint SQLite's write-ahead log and truncate it to 0 bytes (the erased rows' old
    pages live there until then); False when another connection (a running server) keeps
    it from finishing, None for other databases."""
    if not store.is_sqlite:
        return None
    raw = store.engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        busy = cur.fetchone()[0]
        cur.close()
    finally:
        raw.close()
    return not busy
