"""Stage caching: fingerprints and ``stage.json``.

A stage's fingerprint is the SHA-256 of its own settings (its config section with the wired fields
and the run-only fields removed) and the fingerprints of the stages it reads. ``run_stage``:

- ``stage.json`` says ``done`` with the same fingerprint: the stage is skipped (its recorded
  outputs are returned);
- ``stage.json`` says ``running`` with the same fingerprint (the process was killed or a stage
  raised): the stage runs again in the same folder, and the recipes resume from their latest
  ``checkpoint-N`` there (the feedback stage from its finished chunks);
- otherwise (no record, or another fingerprint): the folder is emptied and the stage runs afresh,
  because checkpoints written under other settings must not be resumed.

Because each fingerprint contains those of its inputs, changing one stage's settings reruns that
stage and every stage after it that reads it, and no stage before it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

# config fields that never change what a stage produces (the recipes' resume-free fields)
RUN_ONLY_FIELDS = {"output_dir", "output", "resume", "save_every", "keep_checkpoints", "log_every", "eval_every",
                   "tensorboard", "threads", "sample_every", "num_sample_rows"}


def settings(section: Any, wired: set[str] = frozenset()) -> dict:
    """The JSON-able settings of a config section that its result depends on. A value naming a
    file or folder that exists also carries what is in it (``content_token``), so editing a
    prompt or data file reruns the stages that read it. ``eval_every`` counts when
    ``best_metric`` is set (it decides which evaluations the kept weights are chosen from)."""
    d = dataclasses.asdict(section) if dataclasses.is_dataclass(section) else dict(section)
    run_only = RUN_ONLY_FIELDS - ({"eval_every"} if d.get("best_metric") else set())
    out = {}
    from rlhfkit.training.loop import at_fingerprint_default

    for k, v in d.items():
        if k in run_only or k in wired or at_fingerprint_default(k, v):
            continue
        out[k] = with_content(v)
    return out


def with_content(value: Any) -> Any:
    """``value``, or ``{"value", "content"}`` when it names an existing file or folder; inside
    nested sections too (``adversarial.demos``, a reward model's folder)."""
    if isinstance(value, dict):
        return {k: with_content(v) for k, v in value.items()}
    if isinstance(value, list):
        return [with_content(v) for v in value]
    token = content_token(value) if isinstance(value, str) and value else None
    return {"value": value, "content": token} if token else value


CONTENT_HASH_LIMIT = 64 << 20  # larger files (model weights) are known by size and modification time


def content_token(value: str) -> str | None:
    """What a path-valued setting holds: a file's SHA-256 (size and mtime above 64 MB), a
    folder's list of files with sizes and mtimes; None when ``value`` names no file or folder."""
    try:
        path = Path(value)
        if path.is_file():
            st = path.stat()
            return file_digest(path) if st.st_size <= CONTENT_HASH_LIMIT else f"size {st.st_size} mtime {st.st_mtime_ns}"
        if path.is_dir():
            entries = sorted((str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns)
                             for f in path.rglob("*") if f.is_file())
            return hashlib.sha256(json.dumps(entries).encode()).hexdigest()
    except (OSError, ValueError):  # a name too long to be a path, a file gone while listed
        return None
    return None


def fingerprint(stage: str, own: Any, inputs: dict[str, str]) -> str:
    blob = json.dumps({"stage": stage, "settings": own, "inputs": dict(sorted(inputs.items()))},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_record(stage_dir: Path) -> tuple[dict | None, str | None]:
    """``(the stage's record, None)``; ``(None, None)`` when it has none; ``(None, what is wrong)``
    when ``stage.json`` is unreadable (truncated, not UTF-8, not a JSON object)."""
    path = stage_dir / "stage.json"
    if not path.exists():
        return None, None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # ValueError: JSONDecodeError and UnicodeDecodeError
        return None, f"{type(err).__name__}: {err}"
    if not isinstance(record, dict):
        return None, f"a JSON {type(record).__name__}, not an object"
    return record, None


def read_record(stage_dir: Path) -> dict | None:
    return load_record(stage_dir)[0]


def write_record(stage_dir: Path, record: dict) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    tmp = stage_dir / ".stage.json.tmp"
    tmp.write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, stage_dir / "stage.json")  # atomic: a kill never leaves half a record


def run_stage(name: str, stage_dir: Path, fp: str, fn: Callable[[Path], dict], force: bool = False,
              log: Callable[[str], None] = print, clean_checkpoints: bool = True) -> dict:
    """Run ``fn(stage_dir) -> outputs`` unless cached (see the module docstring); returns the
    stage record (``status``, ``fingerprint``, ``outputs``, ``runs``, ``seconds``, ``ran``).
    ``cpu_seconds`` is this process's CPU time in the stage (all its threads): on a machine shared
    with other jobs the wall time grows with their load, the CPU time much less."""
    old, problem = load_record(stage_dir)
    if problem is not None:  # what it said is unknown: the stage runs afresh, as for other settings
        print(f"rlhfkit: warning: {stage_dir / 'stage.json'} is unreadable ({problem}); stage {name} runs afresh",
              file=sys.stderr, flush=True)
    if old and old.get("fingerprint") == fp and old.get("status") == "done" and not force:
        log(f"pipeline: {name}: cached (fingerprint {fp[:12]}), skipped")
        return {**old, "ran": False}
    resuming = bool(old and old.get("fingerprint") == fp and old.get("status") == "running" and not force)
    if not resuming and stage_dir.exists():
        shutil.rmtree(stage_dir)  # outputs of other settings (or a forced rerun): start clean
    runs = int(old.get("runs", 0)) + 1 if old else 1
    started, cpu_started = time.time(), time.process_time()
    write_record(stage_dir, {"stage": name, "status": "running", "fingerprint": fp, "runs": runs,
                             "started": started})
    log(f"pipeline: {name}: {'resuming' if resuming else 'running'} (fingerprint {fp[:12]})")
    outputs = fn(stage_dir)
    finished = time.time()
    record = {"stage": name, "status": "done", "fingerprint": fp, "runs": runs, "started": started,
              "finished": finished, "seconds": round(finished - started, 2),
              "cpu_seconds": round(time.process_time() - cpu_started, 2), "resumed": resuming,
              "outputs": outputs}
    write_record(stage_dir, record)  # first: a kill before the clean-up below costs nothing
    if clean_checkpoints:  # they only serve resuming this stage, which is now done
        for ckpt in stage_dir.glob("checkpoint-*"):
            if ckpt.is_dir():
                shutil.rmtree(ckpt, ignore_errors=True)
    return {**record, "ran": True}
