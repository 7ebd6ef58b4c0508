"""50 simulated labelers over HTTP against a real uvicorn server subprocess on loopback, with a
SIGKILL and a restart of the server mid-run: every acknowledged label must be stored, none lost,
none duplicated, and every item judged by exactly `overlap` labelers.

Runs on SQLite (one server process) and on PostgreSQL (two uvicorn worker processes, so the
queue's cross-process race-freedom is exercised too; the whole process group is SIGKILLed)."""

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from sqlalchemy import func, insert, select

from rlhfkit.feedback import db
from rlhfkit.feedback.auth import create_session
from rlhfkit.feedback.queue import add_items
from rlhfkit.feedback.simulate import HTTPClient, LabelerStats, run_labeler
from rlhfkit.feedback.tasks import parse_items

from .conftest import free_port, lab_hash

N_LABELERS, N_ITEMS, OVERLAP = 50, 300, 3


def _setup(path):
    store = db.Store(path)

    def job(c):
        pid = c.execute(
            insert(db.projects).values(
                name="load",
                task_type="pairwise",
                instructions="",
                overlap=OVERLAP,
                gold_rate=0.05,
                scale_min=1,
                scale_max=7,
                active=True,
                n_items=0,
                n_labels=0,
                created_at=time.time(),
            )
        ).inserted_primary_key[0]
        items = [{"prompt": f"q{i}", "responses": [f"a{i}", f"b{i}"]} for i in range(N_ITEMS)]
        items += [{"prompt": f"gold{i}", "responses": ["good", "bad"], "gold": "first"} for i in range(5)]
        add_items(c, pid, parse_items(items, "pairwise"))
        tokens = []
        for k in range(N_LABELERS):
            uid = c.execute(
                insert(db.users).values(
                    username=f"sim{k}", password_hash=lab_hash(), role="labeler", active=True, created_at=time.time()
                )
            ).inserted_primary_key[0]
            tokens.append(create_session(c, uid, "api")[0])
        return pid, tokens

    try:
        return store.write(job)
    finally:
        store.close()


def _start(path, port, workers=1):
    # own process group: a SIGKILL to the group takes the uvicorn workers down with their parent
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rlhfkit.cli",
            "feedback",
            "serve",
            "--db",
            str(path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    return proc


def _kill_group(proc, sig):
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


async def _wait_up(port, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        c = HTTPClient("127.0.0.1", port)
        try:
            status, _ = await c.request("GET", "/healthz")
            if status == 200:
                return
        except ConnectionError:
            await asyncio.sleep(0.1)
        finally:
            await c.close()
    raise RuntimeError("server did not come up")


def _judge(task):
    return {"choice": random.choice(["A", "B", "tie", "both_bad"]), "strength": random.choice([None, 1, 2, 3])}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])  # ~15 s and ~30 s on the 2-core box
def test_fifty_labelers_with_sigkill_and_restart(db_url, backend):
    path = db_url
    workers = 2 if backend == "postgresql" else 1
    pid, tokens = _setup(path)
    port = free_port()
    procs = [_start(path, port, workers)]

    async def main():
        await _wait_up(port, procs[0])
        stats = [LabelerStats() for _ in tokens]
        stop_at = time.perf_counter() + 180  # 25 s alone; a loaded machine (CI beside a benchmark) took over 90
        runs = [
            asyncio.create_task(
                run_labeler("127.0.0.1", port, tok, _judge, project_id=pid, stop_at=stop_at, stats=s, retry_delay=0.05)
            )
            for tok, s in zip(tokens, stats)
        ]
        # let a few hundred labels through, then kill the server without warning
        while sum(len(s.acked) for s in stats) < 250:
            await asyncio.sleep(0.02)
        _kill_group(procs[0], signal.SIGKILL)
        procs[0].wait()
        acked_before_kill = {a for s in stats for a in s.acked}
        await asyncio.sleep(0.3)
        for _ in range(100):  # orphaned workers gone, port free again
            try:
                os.killpg(procs[0].pid, 0)
            except ProcessLookupError:
                break
            await asyncio.sleep(0.05)
        procs.append(_start(path, port, workers))
        await _wait_up(port, procs[1])
        await asyncio.gather(*runs)
        return stats, acked_before_kill

    try:
        stats, acked_before_kill = asyncio.run(main())
    finally:
        for p in procs:
            if p.poll() is None:
                _kill_group(p, signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    _kill_group(p, signal.SIGKILL)
                    p.wait()
    assert all(s.done for s in stats), "some labeler did not finish"
    assert sum(s.retries for s in stats) > 0  # the kill really interrupted requests

    store = db.Store(str(path))
    try:
        with store.read() as c:
            rows = c.execute(
                select(
                    db.labels.c.id,
                    db.labels.c.assignment_id,
                    db.labels.c.item_id,
                    db.labels.c.user_id,
                    db.labels.c.is_gold,
                )
            ).all()
            n_labels_counter = c.execute(select(db.projects.c.n_labels)).scalar()
            open_tasks = c.execute(
                select(func.count()).select_from(db.assignments).where(db.assignments.c.status == "open")
            ).scalar()
    finally:
        store.close()
    by_id = {r.id: r for r in rows}
    # every label acknowledged before the SIGKILL survived it, attached to the same task
    for task_id, label_id, _dup in acked_before_kill:
        assert label_id in by_id and by_id[label_id].assignment_id == task_id
    # ... and every label acknowledged at all
    acked = [a for s in stats for a in s.acked]
    for task_id, label_id, _dup in acked:
        assert by_id[label_id].assignment_id == task_id
    # no duplicates: one label per (item, labeler) and per task
    assert len({(r.item_id, r.user_id) for r in rows}) == len(rows)
    assert len({r.assignment_id for r in rows}) == len(rows)
    # nothing lost: every regular item judged by exactly OVERLAP labelers, all tasks closed
    per_item = Counter(r.item_id for r in rows if not r.is_gold)
    assert len(per_item) == N_ITEMS and set(per_item.values()) == {OVERLAP}
    assert n_labels_counter == N_ITEMS * OVERLAP and open_tasks == 0
    # each stored label was acknowledged to its labeler (a lost reply is retried and acked as duplicate)
    assert {r.id for r in rows} == {label_id for _, label_id, _ in acked}
