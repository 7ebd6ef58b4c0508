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
loads: its truncated or broken files are caught, a flipped bit in tensor data cannot be. Its
trainer_state.json tells the two apart: one that names the manifest lost it (damage).
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

from rlhfkit.models.versions import fsync_dir

from .config import ConfigError
from .distributed import DistInfo, broadcast_from_main

_CKPT = re.compile(r"^checkpoint-(\d+)$")
MANIFEST = "manifest.json"
# the files every checkpoint holds (optimizer.pt, scheduler.pt and rng_ranks.pt only some)
REQUIRED_FILES = ("model.pt", "rng.pt", "trainer_state.json")
STATE_FILE = "trainer_state.json"
# pickled RNG states hold numpy arrays and Python tuples: not loadable with weights_only
_PICKLED_FILES = ("rng.pt", "rng_ranks.pt")


class CheckpointError(ConfigError):
    """No checkpoint in an output folder is intact: nothing to resume from."""


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


def save_manifested(folder: Path, torch_files: dict[str, Any], state_file: str, state: dict) -> None:
    """Write each of `torch_files` ({name: object}) with torch.save and `state` as JSON to
    `state_file` in `folder`, every one fsync'ed, then `manifest.json` with their sizes and sha256
    (last: it vouches for files already on disk). `state` gains ``"manifest": "manifest.json"``, so
    that a folder which lost its manifest is told from one written before manifests existed."""
    files = {name: _save_torch(obj, folder / name) for name, obj in torch_files.items()}
    files[state_file] = _save_json({**state, "manifest": MANIFEST}, folder / state_file)
    _save_json({"files": files}, folder / MANIFEST)
    fsync_dir(folder)


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
    files = {"model.pt": model_state if model_state is not None else unwrap(model).state_dict()}
    if optimizer_state is not None or optimizer is not None:
        files["optimizer.pt"] = optimizer_state if optimizer_state is not None else optimizer.state_dict()
    if scheduler is not None:
        files["scheduler.pt"] = scheduler.state_dict()
    files["rng.pt"] = rng_state()
    if rank_rng_states is not None:  # every rank's own stream (several processes), see load_rank_rng
        files["rng_ranks.pt"] = rank_rng_states
    save_manifested(tmp, files, STATE_FILE, {"step": step, **(trainer_state or {})})
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(output_dir)
    for old in checkpoints_to_prune(list_checkpoints(output_dir), step, keep_last):
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_step(path: Path) -> int:
    return int(_CKPT.match(path.name).group(1))


def checkpoints_to_prune(checkpoints: list[Path], step: int, keep_last: int) -> list[Path]:
    """What a save of ``checkpoint-<step>`` removes of `checkpoints` (oldest first): every newer
    one, which belongs to a run this one replaced (a damaged checkpoint passed over on resume, or
    an earlier run's under ``--resume false``; left, a later resume would take it up, or the
    count below would keep it and remove the one just written), and all but the newest
    `keep_last` of the rest (0 keeps them all)."""
    newer = [c for c in checkpoints if checkpoint_step(c) > step]
    rest = [c for c in checkpoints if checkpoint_step(c) <= step]
    return newer + (rest[:-keep_last] if keep_last > 0 else [])


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


