"""Checkpoints that resume exactly.

A checkpoint is a folder `checkpoint-<step>` holding everything the next step depends on:
model weights (full precision), optimiser and scheduler state, every RNG state, and the
trainer's own state (step, epoch, position in the epoch's shuffled order, controller states).
It is written to `checkpoint-<step>.tmp`, fsync'ed, then renamed, so a SIGKILL at any moment
leaves either the previous complete checkpoint or the new one, never half of one.

What the rename cannot promise is that the files stay as written (a disk, a copy or a sync tool
that truncates or flips a bit; `torch.load` checks no checksum of tensor data, so a flipped bit
loads silently). So `manifest.json`, written last, holds the size and sha256 of every file (hashed
as the bytes are written, no second read), and resuming takes the newest checkpoint whose files
match it (`resume_checkpoint`), with a one-line warning for each newer one passed over. A
checkpoint without a manifest (written before there were manifests) is accepted when every file
loads: its truncated or broken files are caught, a flipped bit in tensor data cannot be.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ConfigError
from .distributed import DistInfo, broadcast_from_main

_CKPT = re.compile(r"^checkpoint-(\d+)$")
MANIFEST = "manifest.json"
# the files every checkpoint holds (optimizer.pt, scheduler.pt and rng_ranks.pt only some)
REQUIRED_FILES = ("model.pt", "rng.pt", "trainer_state.json")
# pickled RNG states hold numpy arrays and Python tuples: not loadable with weights_only
_PICKLED_FILES = ("rng.pt", "rng_ranks.pt")


class CheckpointError(ConfigError):
    """No checkpoint in an output folder is intact: nothing to resume from."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _HashingWriter:
    """A write-only file that hashes the bytes on their way to disk. torch.save writes its zip
    archive front to back through `write` (a file object is a stream to it), so the digest is the
    file's without reading it back."""

    def __init__(self, file):
        self.file, self.sha256, self.size = file, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha256.update(data)
        written = self.file.write(data)  # a buffered file writes it all and counts bytes, not items
        self.size += written
        return written

    def flush(self) -> None:
        self.file.flush()

    def entry(self) -> dict:
        return {"size": self.size, "sha256": self.sha256.hexdigest()}


def _write_synced(path: Path, write: Any) -> dict:
    """Write `path` with `write(file)`, fsync it; returns its manifest entry (size, sha256)."""
    with open(path, "wb") as f:
        hashing = _HashingWriter(f)
        write(hashing)
        f.flush()
        os.fsync(f.fileno())
    return hashing.entry()


def _save_torch(obj: Any, path: Path) -> dict:
    return _write_synced(path, lambda f: torch.save(obj, f))


