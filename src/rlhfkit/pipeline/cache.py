"""Stage caching: ``stage.json`` and when a stage is skipped, resumed or run afresh.

A stage's fingerprint (``training/run_identity.py``: ``stage_settings``, ``stage_fingerprint``)
is the SHA-256 of its own settings (its config section with the wired fields and the result-free
fields removed) and the fingerprints of the stages it reads. ``run_stage``:

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

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable


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


def run_stage(
    name: str,
    stage_dir: Path,
    fp: str,
    fn: Callable[[Path], dict],
    force: bool = False,
    log: Callable[[str], None] = print,
    clean_checkpoints: bool = True,
    prefix: str = "pipeline",
) -> dict:
    """Run ``fn(stage_dir) -> outputs`` unless cached (see the module docstring); returns the
    stage record (``status``, ``fingerprint``, ``outputs``, ``runs``, ``seconds``, ``ran``).
    ``cpu_seconds`` is this process's CPU time in the stage (all its threads): on a machine shared
    with other jobs the wall time grows with their load, the CPU time much less. ``prefix`` begins
    each line logged (``loop`` for the loop's stages)."""
    old, problem = load_record(stage_dir)
    if problem is not None:  # what it said is unknown: the stage runs afresh, as for other settings
        print(
            f"rlhfkit: warning: {stage_dir / 'stage.json'} is unreadable ({problem}); stage {name} runs afresh",
            file=sys.stderr,
            flush=True,
        )
    if old and old.get("fingerprint") == fp and old.get("status") == "done" and not force:
        log(f"{prefix}: {name}: cached (fingerprint {fp[:12]}), skipped")
        return {**old, "ran": False}
    resuming = bool(old and old.get("fingerprint") == fp and old.get("status") == "running" and not force)
    if not resuming and stage_dir.exists():
        shutil.rmtree(stage_dir)  # outputs of other settings (or a forced rerun): start clean
    runs = int(old.get("runs", 0)) + 1 if old else 1
    started, cpu_started = time.time(), time.process_time()
    write_record(stage_dir, {"stage": name, "status": "running", "fingerprint": fp, "runs": runs, "started": started})
    log(f"{prefix}: {name}: {'resuming' if resuming else 'running'} (fingerprint {fp[:12]})")
    outputs = fn(stage_dir)
    finished = time.time()
    record = {
        "stage": name,
        "status": "done",
        "fingerprint": fp,
        "runs": runs,
        "started": started,
        "finished": finished,
        "seconds": round(finished - started, 2),
        "cpu_seconds": round(time.process_time() - cpu_started, 2),
        "resumed": resuming,
        "outputs": outputs,
    }
    write_record(stage_dir, record)  # first: a kill before the clean-up below costs nothing
    if clean_checkpoints:  # they only serve resuming this stage, which is now done
        for ckpt in stage_dir.glob("checkpoint-*"):
            if ckpt.is_dir():
                shutil.rmtree(ckpt, ignore_errors=True)
    return {**record, "ran": True}
