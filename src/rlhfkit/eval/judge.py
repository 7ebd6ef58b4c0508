"""People as the judge: comparison tasks in the feedback app, and their verdicts read back.

``create_comparison_project`` puts one pairwise item per prompt into a new feedback project
(``rlhfkit.feedback``: SQLite file or PostgreSQL URL) with the two responses tagged by model name
(``responses[i].model``, hidden from labelers); the app shows them in a random left/right order
per task. ``people_outcomes`` reads the stored labels back as, per label, 1 (the policy's response
won), 0 (lost) or 1/2 (``tie``; ``both_bad`` also counts as a tie unless ``both_bad="drop"``), so
``winrate.win_rate`` gives the human win rate with its bootstrap interval. ``people_battles`` gives
the same labels as leaderboard battles, for projects comparing more than two models.

Only the feedback package's public pieces are used: ``db.Store`` and its tables, ``tasks.parse_items``
and ``queue.add_items`` (the same path as ``rlhfkit feedback import``).
"""

from __future__ import annotations

import random
import time
from typing import Sequence

__all__ = ["create_comparison_project", "people_outcomes", "people_battles", "people_win_rate"]

INSTRUCTIONS = (
    "Read the prompt and both responses. Pick the better response (A or B), or tie / "
    "both bad. The order is random and the models are hidden."
)


def create_comparison_project(
    db_url: str,
    name: str,
    prompts: Sequence[str],
    responses: dict[str, Sequence[str]],
    *,
    overlap: int = 1,
    instructions: str = INSTRUCTIONS,
    seed: int = 0,
) -> dict:
    """A new pairwise project ``name`` with one item per prompt comparing the responses of the two
    models in ``responses`` (``{model_name: [response per prompt]}``; with more than two models,
    one item per prompt and pair). The stored response order is shuffled per item (seeded) on top
    of the app's own random display order. Returns ``{"project_id", "name", "items"}``.
    Raises ``ValueError`` if the project exists."""
    from sqlalchemy import insert, select

    from rlhfkit.feedback import db
    from rlhfkit.feedback.queue import add_items
    from rlhfkit.feedback.tasks import parse_items

    names = list(responses)
    if len(names) < 2:
        raise ValueError("a comparison needs responses from at least two models")
    for m in names:
        if len(responses[m]) != len(prompts):
            raise ValueError(f"model {m!r} has {len(responses[m])} responses for {len(prompts)} prompts")
    rng = random.Random(seed)
    rows = []
    for i, p in enumerate(prompts):
        for x in range(len(names)):
            for y in range(x + 1, len(names)):
                pair = [names[x], names[y]]
                rng.shuffle(pair)
                texts = [responses[m][i] if responses[m][i].strip() else "(empty response)" for m in pair]
                rows.append(
                    {
                        "prompt": p,
                        "responses": [{"text": t, "model": m} for t, m in zip(texts, pair)],
                        "id": f"{i}:{pair[0]}:{pair[1]}",
                    }
                )
    parsed = parse_items(rows, "pairwise")
    store = db.Store(db_url)
    try:

        def job(conn):
            if conn.execute(select(db.projects.c.id).where(db.projects.c.name == name)).first():
                raise ValueError(f"a feedback project named {name!r} exists")
            pid = int(
                conn.execute(
                    insert(db.projects).values(
                        name=name,
                        task_type="pairwise",
                        instructions=instructions,
                        overlap=int(overlap),
                        gold_rate=0.0,
                        scale_min=1,
                        scale_max=7,
                        active=True,
                        n_items=0,
                        n_labels=0,
                        created_at=time.time(),
                    )
                ).inserted_primary_key[0]
            )
            return pid, add_items(conn, pid, parsed, source="eval")

        pid, n = store.write(job)
    finally:
        store.close()
    return {"project_id": pid, "name": name, "items": n}


def _labels(db_url: str, name: str) -> list[dict]:
    from sqlalchemy import select

    from rlhfkit.feedback import db

    store = db.Store(db_url)
    try:
        with store.read() as conn:
            proj = conn.execute(select(db.projects).where(db.projects.c.name == name)).mappings().first()
            if proj is None:
                raise LookupError(f"no feedback project named {name!r} in {db_url}")
            if proj["task_type"] != "pairwise":
                raise ValueError(f"project {name!r} holds {proj['task_type']} tasks, not pairwise comparisons")
            L, I = db.labels, db.items
            rows = (
                conn.execute(
                    select(L.c.payload, I.c.responses, I.c.external_id, L.c.user_id, L.c.item_id)
                    .select_from(L.join(I, I.c.id == L.c.item_id))
                    .where(L.c.project_id == proj["id"], L.c.is_gold == False)  # noqa: E712
                    .order_by(L.c.id)
                )
                .mappings()
                .all()
            )
            return [dict(r) for r in rows]
    finally:
        store.close()


def people_battles(db_url: str, name: str, both_bad: str = "tie") -> list[tuple[str, str, float, int]]:
    """The project's human labels as ``(model_a, model_b, outcome, item)`` battles (outcome 1: a
    won); the labels of one item (several people with overlap) are one bootstrap cluster."""
    if both_bad not in ("tie", "drop"):
        raise ValueError("both_bad must be 'tie' or 'drop'")
    out = []
    for r in _labels(db_url, name):
        models = [x.get("model") for x in r["responses"]]
        if any(m is None for m in models):
            continue  # an item imported without model names
        v = r["payload"]["verdict"]
        if v == "both_bad" and both_bad == "drop":
            continue
        y = {"first": 1.0, "second": 0.0}.get(v, 0.5)
        out.append((models[0], models[1], y, int(r["item_id"])))
    return out


def people_outcomes(
    db_url: str,
    name: str,
    policy: str = "policy",
    reference: str = "reference",
    both_bad: str = "tie",
    with_items: bool = False,
):
    """Per label: 1 if ``policy``'s response was preferred to ``reference``'s, 0 if not, 1/2 for a
    tie; with ``with_items`` also the item of each label: ``(outcomes, items)``."""
    out, items = [], []
    for a, b, y, item in people_battles(db_url, name, both_bad):
        if (a, b) == (policy, reference):
            out.append(y)
            items.append(item)
        elif (a, b) == (reference, policy):
            out.append(1.0 - y)
            items.append(item)
    return (out, items) if with_items else out


def people_win_rate(
    db_url: str,
    name: str,
    policy: str = "policy",
    reference: str = "reference",
    both_bad: str = "tie",
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """``winrate.win_rate`` of the human verdicts stored so far (``n`` = labels read)."""
    from .winrate import win_rate

    outcomes, items = people_outcomes(db_url, name, policy, reference, both_bad, with_items=True)
    # with overlap one item's labels move together: the bootstrap resamples items, not labels
    res = win_rate(outcomes, n_boot=n_boot, seed=seed, clusters=items)
    res["project"] = name
    return res
