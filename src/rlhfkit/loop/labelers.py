"""Where the loop's labels come from.

- ``simulated``: in-process simulated labelers (the learning benchmark's): the gold judge scores
  both responses, Gaussian noise of std ``label_noise`` is added to each score, the higher one is
  chosen (as ``pipeline.feedback_stage.simulate_labels``). Seeded, so a rerun gives the same labels.
- ``store``: people in the feedback app. The selected pairs become the items of a pairwise
  project ``<project_prefix>-round-N`` in the feedback store (created once: a restarted loop
  finds the project and its items and just waits again); the loop polls the store until
  ``labels_required`` labels exist (every ``poll_seconds``, at most ``label_timeout`` seconds,
  then ``TimeoutError``: the stage stays ``running`` and the next run resumes the wait), then
  exports the project's pairs (majority per item; ties and "both bad" give no pair). Any labeler
  can answer: people in the browser, ``feedback/simulate.py``'s HTTP labelers, a script.
"""

from __future__ import annotations

import random
import time
from typing import Callable, Sequence


def simulated_labels(
    prompts: Sequence[str], first: Sequence[str], second: Sequence[str], judge: Callable, noise: float, seed: int
) -> list[dict]:
    """One pair record per input pair: ``prompt, chosen, rejected, gold_chosen, gold_rejected``."""
    ga = judge(list(prompts), list(first)).tolist()
    gb = judge(list(prompts), list(second)).tolist()
    rng = random.Random(seed)
    rows = []
    for p, x, y, sx, sy in zip(prompts, first, second, ga, gb):
        nx, ny = sx + rng.gauss(0, noise), sy + rng.gauss(0, noise)
        a_wins = nx >= ny
        rows.append(
            {
                "prompt": p,
                "chosen": x if a_wins else y,
                "rejected": y if a_wins else x,
                "gold_chosen": sx if a_wins else sy,
                "gold_rejected": sy if a_wins else sx,
            }
        )
    return rows


def ensure_project(store, name: str, items: list[dict], overlap: int = 1, instructions: str = "") -> int:
    """The id of pairwise project ``name``, created with ``items`` (``prompt``, ``responses``,
    ``id``) in one transaction if it does not exist yet (so a restart never adds items twice).
    A project of that name must hold exactly these items with this overlap: one made for an
    earlier selection (settings changed since) would otherwise be waited on and exported as if
    it were this one; that is refused with what to do."""
    from sqlalchemy import insert, select

    from rlhfkit.feedback import db
    from rlhfkit.feedback.queue import add_items
    from rlhfkit.feedback.tasks import parse_item

    parsed = [parse_item(it, "pairwise") for it in items]
    wanted = sorted((str(it["id"]), it["prompt"], tuple(it["responses"])) for it in items)

    def job(conn):
        proj = conn.execute(select(db.projects.c.id, db.projects.c.overlap).where(db.projects.c.name == name)).first()
        if proj is not None:
            have = sorted(
                (str(r.external_id), r.prompt, tuple(x["text"] for x in r.responses))
                for r in conn.execute(
                    select(db.items.c.external_id, db.items.c.prompt, db.items.c.responses).where(
                        db.items.c.project_id == proj.id, db.items.c.is_gold.is_(False)
                    )
                )
            )
            if have != wanted or int(proj.overlap) != overlap:
                from rlhfkit.training.config import ConfigError

                raise ConfigError(
                    f"feedback project {name!r} exists with other items or overlap (made for an earlier "
                    f"selection, before settings changed): rename or delete it, or set project_prefix "
                    f"to start new projects"
                )
            return int(proj.id)
        pid = int(
            conn.execute(
                insert(db.projects).values(
                    name=name,
                    task_type="pairwise",
                    instructions=instructions,
                    overlap=overlap,
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
        add_items(conn, pid, parsed, source="generated")
        return pid

    return store.write(job)


def label_count(store, project_id: int) -> int:
    from sqlalchemy import select

    from rlhfkit.feedback import db

    with store.read() as conn:
        return int(conn.execute(select(db.projects.c.n_labels).where(db.projects.c.id == project_id)).scalar() or 0)


def wait_for_labels(
    store, project_id: int, required: int, timeout: float, poll: float, log: Callable[[str], None] = print
) -> int:
    """Poll until the project has ``required`` labels; returns the count. ``TimeoutError`` after
    ``timeout`` seconds."""
    start = time.monotonic()
    last = -1
    while True:
        n = label_count(store, project_id)
        if n != last:
            log(f"loop: labels: {n}/{required} in project {project_id}")
            last = n
        if n >= required:
            return n
        if time.monotonic() - start >= timeout:
            raise TimeoutError(
                f"only {n} of {required} labels after {timeout:.0f} s in feedback project "
                f"{project_id}; rerun the loop to keep waiting"
            )
        time.sleep(poll)


def export_pairs(store, project_id: int) -> list[dict]:
    from rlhfkit.feedback.export import export_records

    with store.read() as conn:
        recs = export_records(conn, project_id, "pairs", aggregate="majority")
    return [{"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected} for r in recs if not r.tie]
