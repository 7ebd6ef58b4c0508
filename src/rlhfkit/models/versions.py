"""A learner's folder of policy versions: ``rlhfkit learn`` writes it, ``rlhfkit serve`` follows it.

Layout of ``LEARN_DIR``::

    current.json                {"version": "v3", "promoted_at": t, "previous": "v2"}
    versions/v0/version.json    {"version": "v0", "parent": null, "base": "<model spec>", "created": t}
    versions/vN/version.json    {"version": "vN", "parent": "vM", "base": "<model spec>", "created": t,
                                 "adapter_on": "vK" (default: parent), ... lineage the learner adds}
    versions/vN/adapter/        a peft LoRA adapter (``save_pretrained``) trained on ``adapter_on``'s weights
    versions/vN/model/          or a full Hugging Face model folder (with its tokenizer)

``v0`` is the base model (no weights of its own: its ``base`` is a model spec ``load_policy``
takes). A version with ``adapter/`` is its ``adapter_on`` version's weights with the adapter merged
in (``merge_and_unload``: a plain model again, so the native sampler runs it); a chain of adapters
is merged in order. A version with ``model/`` stands alone.

One writer per thing: the learner writes versions and ``current.json`` (and ``learn rollback``
replaces it; both under an exclusive lock on ``.current.lock``, so a round's ``promote`` with
``expect_current`` never lands on top of a rollback made while the round ran); servers only read. A
version folder is written under a temporary name and renamed into place whole
(``save_version``) before ``promote`` names it in ``current.json``, which is replaced atomically
(temp file, fsync, ``os.replace``, fsync of the folder): a reader sees the old or the new file,
never half of one, and never a version that is not complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "VersionError",
    "CurrentMoved",
    "is_learn_dir",
    "init_learn_dir",
    "save_version",
    "promote",
    "current_version",
    "read_current",
    "version_info",
    "list_versions",
    "load_version",
    "atomic_write_json",
    "CURRENT_FILE",
]

CURRENT_FILE = "current.json"
VERSION_FILE = "version.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class VersionError(ValueError):
    """A learner folder, version or ``current.json`` that cannot be read or loaded (names the file)."""


class CurrentMoved(VersionError):
    """``promote(..., expect_current=v)`` found another version current than ``v``."""


def is_learn_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a learner folder (it holds ``current.json`` or ``versions/``)."""
    p = Path(path)
    return p.is_dir() and ((p / CURRENT_FILE).is_file() or (p / "versions").is_dir())


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise VersionError(f"{name!r} is not a version name (letters, digits, '_', '.', '-'; at most 64)")
    return name


