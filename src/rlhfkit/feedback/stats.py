"""The admin dashboard's numbers, computed from the stored labels: progress, per-labeler
throughput and gold accuracy, and agreement (Cohen's kappa per labeler pair, Krippendorff's alpha
over everyone)."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict

from sqlalchemy import case, func, select
from sqlalchemy.engine import Connection

from . import db
from .agreement import krippendorff_alpha, pairwise_kappas, units_from_labels
from .tasks import category

__all__ = ["project_dashboard", "overview", "gold_answers"]

ALPHA_LEVEL = {"pairwise": "nominal", "ranking": "nominal", "thumbs": "nominal", "rating": "ordinal"}


def _nan_to_none(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def overview(conn: Connection) -> list[dict]:
    """One line per project: size and progress."""
    P, A = db.projects, db.assignments
    status = defaultdict(dict)
    for pid, st, n in conn.execute(
        select(A.c.project_id, A.c.status, func.count()).group_by(A.c.project_id, A.c.status)
    ):
        status[pid][st] = n
    out = []
    for p in conn.execute(select(P).order_by(P.c.id)).mappings():
        total = p["n_items"] * p["overlap"]
        out.append(
            {
                "id": p["id"],
                "name": p["name"],
                "type": p["task_type"],
                "active": p["active"],
                "overlap": p["overlap"],
                "gold_rate": p["gold_rate"],
                "items": p["n_items"],
                "labels": p["n_labels"],
                "required": total,
                "percent": round(100.0 * p["n_labels"] / total, 1) if total else 0.0,
                "open": status[p["id"]].get("open", 0),
                "skipped": status[p["id"]].get("skipped", 0),
            }
        )
    return out


def gold_answers(conn: Connection, project_id: int) -> dict[int, tuple[int, int]]:
    """``{user id: (correct, answered)}`` over a project's labels on gold items: the counts behind
    the dashboard's gold accuracy per labeler."""
    L = db.labels
    q = (
        select(L.c.user_id, func.count(), func.sum(case((L.c.correct == True, 1), else_=0)))  # noqa: E712
        .where(L.c.project_id == project_id, L.c.is_gold == True)  # noqa: E712
        .group_by(L.c.user_id)
    )
    return {int(uid): (int(correct or 0), int(n)) for uid, n, correct in conn.execute(q)}


def project_dashboard(conn: Connection, project_id: int) -> dict:
    P, L, U, I = db.projects, db.labels, db.users, db.items
    p = conn.execute(select(P).where(P.c.id == project_id)).mappings().first()
    if p is None:
        raise LookupError(f"no project {project_id}")
    ttype = p["task_type"]
    n_gold = conn.execute(
        select(func.count()).select_from(I).where(I.c.project_id == project_id, I.c.is_gold == True)  # noqa: E712
    ).scalar()
    rows = list(
        conn.execute(
            select(
                L.c.item_id,
                L.c.user_id,
                U.c.username,
                L.c.payload,
                L.c.is_gold,
                L.c.correct,
                L.c.duration_ms,
                L.c.created_at,
            )
            .select_from(L.join(U, U.c.id == L.c.user_id))
            .where(L.c.project_id == project_id)
        ).mappings()
    )

    per: dict = defaultdict(
        lambda: {"labels": 0, "gold": 0, "gold_correct": 0, "durations": [], "first": math.inf, "last": -math.inf}
    )
    for r in rows:
        s = per[r["username"]]
        s["labels"] += 1
        s["first"] = min(s["first"], r["created_at"])
        s["last"] = max(s["last"], r["created_at"])
        if r["duration_ms"] is not None:
            s["durations"].append(r["duration_ms"])
        if r["is_gold"]:
            s["gold"] += 1
            s["gold_correct"] += bool(r["correct"])
    labelers = []
    for name, s in sorted(per.items()):
        span_h = max(s["last"] - s["first"], 60.0) / 3600.0  # at least a minute: no infinite rates
        labelers.append(
            {
                "username": name,
                "labels": s["labels"],
                "per_hour": round(s["labels"] / span_h, 1),
                "median_seconds": round(statistics.median(s["durations"]) / 1000.0, 1) if s["durations"] else None,
                "gold": s["gold"],
                "gold_correct": s["gold_correct"],
                "gold_accuracy": round(s["gold_correct"] / s["gold"], 3) if s["gold"] else None,
            }
        )

    agreement = {
        "measured": ttype in ALPHA_LEVEL,
        "level": ALPHA_LEVEL.get(ttype),
        "alpha": None,
        "kappas": [],
        "items_multi": 0,
    }
    if ttype in ALPHA_LEVEL:
        triples = [(r["item_id"], r["username"], category(ttype, r["payload"])) for r in rows]
        units = units_from_labels(triples)
        agreement["items_multi"] = sum(1 for u in units if len(u) >= 2)
        agreement["alpha"] = _nan_to_none(krippendorff_alpha(units, ALPHA_LEVEL[ttype]))
        agreement["kappas"] = [dict(k, kappa=_nan_to_none(k["kappa"])) for k in pairwise_kappas(triples)]

    total = p["n_items"] * p["overlap"]
    return {
        "project": {
            "id": p["id"],
            "name": p["name"],
            "type": ttype,
            "overlap": p["overlap"],
            "gold_rate": p["gold_rate"],
            "instructions": p["instructions"],
            "active": p["active"],
            "scale_min": p["scale_min"],
            "scale_max": p["scale_max"],
        },
        "progress": {
            "items": p["n_items"],
            "gold_items": n_gold,
            "required": total,
            "labels": p["n_labels"],
            "gold_labels": sum(1 for r in rows if r["is_gold"]),
            "percent": round(100.0 * p["n_labels"] / total, 1) if total else 0.0,
        },
        "labelers": labelers,
        "agreement": agreement,
    }
