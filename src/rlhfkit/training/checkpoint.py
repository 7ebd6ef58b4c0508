"""Checkpoints that resume exactly.

A checkpoint is a folder `checkpoint-<step>` holding everything the next step depends on:
model weights (full precision), optimiser and scheduler state, every RNG state, and the
trainer's own state (step, epoch, position in the epoch's shuffled order, controller states).
It is written to `checkpoint-<step>.tmp`, fsync'ed, then renamed, so a SIGKILL at any moment
leaves either the previous complete checkpoint or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

_CKPT = re.compile(r"^checkpoint-(\d+)$")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_torch(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


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
    _save_torch(model_state if model_state is not None else unwrap(model).state_dict(), tmp / "model.pt")
    if optimizer_state is not None or optimizer is not None:
        _save_torch(optimizer_state if optimizer_state is not None else optimizer.state_dict(),
                    tmp / "optimizer.pt")
    if scheduler is not None:
        _save_torch(scheduler.state_dict(), tmp / "scheduler.pt")
    _save_torch(rng_state(), tmp / "rng.pt")
    if rank_rng_states is not None:  # every rank's own stream (several processes), see load_rank_rng
        _save_torch(rank_rng_states, tmp / "rng_ranks.pt")
    state = {"step": step, **(trainer_state or {})}
    with open(tmp / "trainer_state.json", "w", encoding="utf-8") as f:
        json.dump(state, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
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
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1] if ckpts else None


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