def version_dir(learn_dir: str | os.PathLike, name: str) -> Path:
    return Path(learn_dir) / "versions" / _check_name(name)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON so that a reader (or a crash) sees the old file or the new one whole:
    a temporary file in the same folder, fsynced, renamed over ``path``, then the folder fsynced
    (the rename itself durable)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename or link inside ``folder`` durable (its directory entry synced)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without directory handles (Windows): the rename is what there is
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json_object(path: str | os.PathLike) -> dict:
    """The JSON object in ``path``; ``VersionError`` naming the file (and the line and column
    where the JSON breaks) if it is missing, unreadable or not an object. A learner folder's files
    are written whole (:func:`atomic_write_json`), so a broken one was changed by hand or damaged:
    the learner stops with this message instead of a traceback."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VersionError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise VersionError(
            f"{path}: not a JSON file ({e}); rlhfkit writes it whole, so it was changed by hand or "
            "damaged: restore it from a copy, or start a new folder"
        ) from None
    if not isinstance(data, dict):
        raise VersionError(f"{path}: expected a JSON object")
    return data


def read_current(learn_dir: str | os.PathLike) -> dict:
    """``current.json``: ``{"version", "promoted_at", ...}``; ``VersionError`` naming the file."""
    path = Path(learn_dir) / CURRENT_FILE
    data = read_json_object(path)
    try:
        _check_name(data.get("version"))
    except VersionError as e:
        raise VersionError(f"{path}: field 'version': {e}") from None
    return data


def current_version(learn_dir: str | os.PathLike) -> str:
    """The name of the promoted version (``current.json``'s ``version``)."""
    return read_current(learn_dir)["version"]


def version_info(learn_dir: str | os.PathLike, name: str) -> dict:
    """``versions/NAME/version.json`` checked: its ``version`` is NAME; ``v0`` (no parent) names its
    base model; a version with a parent has ``adapter/`` or ``model/``."""
    folder = version_dir(learn_dir, name)
    path = folder / VERSION_FILE
    info = read_json_object(path)
    if info.get("version") != name:
        raise VersionError(f"{path}: field 'version' is {info.get('version')!r}, expected {name!r}")
    parent = info.get("parent")
    if parent is None:
        if not isinstance(info.get("base"), str) or not info["base"]:
            raise VersionError(f"{path}: field 'base': a version without a parent names its base model")
    else:
        _check_name(parent)
        if not (folder / "adapter").is_dir() and not (folder / "model").is_dir():
            raise VersionError(f"{folder}: neither adapter/ nor model/ (a version after v0 carries its weights)")
    return info


def _order(name: str) -> tuple:
    m = re.fullmatch(r"v(\d+)", name)
    return (0, int(m.group(1)), name) if m else (1, 0, name)


def list_versions(learn_dir: str | os.PathLike) -> list[dict]:
    """Every complete version (``version.json`` readable), v0, v1, ... first, each with
    ``"current": bool``; folders being written (temporary names) are not versions yet."""
    root = Path(learn_dir) / "versions"
    try:
        current = current_version(learn_dir)
    except VersionError:
        current = None
    out = []
    for d in sorted(
        (p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name)) if root.is_dir() else [],
        key=lambda p: _order(p.name),
    ):
        try:
            info = version_info(learn_dir, d.name)
        except VersionError:
            continue
        out.append({**info, "current": d.name == current})
    return out


def init_learn_dir(learn_dir: str | os.PathLike, base: str) -> dict:
    """Make ``LEARN_DIR`` with ``v0`` = the base model ``base`` (a model spec) promoted, unless it
    exists already (then nothing changes); returns ``v0``'s ``version.json``."""
    learn_dir = Path(learn_dir)
    if (learn_dir / "versions" / "v0" / VERSION_FILE).is_file():
        return version_info(learn_dir, "v0")
    (learn_dir / "versions").mkdir(parents=True, exist_ok=True)
    save_version(learn_dir, "v0", parent=None, info={"base": str(base)})
    if not (learn_dir / CURRENT_FILE).is_file():
        promote(learn_dir, "v0")
    return version_info(learn_dir, "v0")


def save_version(
    learn_dir: str | os.PathLike,
    name: str,
    *,
    parent: str | None,
    model: Any = None,
    adapter: Any = None,
    tokenizer: Any = None,
    info: dict | None = None,
) -> Path:
    """Write ``versions/NAME`` whole: ``adapter`` (a peft model, saved with ``save_pretrained``,
    or an adapter folder, copied) trained on ``info["adapter_on"]`` (default ``parent``), or
    ``model`` (a Hugging Face model, or a model folder, copied; ``tokenizer`` saved beside it), and
    ``version.json`` = ``info`` + name, parent, created, base (from the parent when not given).
    Written in a temporary folder and renamed into place: a reader never meets half a version.
    An existing version is never overwritten (``VersionError``)."""
    learn_dir = Path(learn_dir)
    final = version_dir(learn_dir, name)
    if final.exists():
        raise VersionError(f"{final}: version {name} exists already (versions are never rewritten)")
    if (model is None) == (adapter is None) and parent is not None:
        raise VersionError(f"version {name}: give its weights, as an adapter or a model (one of them)")
    record = dict(info or {})
    if parent is not None:
        parent_info = version_info(learn_dir, parent)
        record.setdefault("base", parent_info.get("base"))
        if adapter is not None:
            record.setdefault("adapter_on", parent)
            version_info(learn_dir, record["adapter_on"])
    record.update(version=name, parent=parent, created=record.get("created", time.time()))
    root = learn_dir / "versions"
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{name}-"))
    try:
        for what, sub in ((adapter, "adapter"), (model, "model")):
            if what is None:
                continue
            if isinstance(what, (str, os.PathLike)):
                shutil.copytree(what, tmp / sub)
            else:
                what.save_pretrained(tmp / sub)
                if sub == "model" and tokenizer is not None:
                    tokenizer.save_pretrained(tmp / sub)
        atomic_write_json(tmp / VERSION_FILE, record)
        _fsync_tree(tmp)
        os.replace(tmp, final)  # fails (not overwrites) if a version of that name appeared meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(root)
    return final


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    for d in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        fsync_dir(d)


