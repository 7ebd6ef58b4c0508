"""What identifies a run: the settings and the data its result depends on.

Three checks ask "is this the same run?", and all take the answer from here:

- a pipeline or loop stage's fingerprint (``stage_settings``, ``stage_fingerprint``): the same
  fingerprint keeps a finished stage, or resumes an interrupted one in its folder
  (``pipeline/cache.py``);
- a checkpoint's resume fingerprint and examples digest (``resume_fingerprint``,
  ``check_resume_config``, ``examples_digest``, ``check_resume_data``): a run continues only from
  a checkpoint written under its own settings, on its own examples;
- a finished run in an output folder (``finished_run``): a rerun returns it, or is refused when
  the settings differ.

One list, ``RESULT_FREE_FIELDS``, names the fields that may differ without making another run.
Every field a stage fingerprint leaves out is in it, so a value changed there never keeps a
stage whose checkpoint then refuses to resume it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from .config import ConfigError
from .distributed import DistInfo

# Fields that may change between a run and its continuation without making it another run: where
# it writes, how often it logs, evaluates, checkpoints or writes its sample table, its threads,
# activation recomputation (the same gradients), and its deadline (``max_minutes`` says where a
# run stops, not what its steps compute; a resumed run may be given another).
RESULT_FREE_FIELDS = frozenset(
    {
        "output_dir",
        "output",
        "resume",
        "save_every",
        "keep_checkpoints",
        "log_every",
        "eval_every",
        "tensorboard",
        "threads",
        "sample_every",
        "num_sample_rows",
        "gradient_checkpointing",
        "max_minutes",
    }
)

# Result-free fields that stage fingerprints have held from the start: taking them out would change
# the fingerprint of every cached stage and redo it. Kept, a change of them reruns the stage afresh
# (a stage that stopped at its deadline should run again under another one).
STAGE_KEPT_FIELDS = frozenset({"gradient_checkpointing", "max_minutes"})

# Fields added after runs were made: left out of fingerprints while they hold these values, so that
# a checkpoint (or a pipeline stage) made before the field existed still resumes (stays cached).
FINGERPRINT_DEFAULTS = {"precision": "fp32", "drop_duplicates": True, "normalise_ratings": "none"}
# later-added config sections, left out while switched off (whatever their other fields say)
FINGERPRINT_OFF_SECTIONS = {"adversarial": "discriminator"}


def at_fingerprint_default(key: str, value: Any) -> bool:
    """Whether ``key`` is a later-added field holding its default, or a later-added section that
    is switched off (left out of fingerprints)."""
    if key in FINGERPRINT_OFF_SECTIONS:
        return isinstance(value, dict) and not value.get(FINGERPRINT_OFF_SECTIONS[key])
    return key in FINGERPRINT_DEFAULTS and value == FINGERPRINT_DEFAULTS[key]


def with_fingerprint_defaults(fingerprint: dict) -> dict:
    """``fingerprint`` with the later-added fields it leaves out named at their defaults, so that
    a saved and a current fingerprint compare field by field (a run made before a field existed
    ran at its default)."""
    return {**FINGERPRINT_DEFAULTS, **fingerprint}


# ----------------------------------------------------------------------------- stage fingerprints
def stage_settings(section: Any, wired: set[str] = frozenset()) -> dict:
    """The JSON-able settings of a config section that a stage's result depends on (``wired``:
    the fields the pipeline sets from other stages, covered by their fingerprints). A value naming
    a file or folder that exists also carries what is in it (``content_token``), so editing a
    prompt or data file reruns the stages that read it. ``eval_every`` counts when
    ``best_metric`` is set (it decides which evaluations the kept weights are chosen from)."""
    d = dataclasses.asdict(section) if dataclasses.is_dataclass(section) else dict(section)
    left_out = (RESULT_FREE_FIELDS - STAGE_KEPT_FIELDS) - ({"eval_every"} if d.get("best_metric") else set())
    return {
        k: with_content(v)
        for k, v in d.items()
        if k not in left_out and k not in wired and not at_fingerprint_default(k, v)
    }


def stage_fingerprint(stage: str, own: Any, inputs: dict[str, str]) -> str:
    """SHA-256 of a stage's own settings and the fingerprints of the stages it reads (so a change
    reruns the stage and every stage after it that reads it)."""
    blob = json.dumps(
        {"stage": stage, "settings": own, "inputs": dict(sorted(inputs.items()))}, sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()


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
            return (
                file_digest(path) if st.st_size <= CONTENT_HASH_LIMIT else f"size {st.st_size} mtime {st.st_mtime_ns}"
            )
        if path.is_dir():
            entries = sorted(
                (str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns)
                for f in path.rglob("*")
                if f.is_file()
            )
            return hashlib.sha256(json.dumps(entries).encode()).hexdigest()
    except (OSError, ValueError):  # a name too long to be a path, a file gone while listed
        return None
    return None


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- resuming a checkpoint
def resume_fingerprint(config: Any) -> dict:
    """The config fields a checkpoint's continuation depends on (JSON-able), stored with it."""
    d = {
        k: v
        for k, v in dataclasses.asdict(config).items()
        if k not in RESULT_FREE_FIELDS and not at_fingerprint_default(k, v)
    }
    return json.loads(json.dumps(d, default=str))