def _save_json(obj: Any, path: Path) -> dict:
    return _write_synced(path, lambda f: f.write(json.dumps(obj, indent=1).encode("utf-8")))


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP/FSDP wrappers."""
    return getattr(model, "module", model)


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    trainer_state: dict | None = None,
    keep_last: int = 2,
    model_state: dict | None = None,
    optimizer_state: dict | None = None,
    rank_rng_states: list | None = None,
) -> Path:
    """Write `output_dir/checkpoint-<step>` atomically and prune older ones (keep `keep_last`).

    `model_state` / `optimizer_state` replace `model.state_dict()` / `optimizer.state_dict()`
    when the caller gathered them itself (sharded models, see training/distributed.py)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f"checkpoint-{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    files = {"model.pt": _save_torch(model_state if model_state is not None else unwrap(model).state_dict(),
                                     tmp / "model.pt")}
    if optimizer_state is not None or optimizer is not None:
        files["optimizer.pt"] = _save_torch(optimizer_state if optimizer_state is not None
                                            else optimizer.state_dict(), tmp / "optimizer.pt")
    if scheduler is not None:
        files["scheduler.pt"] = _save_torch(scheduler.state_dict(), tmp / "scheduler.pt")
    files["rng.pt"] = _save_torch(rng_state(), tmp / "rng.pt")
    if rank_rng_states is not None:  # every rank's own stream (several processes), see load_rank_rng
        files["rng_ranks.pt"] = _save_torch(rank_rng_states, tmp / "rng_ranks.pt")
    files["trainer_state.json"] = _save_json({"step": step, **(trainer_state or {})}, tmp / "trainer_state.json")
    _save_json({"files": files}, tmp / MANIFEST)  # last: it vouches for files already on disk
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(output_dir)
    for old in list_checkpoints(output_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (unfinished `.tmp` folders are ignored)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _CKPT.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest checkpoint folder, intact or not (`resume_checkpoint` verifies)."""
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1] if ckpts else None


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()  # hashlib.file_digest would do this from Python 3.11; 3.10 is supported
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _manifest_problem(path: Path) -> str | None:
    """What is wrong with the files of `path` measured against its manifest, or None."""
    try:
        files = json.loads((path / MANIFEST).read_text(encoding="utf-8"))["files"]
        entries = {name: (int(e["size"]), str(e["sha256"])) for name, e in files.items()}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        return f"{MANIFEST} is unreadable ({type(err).__name__}: {err})"
    for name in REQUIRED_FILES:
        if name not in entries:
            return f"{MANIFEST} does not list {name}"
    for name, (size, _) in entries.items():  # sizes first: cheap, and they name a truncation plainly
        if Path(name).name != name:
            return f"{MANIFEST} lists {name!r}, not a file of the checkpoint"
        if not (path / name).is_file():
            return f"{name} is missing"
        if (found := (path / name).stat().st_size) != size:
            return f"{name} is {found} bytes, {MANIFEST} says {size}"
    for name, (_, digest) in entries.items():
        if _sha256(path / name) != digest:
            return f"{name} does not match its sha256 in {MANIFEST} (changed after it was written)"
    return None


def _unlisted_problem(path: Path) -> str | None:
    """What is wrong with a checkpoint that has no manifest (written before manifests existed),
    found by loading every file, or None. A flipped bit in tensor data goes unnoticed here."""
    for name in REQUIRED_FILES:
        if not (path / name).is_file():
            return f"{name} is missing"
    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        int(state["step"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        return f"trainer_state.json is unreadable ({type(err).__name__}: {err})"
    for f in sorted(path.glob("*.pt")):
        if f.stat().st_size == 0:
            return f"{f.name} is empty"
        try:
            torch.load(f, map_location="cpu", weights_only=f.name not in _PICKLED_FILES)
        except Exception as err:  # noqa: BLE001 - a damaged zip or pickle raises any of a dozen types
            # torch's own message runs to several sentences of advice: its first one says what failed
            first = str(err).strip().splitlines()[0].split(". ")[0].rstrip(".") if str(err).strip() else ""
            return f"{f.name} does not load ({type(err).__name__}: {first})"
    return None


def checkpoint_problem(path: str | Path) -> str | None:
    """What is wrong with checkpoint folder `path` (a short phrase naming the file), or None when
    it is intact: every file the manifest lists is there with its size and sha256; without a
    manifest, every file loads."""
    path = Path(path)
    return _manifest_problem(path) if (path / MANIFEST).exists() else _unlisted_problem(path)


def latest_intact_checkpoint(output_dir: str | Path) -> tuple[Path | None, list[str]]:
    """``(the newest intact checkpoint, one warning line per newer checkpoint passed over)``;
    ``(None, [])`` when there is no checkpoint. Raises CheckpointError when there are checkpoints
    and none is intact: resuming from none of them, or starting afresh over them, would lose
    what they hold without saying so."""
    damaged: list[tuple[Path, str]] = []
    for ckpt in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return ckpt, [f"rlhfkit: warning: passing over damaged {c}: {p}; resuming from {ckpt.name}"
                          for c, p in damaged]
        damaged.append((ckpt, problem))
    if damaged:
        raise CheckpointError(f"{Path(output_dir)}: no intact checkpoint to resume from. "
                              + "; ".join(f"{c.name}: {p}" for c, p in damaged)
                              + ". Delete them, or use another --output_dir, to start afresh")
    return None, []


def resume_checkpoint(output_dir: str | Path, info: DistInfo | None = None) -> Path | None:
    """The checkpoint a run resumes from (`latest_intact_checkpoint`), its warnings printed to
    stderr. Over several processes rank 0 alone reads and hashes the files and sends its choice
    (or its error) to the others: one read of the files, and every rank resumes from the same
    checkpoint even if a file changed while they looked."""
    choice = None
    if info is None or info.is_main:
        try:
            path, warnings = latest_intact_checkpoint(output_dir)
            choice = {"name": path.name if path else None, "warnings": warnings, "error": None}
        except CheckpointError as err:
            choice = {"name": None, "warnings": [], "error": str(err)}
    choice = broadcast_from_main(choice, info)
    if choice["error"] is not None:
        raise CheckpointError(choice["error"])
    if info is None or info.is_main:
        for line in choice["warnings"]:
            print(line, file=sys.stderr, flush=True)
    return Path(output_dir) / choice["name"] if choice["name"] else None


def load_rank_rng(path: str | Path, rank: int) -> bool:
    """Restore this rank's RNG state from a checkpoint written by several processes; False when
    the checkpoint holds none (one process wrote it: ``rng.pt`` is the state)."""
    f = Path(path) / "rng_ranks.pt"
    if not f.exists():
        return False
    states = torch.load(f, weights_only=False)
    if rank >= len(states):
        raise ValueError(f"{path}: written by {len(states)} processes, resumed by more (rank {rank})")
    set_rng_state(states[rank])
    return True


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    restore_rng: bool = True,
    load_optimizer=None,
) -> dict:
    """Load a checkpoint into live objects; returns the trainer state dict.

    `load_optimizer(optimizer, state)` replaces `optimizer.load_state_dict` (sharded models)."""
    path = Path(path)
    if model is not None:
        unwrap(model).load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
    if optimizer is not None and (path / "optimizer.pt").exists():
        state = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        (load_optimizer or (lambda opt, st: opt.load_state_dict(st)))(optimizer, state)
    if scheduler is not None and (path / "scheduler.pt").exists():
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True))
    if restore_rng:
        set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    return json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