def _manifest_problem(path: Path, required: tuple[str, ...]) -> str | None:
    """What is wrong with the files of `path` measured against its manifest, or None."""
    try:
        files = json.loads((path / MANIFEST).read_text(encoding="utf-8"))["files"]
        entries = {name: (int(e["size"]), str(e["sha256"])) for name, e in files.items()}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        return f"{MANIFEST} is unreadable ({type(err).__name__}: {err})"
    for name in required:
        if name not in entries:
            return f"{MANIFEST} does not list {name}"
    for name, (size, _) in entries.items():  # sizes first: cheap, and they name a truncation plainly
        if Path(name).name != name:
            return f"{MANIFEST} lists {name!r}, not a file of the checkpoint"
        if not (path / name).is_file():
            return f"{name} is missing"
        if (found := (path / name).stat().st_size) != size:
            return f"{name} is {found} bytes, {MANIFEST} says {size}"
    # a file the loaders would read that the manifest does not vouch for (an optimizer.pt copied
    # in from elsewhere) would be loaded unchecked
    for f in sorted(path.iterdir()):
        if f.name not in entries and (f.suffix == ".pt" or f.name in required):
            return f"{f.name} is not listed in {MANIFEST}"
    for name, (_, digest) in entries.items():
        try:
            found = _sha256(path / name)
        except OSError as err:  # a bad sector reads as EIO: damage like any other, not a traceback
            return f"{name} is unreadable ({type(err).__name__}: {err.strerror or err})"
        if found != digest:
            return f"{name} does not match its sha256 in {MANIFEST} (changed after it was written)"
    return None


def _unlisted_problem(path: Path, required: tuple[str, ...], state_file: str) -> str | None:
    """What is wrong with a folder that has no manifest (written before manifests existed),
    found by loading every file, or None. A flipped bit in tensor data goes unnoticed here."""
    for name in required:
        if not (path / name).is_file():
            return f"{name} is missing"
    try:
        state = json.loads((path / state_file).read_text(encoding="utf-8"))
        int(state["step"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        return f"{state_file} is unreadable ({type(err).__name__}: {err})"
    if "manifest" in state:  # written with one (save_manifested): it is lost, not yet to come
        return f"{MANIFEST} is missing ({state_file} says there was one)"
    for f in sorted(path.glob("*.pt")):
        if f.stat().st_size == 0:
            return f"{f.name} is empty"
        try:
            torch.load(f, map_location="cpu", weights_only=f.name not in _PICKLED_FILES)
        except Exception as err:  # noqa: BLE001 - a damaged zip or pickle raises any of a dozen types
            return f"{f.name} does not load ({load_failure(err)})"
    return None


def load_failure(err: BaseException) -> str:
    """``"<type>: <first sentence>"`` of an error torch.load raised: torch's own message runs to
    several sentences of advice, its first one says what failed."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0].split('. ')[0].rstrip('.') if text else ''}"


def folder_problem(path: str | Path, required: tuple[str, ...], state_file: str) -> str | None:
    """What is wrong with a folder written by `save_manifested` (a short phrase naming the file),
    or None when it is intact: every file its manifest lists is there with its size and sha256
    and no file the loaders read is unlisted; without a manifest (and a `state_file` that does not
    name one), every file loads."""
    path = Path(path)
    if (path / MANIFEST).exists():
        return _manifest_problem(path, required)
    return _unlisted_problem(path, required, state_file)


def checkpoint_problem(path: str | Path) -> str | None:
    """What is wrong with checkpoint folder `path` (`folder_problem`), or None when it is intact."""
    return folder_problem(path, REQUIRED_FILES, STATE_FILE)


def latest_intact_checkpoint(output_dir: str | Path) -> tuple[Path | None, list[str]]:
    """``(the newest intact checkpoint, one warning line per newer checkpoint passed over)``;
    ``(None, [])`` when there is no checkpoint. Raises CheckpointError when there are checkpoints
    and none is intact: resuming from none of them, or starting afresh over them, would lose
    what they hold without saying so."""
    damaged: list[tuple[Path, str]] = []
    for ckpt in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return ckpt, [
                f"rlhfkit: warning: passing over damaged {c}: {p}; resuming from {ckpt.name}" for c, p in damaged
            ]
        damaged.append((ckpt, problem))
    if damaged:
        raise CheckpointError(
            f"{Path(output_dir)}: no intact checkpoint to resume from. "
            + "; ".join(f"{c.name}: {p}" for c, p in damaged)
            + ". Delete them, or use another --output_dir, to start afresh"
        )
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
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    state.pop("manifest", None)  # save_manifested's note, not the trainer's
    return state