@contextmanager
def _current_lock(learn_dir: Path):
    """An exclusive ``flock`` on ``LEARN_DIR/.current.lock`` while ``current.json`` is read and
    replaced (a lock the kernel drops when its process dies, so a kill leaves none behind)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (the check and the replacement are then not one step)
        yield
        return
    with open(learn_dir / ".current.lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def promote(learn_dir: str | os.PathLike, version: str | os.PathLike, expect_current: str | None = None) -> dict:
    """Make ``version`` (a name, or its folder under ``versions/``) the current one: checks that it
    is complete, then replaces ``current.json`` atomically. With ``expect_current``, only while
    that version is current (checked and replaced under one lock; else ``CurrentMoved``). Returns
    the new ``current.json``."""
    learn_dir = Path(learn_dir)
    name = Path(version).name if isinstance(version, os.PathLike) or os.sep in str(version) else str(version)
    if isinstance(version, os.PathLike) or os.sep in str(version):
        if Path(version).resolve() != version_dir(learn_dir, name).resolve():
            raise VersionError(f"{version}: not a folder of {learn_dir / 'versions'}")
    version_info(learn_dir, name)
    with _current_lock(learn_dir):
        try:
            previous = current_version(learn_dir)
        except VersionError:
            previous = None
        if expect_current is not None and previous != expect_current:
            raise CurrentMoved(f"{learn_dir / CURRENT_FILE}: names {previous}, not {expect_current}")
        record = {"version": name, "promoted_at": time.time(), "previous": previous}
        atomic_write_json(learn_dir / CURRENT_FILE, record)
    return record


def load_version(learn_dir: str | os.PathLike, name: str, dtype=None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a version, ready to generate (left padding, pad != EOS): ``v0``
    the base model; an adapter version its ``adapter_on`` version with the adapter merged in
    (``merge_and_unload``, so it is a plain model again); a model version its folder.
    ``VersionError`` (naming the folder) when it cannot be loaded."""
    import torch

    from .loading import load_policy

    dtype = torch.float32 if dtype is None else dtype
    chain: list[tuple[str, dict]] = []
    seen = set()
    current = name
    while True:  # down the adapters to a version that stands alone (v0 or model/)
        if current in seen:
            raise VersionError(f"{version_dir(learn_dir, name)}: its adapters form a cycle at {current}")
        seen.add(current)
        info = version_info(learn_dir, current)
        chain.append((current, info))
        folder = version_dir(learn_dir, current)
        if info.get("parent") is None or (folder / "model").is_dir():
            break
        current = info.get("adapter_on") or info["parent"]
    root_name, root_info = chain[-1]
    root_folder = version_dir(learn_dir, root_name)
    spec = str(root_folder / "model") if (root_folder / "model").is_dir() else root_info["base"]
    try:
        model, tokenizer = load_policy(spec, dtype=dtype)
    except Exception as e:  # noqa: BLE001 - any loader failure is this version's
        raise VersionError(f"{version_dir(learn_dir, name)}: cannot load {spec}: {e}") from None
    for vname, _ in reversed(chain[:-1]):
        adapter = version_dir(learn_dir, vname) / "adapter"
        try:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        except Exception as e:  # noqa: BLE001 - a damaged or mismatched adapter
            raise VersionError(f"{adapter}: cannot apply the adapter: {e}") from None
    return model.eval(), tokenizer
