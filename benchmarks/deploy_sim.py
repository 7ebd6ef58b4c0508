"""A simulated user population chatting with a served model that keeps learning from them.

    .venv/bin/python benchmarks/deploy_sim.py --model smollm2-135m --users 20 --minutes 10 \
        --adversarial_share 0.2 --out outputs/deploy_sim
    .venv/bin/python benchmarks/deploy_sim.py --model tiny --users 3 --minutes 1     # a smoke run

Starts a real ``rlhfkit serve --model LEARN_DIR --db STORE --compare_share S`` process and a real
``rlhfkit learn run LEARN_DIR --store STORE`` process beside it (loopback only), then ``--users``
threads, each a simulated person who, until ``--minutes`` are up: draws a prompt from the chat
first-turn pool (``data.shared_sets.load_chat_prompts``: OASST and HH-RLHF first human turns;
the held-out evaluation prompts are taken out of the users' pool), chats through
``/v1/chat/completions`` (chat template, T ``--temperature`` 0.7, top-p 0.9, ``--max_tokens`` 48:
the pipeline's chat sampling, under which SmolLM2-Instruct writes readable replies) under a
pseudonymous ``user`` id, reads the reply for ``--think_seconds`` and gives feedback through
``/v1/feedback`` at ``--thumbs_rate`` (with a reason), ``--rating_rate`` (1-5), ``--edit_rate``
(a friendlier rewrite), and a choice whenever the server returned two replies.

A user's verdicts come from the gold judge plus Gaussian noise (``--noise``). The gold is a fixed
combination of offline judges the learner never sees (``gold_scores``): ``friendly`` (VADER
tone minus the profanity classifier's probability) + 0.25 x readable length (words / 10, at most
1) + 0.25 x Flesch reading ease / 100 clipped to [0, 1]. A thumb is up when the noisy gold is
above the median gold of v0's held-out replies (measured at start), a rating is 3 + the noisy
gold's distance from that median in v0's standard deviations. ``--adversarial_share`` of the
users are adversarial, in turn ``random`` (coin flips), ``inverted`` (the opposite verdict) and
``flood`` (random verdicts, each sent ``--flood_repeat`` times, no pause between turns: the store
keeps one verdict per reply, user and kind, a repeat replacing the one before, so a flood counts
by its many turns, and the summary's ``expected_in_store`` counts distinct (reply, kind)).

Measured (``OUT/events.jsonl``: one line per request; ``OUT/evals.jsonl``: one line per held-out
evaluation; ``OUT/summary.json``; ``OUT/report.html``): the served model's held-out gold score
(each held-out prompt answered at a fixed seed through the API, at start and each time the server
names a new version) against wall-clock time and feedback count, with a bootstrap 95% interval
of last-minus-first (paired by prompt); versions promoted and refused (``versions.jsonl``); the
p50 / p95 latency of users' chat requests before the learner's first round (idle) and while a
round runs; failed requests (any non-2xx answer or connection error, every request counted);
the KL of each version to v0 that the learner's gate recorded; the load average.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shlex
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADVERSARIAL_KINDS = ("random", "inverted", "flood")
REASONS_UP = ["helpful", "friendly", "clear"]
REASONS_DOWN = ["rude", "unhelpful", "too short", "confusing"]


# --- the gold judge and a user's verdicts (pure) ----------------------------------------------


def gold_scores(texts: list[str]) -> list[float]:
    """The fixed gold: friendly + 0.25 x min(1, words / 10) + 0.25 x clip(readability, 0, 1)."""
    from rlhfkit.rewards.judges import friendly, readability

    tone, ease = friendly(texts), readability(texts)
    return [
        f + 0.25 * min(1.0, len(t.split()) / 10) + 0.25 * min(1.0, max(0.0, r)) for t, f, r in zip(texts, tone, ease)
    ]


def verdict_score(gold: float, behaviour: str, rng: random.Random, noise: float) -> float:
    """What a user of ``behaviour`` thinks of a reply of gold score ``gold`` (higher = better)."""
    if behaviour in ("random", "flood"):
        return rng.gauss(0.0, 1.0)
    s = gold + rng.gauss(0.0, noise)
    return -s if behaviour == "inverted" else s


def thumbs_of(score: float, centre: float) -> bool:
    return score > centre


def rating_of(score: float, centre: float, scale: float) -> int:
    """1-5: 3 at ``centre``, one step per ``scale``."""
    return int(min(5, max(1, 3 + round((score - centre) / max(scale, 1e-6)))))


def bootstrap_diff(first: list[float], last: list[float], n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean of the paired differences last - first and its percentile bootstrap 95% interval."""
    diffs = [b - a for a, b in zip(first, last)]
    if not diffs:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(diffs) for _ in diffs) / len(diffs) for _ in range(n_boot))
    return {
        "mean": sum(diffs) / len(diffs),
        "ci_low": means[int(0.025 * n_boot)],
        "ci_high": means[min(n_boot - 1, int(0.975 * n_boot))],
        "n": len(diffs),
    }


