"""A policy line: what ``rlhfkit serve --model`` and ``feedback serve --policy`` take, and which
version of it answers now.

A spec is one of
- a model: a folder, a ``.gguf`` file, an alias (``smollm2-135m``, ``tiny``) or a hub name;
- an ``rlhfkit loop`` output folder (it holds ``loop_state.json``): the policy of its newest
  finished round (``round-N/policy/model``), its initial policy before that;
- a learner folder (``models/versions.py``: ``current.json`` + ``versions/``): its promoted version.

``resolve(spec)`` reads the few files that say which version is current (cheap: call it as often
as needed) and returns a ``PolicyVersion``; ``load(version)`` loads it. ``change_token(spec)`` is
what a watcher polls: it changes when the line may have moved (the state file was replaced).
Only files are read here; nothing of ``loop``, ``serve`` or ``feedback`` is imported, so every
layer above ``models`` can follow a line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import versions

__all__ = [
    "PolicyVersion",
    "NoPolicyYet",
    "resolve",
    "load",
    "change_token",
    "current_policy",
    "loop_policy",
    "rounds_done",
]


class NoPolicyYet(LookupError):
    """The loop has not finished its setup: there is no policy to generate with yet."""


@dataclass(frozen=True)
class PolicyVersion:
    """One version of a policy line. ``kind``: ``model``, ``loop`` or ``learner``; ``version``: the
    name stored with every completion it writes (a learner's ``vN``, a loop's ``round-N``, a
    model's own spec); ``path``: what ``load`` loads (a model spec, or the learner's version
    folder); ``line``: the spec as given."""

    kind: str
    line: str
    version: str
    path: str

    def describe(self) -> str:
        """A phrase for a start-up line."""
        if self.kind == "learner":
            return f"from the learner {self.line}, its promoted version {self.version}: {self.path}"
        if self.kind == "loop":
            n, done = int(self.version.split("-")[1]), rounds_done(self.line)
            policy = f"round {n}'s policy" if n else "its initial policy"
            if n < done:  # the newest round's policy is being redone by a resumed loop, or gone
                which = f"{policy}: round {done}'s, the newest finished, is not there whole (being redone, or removed)"
            else:
                which = f"{policy}, the newest finished round" if n else "its initial policy, no round finished yet"
            return f"from the loop {self.line}, {which}: {self.path}"
        return str(self.path)


def resolve(spec: str) -> PolicyVersion:
    """The version of ``spec`` that is current now. Raises ``NoPolicyYet`` for a loop still in its
    setup and ``versions.VersionError`` / ``ValueError`` for a learner or loop folder whose state
    file cannot be read."""
    spec = str(spec)
    if versions.is_learn_dir(spec):
        name = versions.current_version(spec)
        versions.version_info(spec, name)
        return PolicyVersion("learner", spec, name, str(versions.version_dir(spec, name)))
    path, round_ = loop_policy(spec)
    if round_ is not None:
        return PolicyVersion("loop", spec, f"round-{round_}", path)
    return PolicyVersion("model", spec, spec, spec)


def load(version: PolicyVersion, dtype=None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of ``version`` (left padding, pad != EOS)."""
    import torch

    from .loading import load_policy

    dtype = torch.float32 if dtype is None else dtype
    if version.kind == "learner":
        return versions.load_version(version.line, version.version, dtype=dtype)
    return load_policy(version.path, dtype=dtype)


def change_token(spec: str) -> tuple | None:
    """What changes when the line may have moved: the identity of the learner's ``current.json``
    or the loop's ``loop_state.json`` (both replaced by a rename, so a new inode and mtime); None
    for a model, which never moves."""
    for name in (versions.CURRENT_FILE, "loop_state.json"):
        path = Path(spec) / name
        try:
            st = os.stat(path)
        except OSError:
            continue
        return (name, st.st_ino, st.st_mtime_ns, st.st_size)
    return None


def current_policy(spec: str) -> str:
    """The model ``spec`` names: itself, or for a loop folder (it holds ``loop_state.json``) the
    policy of its last finished round, else its initial policy."""
    return loop_policy(spec)[0]


def loop_policy(spec: str) -> tuple[str, int | None]:
    """``(model, round)``: for a loop folder the policy ``current_policy`` names and the round
    that made it (0: the initial policy); for anything else ``(spec, None)``. The round is the
    newest one up to ``rounds_done`` whose policy stage is finished: a resumed loop with other
    settings redoes its rounds while ``loop_state.json`` still counts the earlier run's, so the
    newest round's policy may be half written (its ``stage.json`` says running) or gone."""
    folder = Path(spec)
    state_file = folder / "loop_state.json"
    if not state_file.is_file():
        return spec, None
    done = rounds_done(spec)
    # the folder is found from the loop's own layout, not from the recorded path, which is
    # relative to wherever the loop was started
    for r in range(done, 0, -1):
        if _finished(folder / f"round-{r}" / "policy"):
            return str(folder / f"round-{r}" / "policy" / "model"), r
    setup = folder / "setup"
    if _finished(setup):  # a tiny initial model built by the loop
        return str(setup / "model"), 0
    record = _stage_record(setup)
    if record is not None and record.get("status") == "done":
        try:
            return str(record["outputs"]["model"]), 0
        except (KeyError, TypeError):
            pass
    raise NoPolicyYet(f"{folder}: the loop has no policy yet (its setup has not finished)")


def rounds_done(spec: str) -> int:
    """The rounds a loop folder's ``loop_state.json`` counts as finished (0 without one)."""
    state_file = Path(spec) / "loop_state.json"
    if not state_file.is_file():
        return 0
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{state_file}: not JSON ({e})") from None
    try:
        return int(state.get("rounds_done") or 0) if isinstance(state, dict) else 0
    except (TypeError, ValueError):
        raise ValueError(f"{state_file}: rounds_done is not a number ({state.get('rounds_done')!r})") from None


def _stage_record(stage_dir: Path) -> dict | None:
    try:
        record = json.loads((stage_dir / "stage.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _finished(stage_dir: Path) -> bool:
    """Whether the stage folder holds a whole model: ``model/config.json``, and its ``stage.json``
    (the loop writes one saying running before the stage writes anything) says done or is not
    there (a folder put together by hand)."""
    if not (stage_dir / "model" / "config.json").is_file():
        return False
    if not (stage_dir / "stage.json").exists():
        return True
    record = _stage_record(stage_dir)
    return record is not None and record.get("status") == "done"