def fingerprint_diffs(saved: dict, now: dict, keys: set[str] | None = None) -> list[str]:
    """``"field: then -> now"`` for each field (of ``keys``, default: of either side) whose value
    differs, result-free fields aside (a fingerprint stored by an older version may hold some)."""
    saved, now = with_fingerprint_defaults(saved), with_fingerprint_defaults(now)
    keys = set(saved) | set(now) if keys is None else keys
    return [
        f"{k}: {saved.get(k)!r} -> {now.get(k)!r}"
        for k in sorted(keys - RESULT_FREE_FIELDS)
        if saved.get(k) != now.get(k)
    ]


def check_resume_config(ckpt: Any, config: Any) -> None:
    """Refuse to resume from a checkpoint written under different settings: the data position,
    schedule and weights would silently belong to another run (exact resume needs the same config)."""
    saved = json.loads((Path(ckpt) / "trainer_state.json").read_text(encoding="utf-8")).get("config")
    if saved is None:  # a checkpoint from before fingerprints were stored
        return
    diffs = fingerprint_diffs(saved, resume_fingerprint(config))
    if diffs:
        raise ConfigError(
            f"{ckpt} was written with other settings ({'; '.join(diffs)}); resume with the "
            "same settings, or start afresh with --resume false or another --output_dir"
        )


# example fields that are not data: DPO's / KTO's reference log-probs (the cache's key covers them)
NOT_DATA_FIELDS = ("ref",)


def examples_digest(examples: list[Any]) -> dict:
    """``{"examples": n, "sha256": ...}`` of the training examples (token ids, targets, weights):
    stored in each checkpoint, so that a run resumes only on the examples it was trained on (the
    data file edited, or a split or duplicate rule changed since, would otherwise continue the
    schedule on other examples, some perhaps held out before)."""
    h = hashlib.sha256()
    for e in examples:
        if isinstance(e, dict):
            e = {k: v for k, v in e.items() if k not in NOT_DATA_FIELDS}
        h.update(json.dumps(e, sort_keys=True, default=str).encode())
        h.update(b"\n")
    return {"examples": len(examples), "sha256": h.hexdigest()}


def check_resume_data(ckpt: Any, digest: dict) -> None:
    """Refuse to resume from a checkpoint trained on other examples (a checkpoint written before
    digests were stored is not checked)."""
    saved = json.loads((Path(ckpt) / "trainer_state.json").read_text(encoding="utf-8")).get("data")
    if saved is None or saved == digest:
        return
    raise ConfigError(
        f"{ckpt} was trained on other examples ({saved['examples']} then, {digest['examples']} now; "
        f"digest {saved['sha256'][:12]} -> {digest['sha256'][:12]}): the data file, the held-out "
        "split or the duplicates dropped changed since; resume on the same data, or start afresh "
        "with --resume false or another --output_dir"
    )


# ----------------------------------------------------------------------------- a finished run
def finished_run(config, name: str, info: DistInfo) -> dict | None:
    """The final metrics of a run that already finished in ``config.output_dir`` (``model/``,
    ``config.yaml`` and ``final_metrics.json`` written by ``recipes.common.save_final``) under
    the same settings: the recipe returns them instead of training again, as a rerun of an
    interrupted run continues from its checkpoint. Settings that change the result (all but
    ``RESULT_FREE_FIELDS``) that differ are refused, naming them: a rerun must never quietly
    overwrite a finished model with another run's. ``--resume false`` (``config.resume``) trains
    afresh and overwrites; None then, and when nothing finished there."""
    import yaml

    out = Path(config.output_dir)
    done = out / "final_metrics.json"
    if not config.resume or not done.is_file() or not (out / "model").is_dir() or not (out / "config.yaml").is_file():
        return None
    try:
        saved = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8")) or {}
        final = json.loads(done.read_text(encoding="utf-8"))
        if not isinstance(saved, dict) or not isinstance(final, dict):
            raise ValueError("not a mapping")
    except (OSError, ValueError, yaml.YAMLError) as err:  # ValueError: JSON and UTF-8 decoding errors too
        # what it finished with is unknown: it is not taken as finished, and resumes from its newest
        # intact checkpoint (or trains afresh), writing model/, config.yaml and the metrics again
        if info.is_main:
            print(
                f"rlhfkit: warning: {out}: the finished run's config.yaml or final_metrics.json is unreadable "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); it is trained again "
                "(from its newest intact checkpoint, if any)",
                file=sys.stderr,
                flush=True,
            )
        return None
    saved = json.loads(json.dumps(saved, default=str))
    # only the fields both sides name: config.yaml holds every field, the fingerprint the result's;
    # a field added later counts at its default where one side lacks it (a run finished before the
    # field existed ran at that default; the fingerprint leaves the default out)
    saved, now = with_fingerprint_defaults(saved), with_fingerprint_defaults(resume_fingerprint(config))
    diffs = fingerprint_diffs(saved, now, set(saved) & set(now))
    if diffs:
        raise ConfigError(
            f"{out} holds a finished {name} run with other settings ({'; '.join(diffs)}); give another "
            "--output_dir, or --resume false to train again and overwrite it"
        )
    if info.is_main:
        print(
            f"{name}: {out} holds this run, finished: model in {out / 'model'} (nothing to do; "
            "--resume false trains again)"
        )
    return final