def paired(first: list, last: list) -> tuple[list[float], list[float]]:
    """The prompts answered in both evaluations (a failed request leaves a None)."""
    keep = [(a, b) for a, b in zip(first, last) if a is not None and b is not None]
    return [a for a, _ in keep], [b for _, b in keep]


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def split_prompts(prompts: list[str], n_eval: int, seed: int) -> tuple[list[str], list[str]]:
    """(held-out evaluation prompts, users' prompts): disjoint, drawn by ``seed``."""
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    held = [prompts[i] for i in order[:n_eval]]
    return held, [prompts[i] for i in order[n_eval:]]


def round_intervals(learn_dir: Path, now: float) -> list[tuple[float, float]]:
    """(start, end) of each learner round: its folder's creation (its inputs stage) to its
    ``round.json`` (``now`` while it runs)."""
    out = []
    for d in sorted((learn_dir / "rounds").glob("round-*"), key=lambda p: int(p.name.split("-")[1])):
        start_file = d / "inputs" / "stage.json"
        if not start_file.exists():
            continue
        end = d / "round.json"
        out.append((start_file.stat().st_mtime, end.stat().st_mtime if end.exists() else now))
    return out


def latency_phases(events: list[dict], rounds: list[tuple[float, float]]) -> dict:
    """p50 / p95 latency of users' chat requests answered 2xx: ``idle`` (sent before the first
    round started) and ``training`` (sent while a round ran)."""
    first = rounds[0][0] if rounds else float("inf")
    idle, training = [], []
    for e in events:
        if e["kind"] != "chat" or not e["ok"]:
            continue
        if e["t0"] < first:
            idle.append(e["latency"])
        elif any(a <= e["t0"] <= b for a, b in rounds):
            training.append(e["latency"])

    def stats(xs):
        return {"n": len(xs), "p50": percentile(xs, 0.5), "p95": percentile(xs, 0.95)}

    return {"idle": stats(idle), "training": stats(training)}


# --- the run ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Recorder:
    """Every request, appended to events.jsonl as it finishes (thread-safe)."""

    def __init__(self, path: Path, t_start: float):
        self.path, self.t_start, self.lock, self.events = path, t_start, threading.Lock(), []
        self.f = open(path, "a", encoding="utf-8")

    def add(self, **e) -> dict:
        with self.lock:
            self.events.append(e)
            self.f.write(json.dumps(e) + "\n")
            self.f.flush()
        return e

    def close(self):
        self.f.close()


def request(http, rec: Recorder, kind: str, path: str, body: dict, user: str) -> dict | None:
    """POST, timed and recorded: any non-2xx answer or connection error is a failure."""
    import httpx

    t0 = time.time()
    try:
        r = http.post(path, json=body)
        ok, status, out = 200 <= r.status_code < 300, r.status_code, None
        if ok:
            out = r.json()
        error = None if ok else r.text[:300]
    except httpx.HTTPError as e:  # connection refused / reset / timeout
        ok, status, out, error = False, None, None, f"{type(e).__name__}: {e}"[:300]
    rec.add(
        kind=kind,
        user=user,
        t0=t0,
        latency=time.time() - t0,
        status=status,
        ok=ok,
        error=error,
        version=(out or {}).get("rlhfkit", {}).get("version") if kind != "feedback" else None,
    )
    return out


