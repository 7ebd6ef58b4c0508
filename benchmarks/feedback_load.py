"""Feedback app under load: sustained label submissions per second and submit latency (p50/p99)
with N concurrent simulated labelers over HTTP on loopback, against a real
`rlhfkit feedback serve` subprocess on SQLite (WAL, synchronous=FULL: every acknowledged label is
on disk) or, with ``--db postgresql``, on a throwaway PostgreSQL cluster started for the run from
Debian's postgresql package (``rlhfkit.feedback.pgtemp``, the test fixture's helper; fsync=on,
synchronous_commit=on: a COMMIT returns once its WAL is flushed). Goal on the 2-core CI machine:
>= 500 labels/s with p99 < 100 ms at 50 labelers.

Each labeler loops: submit a verdict for its task with ``?next=true`` (the reply carries its next
task: one request and one transaction per label) -- the same path the browser page uses.
Two modes: closed loop (default: every labeler submits again as soon as its reply arrives, which
measures the maximum throughput; then latency = labelers / throughput by Little's law) and open
loop (``--rate 500``: 50 labelers each submitting every 0.1 s, people with think time; measures
latency at a sustained offered load).
The clients run in this process (a lean asyncio HTTP/1.1 client, rlhfkit.feedback.simulate), the
server in another; both share the machine's cores, so the number is end to end.

    python benchmarks/feedback_load.py --seconds 20 --labelers 50              # max throughput
    python benchmarks/feedback_load.py --seconds 20 --labelers 50 --rate 500   # latency at 500/s
    python benchmarks/feedback_load.py --seconds 15 --rate 500 --repeats 3 --db postgresql
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def setup(path: Path | str, n_labelers: int, n_items: int, overlap: int) -> tuple[int, list[str]]:
    from sqlalchemy import insert

    from rlhfkit.feedback import db
    from rlhfkit.feedback.auth import create_session, hash_password
    from rlhfkit.feedback.queue import add_items
    from rlhfkit.feedback.tasks import parse_items

    store = db.Store(path)
    pw = hash_password("bench-password")
    items = parse_items(
        [
            {
                "prompt": f"Question {i}: explain topic {i} briefly.",
                "responses": [f"Answer one to {i}. " * 8, f"Answer two to {i}. " * 8],
            }
            for i in range(n_items)
        ],
        "pairwise",
    )

    def job(c):
        pid = c.execute(
            insert(db.projects).values(
                name="bench",
                task_type="pairwise",
                instructions="",
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
        add_items(c, pid, items)
        tokens = []
        for k in range(n_labelers):
            uid = c.execute(
                insert(db.users).values(
                    username=f"bench{k}", password_hash=pw, role="labeler", active=True, created_at=time.time()
                )
            ).inserted_primary_key[0]
            tokens.append(create_session(c, uid, "api")[0])
        return pid, tokens

    try:
        return store.write(job, timeout=600)
    finally:
        store.close()


async def wait_up(port: int, proc, timeout: float = 60) -> None:
    from rlhfkit.feedback.simulate import HTTPClient

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited")
        c = HTTPClient("127.0.0.1", port)
        try:
            if (await c.request("GET", "/healthz"))[0] == 200:
                return
        except ConnectionError:
            await asyncio.sleep(0.1)
        finally:
            await c.close()
    raise RuntimeError("server did not come up")


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def tree_cpu(pid: int | None) -> float:
    """CPU seconds of a process and all its live descendants (uvicorn workers, PostgreSQL backends)."""
    if pid is None:
        return 0.0
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        c = proc_cpu(p)
        total += 0.0 if c != c else c
        todo += children.get(p, [])
    return total


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


async def drive(port: int, pid: int, tokens: list[str], warmup: float, seconds: float, rate: float | None = None):
    from rlhfkit.feedback.simulate import LabelerStats, run_labeler

    rng = random.Random(0)

    def judge(task):
        return {"choice": rng.choice(["A", "B", "tie", "both_bad"])}

    t0 = time.perf_counter()
    stop = t0 + warmup + seconds
    stats = [LabelerStats() for _ in tokens]
    pace = None if not rate else len(tokens) / rate  # each labeler's seconds between submissions
    await asyncio.gather(
        *(
            run_labeler(
                "127.0.0.1",
                port,
                tok,
                judge,
                project_id=pid,
                stop_at=stop,
                stats=s,
                pace=pace,
                start_offset=0 if pace is None else pace * i / len(tokens),
            )
            for i, (tok, s) in enumerate(zip(tokens, stats))
        )
    )
    lo, hi = t0 + warmup, stop
    lat = [l for s in stats for l, t in zip(s.latencies, s.ack_times) if lo <= t <= hi]
    n = len(lat)
    return {
        "labels_per_s": n / seconds,
        "p50_ms": 1000 * pct(lat, 0.50) if lat else None,
        "p99_ms": 1000 * pct(lat, 0.99) if lat else None,
        "mean_ms": 1000 * statistics.fmean(lat) if lat else None,
        "labels_in_window": n,
        "labels_total": sum(len(s.acked) for s in stats),
        "duplicates": sum(d for s in stats for _, _, d in s.acked),
        "retries": sum(s.retries for s in stats),
        "ran_out_of_items": any(s.done for s in stats),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labelers", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=20.0, help="measured window")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument(
        "--rate",
        type=float,
        default=None,
        help="offered labels/s in total (open loop: each labeler submits every labelers/rate s, "
        "like people with think time); default: closed loop, each labeler as fast as replies come",
    )
    ap.add_argument("--items", type=int, default=40000)
    ap.add_argument("--overlap", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=1, help="runs (fresh database each); the median is reported")
    ap.add_argument(
        "--db",
        choices=["sqlite", "postgresql"],
        default="sqlite",
        help="sqlite: a file (WAL, synchronous=FULL); postgresql: a throwaway cluster started here "
        "(needs Debian's postgresql package and psycopg)",
    )
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (PostgreSQL may use several)")
    ap.add_argument("--db-dir", default=None, help="where the SQLite file / PostgreSQL cluster goes (default: temp)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    pg = None
    if args.db == "postgresql":
        from rlhfkit.feedback.pgtemp import TempPostgres, unavailable_reason

        reason = unavailable_reason()
        if reason:
            print(f"cannot run on PostgreSQL: {reason}", file=sys.stderr)
            return 2
        pg = TempPostgres(base_dir=args.db_dir).start()
    results = []
    try:
        for rep in range(args.repeats):
            results.append(one_run(args, rep, pg))
    finally:
        if pg is not None:
            pg.stop()
    med = {
        k: statistics.median(r[k] for r in results)
        for k in (
            "labels_per_s",
            "p50_ms",
            "p99_ms",
            "mean_ms",
            "server_cpu_ms_per_label",
            "db_cpu_ms_per_label",
            "client_cpu_ms_per_label",
            "load_average_1min",
        )
    }
    summary = {
        "benchmark": "feedback_load",
        "db": args.db,
        "workers": args.workers,
        "labelers": args.labelers,
        "rate": args.rate,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "items": args.items,
        "overlap": args.overlap,
        "repeats": args.repeats,
        "median": med,
        "runs": results,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "command": "python benchmarks/feedback_load.py " + " ".join(sys.argv[1:]),
        "goal": {"labels_per_s": 500, "p99_ms": 100},
        "goal_met": med["labels_per_s"] >= 500 and med["p99_ms"] < 100,
    }
    print(json.dumps(summary["median"] | {"goal_met": summary["goal_met"]}, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=1))
    return 0


def one_run(args, rep: int, pg) -> dict:
    """One measured run on a fresh database (a SQLite file, or a new database in the cluster)."""
    with tempfile.TemporaryDirectory(dir=args.db_dir) as d:
        if pg is None:
            path, db_pid = Path(d) / "bench.db", None
        else:
            path = pg.create_database(f"bench{rep}")
            db_pid = int((pg.data / "postmaster.pid").read_text().split()[0])
        pid, tokens = setup(path, args.labelers, args.items, args.overlap)
        import socket

        with socket.socket() as sk:
            sk.bind(("127.0.0.1", 0))
            port = sk.getsockname()[1]
        # own process group: SIGTERM reaches every uvicorn worker
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
                str(args.workers),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            asyncio.run(wait_up(port, proc))
            load0 = os.getloadavg()[0]
            srv0, db0, cli0 = tree_cpu(proc.pid), tree_cpu(db_pid), time.process_time()
            r = asyncio.run(drive(port, pid, tokens, args.warmup, args.seconds, args.rate))
            srv1, db1, cli1 = tree_cpu(proc.pid), tree_cpu(db_pid), time.process_time()
            # CPU seconds per label (whole run incl. warm-up): what bounds throughput on 2 cores
            n = max(1, r["labels_total"])
            r["server_cpu_ms_per_label"] = 1000 * (srv1 - srv0) / n
            r["db_cpu_ms_per_label"] = 1000 * (db1 - db0) / n  # PostgreSQL server processes (0 on SQLite)
            r["client_cpu_ms_per_label"] = 1000 * (cli1 - cli0) / n
            # the machine is shared: the 1-minute load average before and at the end of the run
            r["load_average_before"] = load0
            r["load_average_1min"] = os.getloadavg()[0]
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        print(
            f"run {rep + 1} ({args.db}): {r['labels_per_s']:.0f} labels/s, p50 {r['p50_ms']:.1f} ms, "
            f"p99 {r['p99_ms']:.1f} ms ({r['labels_in_window']} labels in {args.seconds:g} s); CPU per label: "
            f"server {r['server_cpu_ms_per_label']:.2f} ms, database {r['db_cpu_ms_per_label']:.2f} ms, "
            f"clients {r['client_cpu_ms_per_label']:.2f} ms; load average {r['load_average_before']:.1f} -> "
            f"{r['load_average_1min']:.1f}",
            flush=True,
        )
        return r


if __name__ == "__main__":
    sys.exit(main())
