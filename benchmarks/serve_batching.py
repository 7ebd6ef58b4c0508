"""Throughput and latency of ``rlhfkit serve`` under concurrent clients: requests generated
together in batches vs one at a time.

    .venv/bin/python benchmarks/serve_batching.py --model tiny --threads 1
    .venv/bin/python benchmarks/serve_batching.py --model smollm2-135m --threads 2 --requests 3
    .venv/bin/python benchmarks/serve_batching.py --model tiny --baseline_src ../main/src   # the old server

Each server is a real ``rlhfkit serve`` process on loopback (no feedback store, so only
generation is measured); ``--clients`` threads each send ``--requests`` chat requests one after
another (a fixed seed per request, temperature 1, ``max_tokens`` 32), after a warm-up request.
Servers: ``--max_batch 8`` (batched), ``--max_batch 1`` (one request at a time: the old lock's
behaviour in the new code) and, with ``--baseline_src``, the server of another source tree (the
code before batching). Reports requests/s, completion tokens/s and the p50 / p95 latency of a
request (sent to answered), as JSON lines in ``benchmarks/results/serve_batching.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [
    "Tell me about the sea.",
    "What is a good name for a cat?",
    "Write one sentence about rain.",
    "How do I boil an egg?",
    "Say something kind.",
    "What is the capital of France?",
    "Describe a forest in the morning.",
    "Give me a tip for sleeping well.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def run_server(
    src: Path, model: str, threads: int, max_tokens: int, extra: list[str], clients: int, requests: int
) -> dict:
    import httpx

    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(src),
        "OMP_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rlhfkit.cli",
            "serve",
            "--model",
            model,
            "--port",
            str(port),
            "--threads",
            str(threads),
            "--max_new_tokens",
            str(max_tokens),
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(3000):
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(proc.stdout.read())
            time.sleep(0.1)
        with httpx.Client(base_url=base, timeout=600) as http:  # warm-up
            http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "seed": 1})
        latencies: list[float] = []
        tokens: list[int] = []
        failures = []
        start = threading.Barrier(clients + 1)

        def client(k: int) -> None:
            with httpx.Client(base_url=base, timeout=600) as http:
                start.wait()
                for j in range(requests):
                    body = {
                        "messages": [{"role": "user", "content": PROMPTS[(k + j) % len(PROMPTS)]}],
                        "seed": 1000 * k + j,
                        "temperature": 1.0,
                        "max_tokens": max_tokens,
                    }
                    t = time.perf_counter()
                    r = http.post("/v1/chat/completions", json=body)
                    latencies.append(time.perf_counter() - t)
                    if r.status_code != 200:
                        failures.append(r.text)
                    else:
                        tokens.append(r.json()["usage"]["completion_tokens"])

        threads_ = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads_:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in threads_:
            t.join()
        wall = time.perf_counter() - t0
        health = httpx.get(base + "/health", timeout=5).json()
    finally:
        proc.terminate()
        proc.wait(60)
        proc.stdout.close()
    n = clients * requests
    return {
        "requests": n,
        "failed": len(failures),
        "wall_s": round(wall, 2),
        "requests_per_s": round(n / wall, 3),
        "tokens_per_s": round(sum(tokens) / wall, 1),
        "completion_tokens": sum(tokens),
        "p50_s": round(statistics.median(latencies), 3),
        "p95_s": round(percentile(latencies, 0.95), 3),
        "generation": health.get("generation"),
    }


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=4, help="requests per client")
    p.add_argument("--max_tokens", type=int, default=32)
    p.add_argument("--baseline_src", default="", help="another source tree's src/ (the server before batching)")
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="rounds over the servers, interleaved (a shared machine's "
        "load moves; the summary gives each server's median)",
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_batching.jsonl"))
    a = p.parse_args(argv)
    runs = [
        ("batched (max_batch 8)", ROOT / "src", ["--max_batch", "8"]),
        ("one at a time (max_batch 1)", ROOT / "src", ["--max_batch", "1"]),
    ]
    if a.baseline_src:
        runs.append((f"before batching ({a.baseline_src})", Path(a.baseline_src).resolve(), []))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"model {a.model}, {a.threads} torch thread(s), {a.clients} clients x {a.requests} requests, "
        f"max_tokens {a.max_tokens}; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    rows: dict[str, list] = {name: [] for name, _, _ in runs}
    run_id = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())  # the rows of one invocation
    for rep in range(a.repeats):
        for name, src, extra in runs:
            res = run_server(src, a.model, a.threads, a.max_tokens, extra, a.clients, a.requests)
            row = {
                "server": name,
                "model": a.model,
                "threads": a.threads,
                "clients": a.clients,
                "round": rep,
                **res,
                "load_average": round(os.getloadavg()[0], 1),
                "run": run_id,
            }
            rows[name].append(row)
            print(json.dumps(row), flush=True)
            with out.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
    print("median of the rounds:")
    for name, rs in rows.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("requests_per_s", "tokens_per_s", "p50_s", "p95_s")}
        print(
            f"  {name:40s} {med['requests_per_s']:7.3f} req/s {med['tokens_per_s']:8.1f} tok/s "
            f"p50 {med['p50_s']:7.3f} s  p95 {med['p95_s']:7.3f} s  (rounds {len(rs)}, failed "
            f"{sum(r['failed'] for r in rs)})",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