def user_loop(
    k: int,
    behaviour: str,
    args,
    base: str,
    pool: list[str],
    calib: dict,
    rec: Recorder,
    deadline: float,
    tally: dict,
    lock: threading.Lock,
) -> None:
    """One simulated person (module docstring) until ``deadline``."""
    import httpx

    rng = random.Random(args.seed * 100_003 + k)
    user = "u-" + hashlib.sha256(f"{args.seed}:{k}".encode()).hexdigest()[:10]  # pseudonymous
    repeat = args.flood_repeat if behaviour == "flood" else 1
    think = 0.0 if behaviour == "flood" else args.think_seconds
    with httpx.Client(base_url=base, timeout=args.request_timeout) as http:
        turn = 0
        while time.time() < deadline:
            prompt = rng.choice(pool)
            body = {
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": args.max_tokens,
                "temperature": args.temperature,
                "top_p": args.top_p,
                "seed": rng.randrange(2**31),
                "user": user,
                "rlhfkit": {"compare": True},
            }
            out = request(http, rec, "chat", "/v1/chat/completions", body, user)
            turn += 1
            if out is None:
                continue
            texts = [c["message"]["content"] for c in out["choices"]]
            golds = gold_scores(texts)
            scores = [verdict_score(g, behaviour, rng, args.noise) for g in golds]
            fb: dict = {"completion_id": out["id"], "user": user}
            verdicts = 0
            if len(texts) == 2:
                fb["choice"] = max(range(2), key=lambda i: scores[i])
                verdicts += 1
            judged = fb.get("choice", 0)
            s = scores[judged]
            if rng.random() < args.thumbs_rate:
                up = thumbs_of(s, calib["centre"])
                fb["thumbs"] = "up" if up else "down"
                fb["reason"] = rng.choice(REASONS_UP if up else REASONS_DOWN)
                verdicts += 1
            if rng.random() < args.rating_rate:
                fb["rating"] = rating_of(s, calib["centre"], calib["scale"])
                verdicts += 1
            if rng.random() < args.edit_rate and behaviour == "honest":
                fb["edit"] = "Thank you for asking! " + texts[judged].strip() + " I hope this helps."
                verdicts += 1
            time.sleep(min(think, max(0.0, deadline - time.time())))
            if verdicts == 0:
                continue
            for _ in range(repeat):
                res = request(http, rec, "feedback", "/v1/feedback", fb, user)
                ids = [
                    res[key]
                    for key in ("thumbs_label_id", "rating_label_id", "edit_label_id", "choice_label_id")
                    if res and res.get(key) is not None
                ]
                with lock:
                    tally["label_ids"].update(ids)
                    if res:  # the store keeps one verdict per reply, user and kind: a repeat replaces it
                        tally["verdict_keys"].update(
                            (out["id"], key) for key in ("choice", "thumbs", "rating", "edit") if key in fb
                        )
                    tally["verdicts_given"] += verdicts
                    tally["verdicts_refused"] += 0 if res else verdicts
                    tally["verdicts_acknowledged"] += len(ids)
                    for key in ("choice", "thumbs", "rating", "edit"):
                        if key in fb:
                            tally["by_kind"][key] = tally["by_kind"].get(key, 0) + 1


