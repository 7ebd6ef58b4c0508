"""The learner killed with SIGKILL mid-round resumes and promotes the same version as a run that
was not killed: the next round of a finished deploy_sim run, replayed twice on a frozen copy.

    .venv/bin/python benchmarks/learn_kill_replay.py --sim /tmp/sim100 --out /tmp/kill_replay \
        --learn "--reward.model minilm-l6 ..."       # the learner settings the simulation used

Both copies start from the simulation's learner folder as it stood after its last finished round
(the round the simulation's stop left unfinished is removed, so that both start it afresh) and
read the same frozen copy of its store, so both run the same round on the same verdicts:
``uninterrupted`` runs it (``rlhfkit learn run --once``) to its end; ``killed`` is sent SIGKILL
from outside once its GRPO has logged ``--kill_at_step`` steps (mid-round, mid-training), then
started again with the same command, and finishes the round from its checkpoints. Printed and
written to ``OUT/replay.json``: each copy's round outcome, version, gate figures and the SHA-256 of
the version's adapter weights; ``same`` is true when all of them are equal.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path


def fresh_copy(sim: Path, dest: Path) -> int:
    """``dest/learn`` as the simulation's learner stood after its last finished round (GRPO
    checkpoints left out: a finished round needs none); returns that round's number."""
    state = json.loads((sim / "learn" / "learn_state.json").read_text())
    done = int(state["rounds_done"])
    shutil.copytree(sim / "learn", dest / "learn", ignore=shutil.ignore_patterns("checkpoint-*"))
    for r in (dest / "learn" / "rounds").glob("round-*"):
        if int(r.name.split("-")[1]) > done:
            shutil.rmtree(r)
    return done


def learner(dest: Path, store: Path, extra: list[str], log) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "rlhfkit.cli", "learn", "run", str(dest / "learn"), "--store", str(store)]
    return subprocess.Popen([*cmd, "--once", "--threads", "1", *extra], env=env, stdout=log, stderr=subprocess.STDOUT)


def grpo_steps(dest: Path, round_no: int) -> int:
    path = dest / "learn" / "rounds" / f"round-{round_no}" / "policy" / "grpo" / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def outcome(dest: Path, round_no: int) -> dict:
    rdir = dest / "learn" / "rounds" / f"round-{round_no}"
    rnd = json.loads((rdir / "round.json").read_text())
    gate = json.loads((rdir / "gate" / "gate.json").read_text()) if (rdir / "gate" / "gate.json").is_file() else None
    version = rnd.get("version")  # None when refused: then the candidate's adapter is compared
    adapter = (
        dest / "learn" / "versions" / version / "adapter" if version else rdir / "policy" / "grpo" / "adapter"
    ) / "adapter_model.safetensors"
    digest = hashlib.sha256(adapter.read_bytes()).hexdigest() if adapter.is_file() else None
    return {"outcome": rnd["outcome"], "version": version, "gate": gate, "adapter_sha256": digest}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sim", required=True, help="a finished deploy_sim --out folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--learn", default="", help="the learner settings the simulation used (one string)")
    ap.add_argument("--kill_at_step", type=int, default=2, help="SIGKILL once GRPO has logged this many steps")
    args = ap.parse_args(argv)
    sim, out = Path(args.sim), Path(args.out)
    if out.exists():
        raise SystemExit(f"learn_kill_replay: {out} exists; give a new --out")
    out.mkdir(parents=True)
    store = out / "store.db"
    import sqlite3

    with sqlite3.connect(sim / "store.db") as src, sqlite3.connect(store) as dst:  # the WAL's rows too
        src.backup(dst)
    extra = shlex.split(args.learn)
    copies = {name: out / name for name in ("uninterrupted", "killed")}
    done = {name: fresh_copy(sim, d) for name, d in copies.items()}["killed"]
    # one held-out key for both (a folder from before the keyed draw has none; each learner
    # would make its own and the two would split the prompts differently)
    from rlhfkit.learn.inputs import KEY_FILE, holdout_key

    holdout_key(copies["uninterrupted"] / "learn")
    shutil.copy2(copies["uninterrupted"] / "learn" / KEY_FILE, copies["killed"] / "learn" / KEY_FILE)
    round_no = done + 1
    logs = {name: open(d / "learn.log", "w") for name, d in copies.items()}
    t0 = time.time()
    procs = {name: learner(d, store, extra, logs[name]) for name, d in copies.items()}
    killed_at = None
    while procs["killed"].poll() is None:
        if grpo_steps(copies["killed"], round_no) >= args.kill_at_step:
            os.kill(procs["killed"].pid, signal.SIGKILL)
            procs["killed"].wait()
            killed_at = {
                "seconds": round(time.time() - t0, 1),
                "grpo_steps_logged": grpo_steps(copies["killed"], round_no),
            }
            print(f"learn_kill_replay: SIGKILL at {killed_at}", flush=True)
            break
        time.sleep(0.5)
    if killed_at is None:
        procs["uninterrupted"].kill()
        procs["uninterrupted"].wait()
        raise SystemExit("learn_kill_replay: the round ended before the kill point; give a lower --kill_at_step")
    logs["killed"].write("\n--- restarted after SIGKILL ---\n")
    logs["killed"].flush()
    restarted = learner(copies["killed"], store, extra, logs["killed"])
    rcs = {"uninterrupted": procs["uninterrupted"].wait(), "killed_restart": restarted.wait()}
    for f in logs.values():
        f.close()
    result = {name: outcome(d, round_no) for name, d in copies.items()}
    same = all(rc == 0 for rc in rcs.values()) and all(
        result["killed"][k] == result["uninterrupted"][k] for k in ("outcome", "version", "gate", "adapter_sha256")
    )
    summary = {"round": round_no, "killed_at": killed_at, "exit_codes": rcs, **result, "same": same}
    (out / "replay.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: summary[k] for k in ("round", "killed_at", "exit_codes", "same")}), flush=True)
    for name in copies:
        r = result[name]
        print(f"{name}: {r['outcome']} {r['version']} adapter {str(r['adapter_sha256'])[:16]}", flush=True)
    return summary


if __name__ == "__main__":
    main()