def evaluate(base: str, held: list[str], args, rec: Recorder) -> dict:
    """Each held-out prompt answered at fixed seeds by the served version; gold scores by prompt.
    A pass that straddles a swap is redone (every reply of a point is of one version)."""
    import httpx

    from concurrent.futures import ThreadPoolExecutor

    jobs = [(i, p, s) for i, p in enumerate(held) for s in range(args.eval_samples)]

    def ask(http, job):
        i, p, s = job
        body = {
            "messages": [{"role": "user", "content": p}],
            "max_tokens": args.max_tokens,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "seed": 10_000 + 100 * i + s,
            "user": "sim-eval",
        }
        return i, request(http, rec, "eval", "/v1/chat/completions", body, "sim-eval")

    # sent together (up to a batch at once) so that the server batches them as it batches users
    with (
        httpx.Client(base_url=base, timeout=args.request_timeout) as http,
        ThreadPoolExecutor(max_workers=args.max_batch) as pool,
    ):
        for _attempt in range(3):
            answers = list(pool.map(lambda job: ask(http, job), jobs))
            replies = [(i, out["choices"][0]["message"]["content"]) for i, out in answers if out is not None]
            vers = {out["rlhfkit"]["version"] for _, out in answers if out is not None}
            if len(vers) <= 1:
                break
    golds = gold_scores([t for _, t in replies])
    by_prompt: dict[int, list[float]] = {}
    for (i, _), g in zip(replies, golds):
        by_prompt.setdefault(i, []).append(g)
    per_prompt = [sum(by_prompt[i]) / len(by_prompt[i]) if i in by_prompt else None for i in range(len(held))]
    done = [x for x in per_prompt if x is not None]
    return {
        "version": sorted(vers)[0] if len(vers) == 1 else "/".join(sorted(vers)),
        "gold": sum(done) / len(done) if done else None,
        "per_prompt": per_prompt,
        "replies": [{"prompt": held[i], "reply": t} for i, t in replies[:10]],
    }


def wait_healthy(base: str, proc: subprocess.Popen, timeout: float) -> dict:
    import httpx

    t_end = time.time() + timeout
    while time.time() < t_end:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}")
        try:
            r = httpx.get(base + "/health", timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("serve did not become healthy")


def store_verdicts(db: Path) -> int:
    from rlhfkit.feedback.enduser import feedback_events

    return len(feedback_events(str(db)))


def lineage_users(learn_dir: Path) -> dict:
    """Each round's per-user defence figures ({round: {user: {...}}}), promoted or refused."""
    out = {}
    for d in sorted((learn_dir / "rounds").glob("round-*/defence/defence.json")):
        out[d.parent.parent.name] = json.loads(d.read_text())["per_user"]
    return out


def run(args) -> dict:
    import httpx

    from rlhfkit.data.shared_sets import load_chat_prompts
    from rlhfkit.learn import lineage
    from rlhfkit.learn.config import LearnConfig
    from rlhfkit.learn.run import open_learn_dir

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for f in ("events.jsonl", "evals.jsonl"):
        (out / f).unlink(missing_ok=True)
    learn_dir, db = out / "learn", out / "store.db"
    if learn_dir.exists() or db.exists():
        raise SystemExit(f"deploy_sim: {out} holds an earlier run (learn/ or store.db); give a new --out")
    open_learn_dir(LearnConfig(learn_dir=str(learn_dir), store=str(db), model=args.model))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve_log, learn_log = open(out / "serve.log", "w"), open(out / "learn.log", "w")
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rlhfkit.cli",
            "serve",
            "--model",
            str(learn_dir),
            "--db",
            str(db),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--threads",
            str(args.threads),
            "--compare_share",
            str(args.compare_share),
            "--reload_every",
            "1",
            "--max_batch",
            str(args.max_batch),
            "--log_level",
            "warning",
        ],
        env=env,
        stdout=serve_log,
        stderr=subprocess.STDOUT,
    )
    learner = None
    t_start = time.time()
    rec = Recorder(out / "events.jsonl", t_start)
    tally = {
        "verdicts_given": 0,
        "verdicts_refused": 0,
        "verdicts_acknowledged": 0,
        "by_kind": {},
        "label_ids": set(),
        "verdict_keys": set(),
    }
    evals: list[dict] = []
    loads: list[tuple[float, float]] = []
    try:
        prompts = [p.prompt for p in load_chat_prompts()]  # read while serve loads its model
        held, pool = split_prompts(prompts, args.eval_prompts, args.seed)
        wait_healthy(base, serve, args.start_timeout)
        with httpx.Client(base_url=base, timeout=args.request_timeout) as http:  # creates the store's projects
            request(
                http,
                rec,
                "warmup",
                "/v1/chat/completions",
                {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "seed": 0},
                "sim-eval",
            )
        # the learner starts now (its store exists) and loads while v0 is evaluated; its first
        # round waits for min_feedback verdicts, so requests before it are "idle"
        learner = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rlhfkit.cli",
                "learn",
                "run",
                str(learn_dir),
                "--store",
                str(db),
                "--threads",
                str(args.threads),
                *shlex.split(args.learn),
            ],
            env=env,
            stdout=learn_log,
            stderr=subprocess.STDOUT,
        )
        first = evaluate(base, held, args, rec)
        calib_scores = [x for x in first["per_prompt"] if x is not None]
        centre = percentile(calib_scores, 0.5)
        scale = (sum((x - centre) ** 2 for x in calib_scores) / max(1, len(calib_scores) - 1)) ** 0.5 or 0.1
        calib = {"centre": centre, "scale": scale}
        evals.append({**first, "t": time.time() - t_start, "verdicts": 0})
        with open(out / "evals.jsonl", "a") as f:
            f.write(json.dumps(evals[-1]) + "\n")
        deadline = time.time() + 60 * args.minutes
        n_adv = round(args.users * args.adversarial_share)
        kinds = args.adversarial_kinds.split(",")
        behaviours = ["honest"] * (args.users - n_adv) + [kinds[i % len(kinds)] for i in range(n_adv)]
        lock = threading.Lock()
        threads = [
            threading.Thread(
                target=user_loop, args=(k, b, args, base, pool, calib, rec, deadline, tally, lock), daemon=True
            )
            for k, b in enumerate(behaviours)
        ]
        for t in threads:
            t.start()
        seen = first["version"]
        while time.time() < deadline:
            time.sleep(min(args.poll_seconds, max(0.0, deadline - time.time())))
            loads.append((time.time() - t_start, os.getloadavg()[0]))
            try:
                now = httpx.get(base + "/health", timeout=10).json().get("version")
            except httpx.HTTPError:
                continue
            if now and now != seen and time.time() < deadline:
                point = evaluate(base, held, args, rec)
                with lock:
                    given = tally["verdicts_acknowledged"]
                evals.append({**point, "t": time.time() - t_start, "verdicts": given})
                with open(out / "evals.jsonl", "a") as f:
                    f.write(json.dumps(evals[-1]) + "\n")
                seen = point["version"].split("/")[-1]
        for t in threads:
            t.join(args.request_timeout + args.think_seconds + 5)
        alive = sum(t.is_alive() for t in threads)
    finally:
        for p in (learner, serve):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        serve_log.close()
        learn_log.close()
        rec.close()
    events = rec.events
    rounds = round_intervals(learn_dir, time.time())
    log = lineage.read_log(learn_dir)
    stored = store_verdicts(db)
    users_req = [e for e in events if e["kind"] in ("chat", "feedback")]
    summary = {
        "command": " ".join(sys.argv),
        "t_start": t_start,
        "model": args.model,
        "users": args.users,
        "minutes": args.minutes,
        "adversarial": dict(
            zip(
                *[
                    ["u-" + hashlib.sha256(f"{args.seed}:{k}".encode()).hexdigest()[:10] for k in range(args.users)],
                    behaviours,
                ]
            )
        ),
        "held_out_prompts": len(held),
        "users_prompt_pool": len(pool),
        "calibration": calib,
        "requests": {
            "sent": len(events),
            "answered": sum(e["ok"] for e in events),
            "failed": sum(not e["ok"] for e in events),
            "by_kind": {k: sum(e["kind"] == k for e in events) for k in ("warmup", "chat", "feedback", "eval")},
            "users_sent": len(users_req),
            "users_failed": sum(not e["ok"] for e in users_req),
            "failures": [e for e in events if not e["ok"]][:20],
        },
        "threads_still_running": alive,
        "feedback": {
            **{k: v for k, v in tally.items() if k not in ("label_ids", "verdict_keys")},
            "distinct_label_ids": len(tally["label_ids"]),
            "expected_in_store": len(tally["verdict_keys"]),
            "in_store": stored,
        },
        "latency": latency_phases(events, rounds),
        "rounds": [{"start": a - t_start, "end": b - t_start} for a, b in rounds],
        "versions": {
            "promoted": [x["version"] for x in log if x.get("event") == "promoted"],
            "refused": [x.get("round") for x in log if x.get("event") == "refused"],
            "kl_to_v0": {
                x["version"]: (x.get("gate") or {}).get("kl_to_v0") for x in log if x.get("event") == "promoted"
            },
        },
        "gold": [{"t": e["t"], "verdicts": e["verdicts"], "version": e["version"], "gold": e["gold"]} for e in evals],
        "gold_last_minus_first": bootstrap_diff(*paired(evals[0]["per_prompt"], evals[-1]["per_prompt"]))
        if len(evals) > 1
        else None,
        "lineage_users": lineage_users(learn_dir),
        "load_average": {
            "mean": sum(v for _, v in loads) / len(loads) if loads else None,
            "max": max((v for _, v in loads), default=None),
            "series": loads,
        },
        "cpu_count": os.cpu_count(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    from rlhfkit.learn.report import write_report

    write_report(learn_dir, out / "report.html", sim_dir=out)
    return summary


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="base model (v0): smollm2-135m, tiny or a folder")
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--minutes", type=float, default=10.0, help="how long the users chat (after the start evaluation)")
    ap.add_argument("--adversarial_share", type=float, default=0.0)
    ap.add_argument(
        "--adversarial_kinds",
        default="random,inverted,flood",
        help="behaviours the adversarial users take in turn (random, inverted, flood)",
    )
    ap.add_argument("--flood_repeat", type=int, default=5, help="a flooding user sends each verdict this often")
    ap.add_argument("--thumbs_rate", type=float, default=0.6)
    ap.add_argument("--rating_rate", type=float, default=0.3)
    ap.add_argument("--edit_rate", type=float, default=0.03)
    ap.add_argument(
        "--compare_share", type=float, default=0.2, help="serve's share of requests answered with two replies"
    )
    ap.add_argument("--noise", type=float, default=0.2, help="std of the noise on a user's gold score")
    ap.add_argument(
        "--think_seconds", type=float, default=3.0, help="a user reads a reply this long before the next turn"
    )
    ap.add_argument("--eval_prompts", type=int, default=32, help="held-out prompts (kept out of the users' pool)")
    ap.add_argument("--eval_samples", type=int, default=1, help="replies per held-out prompt (fixed seeds)")
    ap.add_argument("--max_tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top_p", type=float, default=0.9)
    ap.add_argument("--max_batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of serve and of the learner each")
    ap.add_argument(
        "--learn",
        default="--min_feedback 64 --poll_seconds 5",
        help="arguments passed to `rlhfkit learn run` (quoted), e.g. '--min_feedback 64 --policy.max_steps 4'",
    )
    ap.add_argument(
        "--poll_seconds", type=float, default=2.0, help="how often the benchmark asks /health for the version"
    )
    ap.add_argument("--request_timeout", type=float, default=300.0)
    ap.add_argument("--start_timeout", type=float, default=300.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="outputs/deploy_sim")
    args = ap.parse_args(argv)
    if not 0 <= args.adversarial_share <= 1 or args.users < 1 or args.minutes <= 0:
        ap.error("--users >= 1, --minutes > 0 and --adversarial_share in [0, 1]")
    if not set(args.adversarial_kinds.split(",")) <= set(ADVERSARIAL_KINDS):
        ap.error(f"--adversarial_kinds: each of {', '.join(ADVERSARIAL_KINDS)}")
    summary = run(args)
    r, fb, lat = summary["requests"], summary["feedback"], summary["latency"]
    print(
        json.dumps(
            {
                "requests": {k: r[k] for k in ("sent", "answered", "failed")},
                "feedback": fb,
                "latency": lat,
                "versions": summary["versions"],
                "gold": summary["gold"],
                "gold_last_minus_first": summary["gold_last_minus_first"],
                "load_average_mean": summary["load_average"]["mean"],
            },
            indent=1,
        )
    )
    return summary


if __name__ == "__main__":
    main()
