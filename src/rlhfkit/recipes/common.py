"""Small pieces the recipes share: named data sets, held-out splits, saving the result."""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhfkit.training.config import save_config
from rlhfkit.training.distributed import DistInfo


@dataclass
class LoraConfig:
    r: int = field(default=0, metadata={"help": "LoRA rank (0 = full fine-tuning)"})
    alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    dropout: float = field(default=0.0, metadata={"help": "LoRA dropout (off by default: PPO detail 8)"})
    target_modules: str = field(default="all-linear", metadata={"help": "peft target_modules"})


def validate_data_fields(config) -> None:
    """Checks of the data fields the supervised recipes share (those present on `config`), so a
    typo is a config error before any model is loaded, never a silent default."""
    if getattr(config, "on_error", "raise") not in ("raise", "skip"):
        raise ValueError(f"field 'on_error': {config.on_error!r} is not one of ['raise', 'skip']")
    if getattr(config, "ties", "drop") not in ("drop", "keep"):
        raise ValueError(f"field 'ties': {config.ties!r} is not one of ['drop', 'keep']")
    if not 0 <= getattr(config, "eval_fraction", 0.0) < 1:
        raise ValueError(f"field 'eval_fraction': {config.eval_fraction} is not in [0, 1)")
    if getattr(config, "max_length", 1) < 1:
        raise ValueError(f"field 'max_length': must be >= 1, got {config.max_length}")


def named_set(name: str, kind: str, ties: str = "drop"):
    """The shared real data sets by name; `None` when `name` is not one of them.

    kind 'sft': finegrained-corrections, oasst-best; kind 'pairs': hh-rlhf, finegrained, oasst.
    """
    from rlhfkit.data import shared_sets

    if kind == "sft":
        if name == "finegrained-corrections":
            return shared_sets.load_finegrained(ties=ties).demonstrations
        if name == "oasst-best":
            return shared_sets.load_oasst().demonstrations
    if kind == "pairs":
        if name == "hh-rlhf":
            return shared_sets.load_hh_rlhf()
        if name == "finegrained":
            return shared_sets.load_finegrained(ties=ties).pairs
        if name == "oasst":
            return shared_sets.load_oasst().pairs
    return None


def load_training_records(source: str, kind: str, on_error: str = "raise", ties: str = "drop",
                          max_chars: int = 100_000) -> list:
    """Records from a named shared set or a file (JSONL, JSON, gz); reports skipped lines.
    ``a+b`` (not itself a file) is the records of ``a`` followed by those of ``b``, e.g.
    ``finegrained+oasst`` for preference-model pretraining on both."""
    if "+" in source and not Path(source).exists():
        return [r for part in source.split("+")
                for r in load_training_records(part, kind, on_error=on_error, ties=ties, max_chars=max_chars)]
    records = named_set(source, kind, ties)
    if records is not None:
        return list(records)
    from rlhfkit.data.readers import read_records

    read_as = _file_kind(source, kind)
    result = read_records(source, read_as, on_error=on_error, max_chars=max_chars)
    if result.skipped:
        print(f"{source}: skipped {sum(result.skipped.values())} records: {dict(result.skipped)}")
    records = result.records
    if read_as == "rankings":  # K-way rankings train the reward model as all their decided pairs
        records = [pair for ranking in records for pair in ranking.to_pairs()]
        print(f"{source}: {len(result.records)} rankings expanded to {len(records)} pairs")
    elif read_as == "rewrites":  # a corrected response is a demonstration
        records = [r.to_demonstration() for r in records]
    if kind == "pairs" and ties == "drop":
        n = len(records)
        records = [r for r in records if not getattr(r, "tie", False)]
        if len(records) < n:
            print(f"{source}: dropped {n - len(records)} tied pairs (ties=drop)")
    return records


def _file_kind(source, kind: str) -> str:
    """Which reader a file needs: a pair file may hold K-way rankings (`responses` + `ranks`),
    an SFT file may hold rewrites (`original` + `rewrite`); decided from the first record."""
    if kind not in ("pairs", "sft"):
        return kind
    from rlhfkit.data.readers import iter_raw

    try:
        _, rows = iter_raw(source)
        first = next((value for _, value in rows if isinstance(value, dict)), None)
    except Exception:  # unreadable: let read_records report it with file, line and field
        return kind
    if first is None:
        return kind
    if kind == "pairs" and "responses" in first and "chosen" not in first:
        return "rankings"
    if kind == "sft" and "rewrite" in first and "completion" not in first and "messages" not in first:
        return "rewrites"
    return kind


def split_holdout(records: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """A fixed-seed shuffle, then the last `eval_fraction` is held out."""
    if not 0 <= eval_fraction < 1:
        raise ValueError("eval_fraction must be in [0, 1)")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(records), generator=g).tolist()
    n_eval = int(round(len(records) * eval_fraction))
    train = [records[i] for i in order[: len(records) - n_eval]]
    held = [records[i] for i in order[len(records) - n_eval:]]
    return train, held


def split_by_prompt(items: list, fraction: float, seed: int, prompt_of=lambda x: x.prompt) -> tuple[list, list]:
    """``(train, held-out)`` items, whole prompts held out (``split_holdout`` over the distinct
    prompts, in first-seen order): with several items per prompt (K-way rankings, one pair
    labelled by several people, a chosen and a rejected response, several demonstrations) a
    held-out item must not share its prompt, and so a response, with a training item.
    ``prompt_of``: the item's prompt (default its ``prompt`` attribute)."""
    _, held_prompts = split_holdout(list(dict.fromkeys(prompt_of(x) for x in items)), fraction, seed)
    held = set(held_prompts)
    return [x for x in items if prompt_of(x) not in held], [x for x in items if prompt_of(x) in held]


def draw_in_order(items: list, n: int, seed: int) -> list:
    """``n`` of ``items`` drawn by ``seed``, in their original order (all when ``n`` is 0 or not
    below their count): the ``max_*`` limits of data and prompts."""
    if not n or n >= len(items):
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]


def first_n(records: list, n: int) -> list:
    """The first `n` records (all when n is 0): a fixed subset of an already shuffled split."""
    if n < 0:
        raise ValueError(f"a record limit must be >= 0, got {n}")
    return records[:n] if n else records


def set_threads(threads: int) -> None:
    if threads:
        torch.set_num_threads(threads)


def finished_run(config, name: str, info: DistInfo) -> dict | None:
    """The final metrics of a run that already finished in ``config.output_dir`` (``model/``,
    ``config.yaml`` and ``final_metrics.json`` written by ``save_final``) under the same
    settings: the recipe returns them instead of training again, as a rerun of an interrupted
    run continues from its checkpoint. Settings that change the result (all but
    ``_RESUME_FREE_FIELDS``) that differ are refused, naming them: a rerun must never quietly
    overwrite a finished model with another run's. ``--resume false`` (``config.resume``) trains
    afresh and overwrites; None then, and when nothing finished there."""
    import yaml

    from rlhfkit.training.config import ConfigError
    from rlhfkit.training.loop import _RESUME_FREE_FIELDS, resume_fingerprint, with_fingerprint_defaults

    out = Path(config.output_dir)
    done = out / "final_metrics.json"
    if not config.resume or not done.is_file() or not (out / "model").is_dir() or not (out / "config.yaml").is_file():
        return None
    saved = json.loads(json.dumps(yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8")) or {}, default=str))
    # a field added later counts at its default where one side lacks it (a run finished before the
    # field existed ran at that default; the fingerprint leaves the default out)
    saved, now = with_fingerprint_defaults(saved), with_fingerprint_defaults(resume_fingerprint(config))
    diffs = [f"{k}: {saved[k]!r} -> {now[k]!r}" for k in sorted(set(saved) & set(now))
             if k not in _RESUME_FREE_FIELDS and saved[k] != now[k]]
    if diffs:
        raise ConfigError(f"{out} holds a finished {name} run with other settings ({'; '.join(diffs)}); give another "
                          "--output_dir, or --resume false to train again and overwrite it")
    if info.is_main:
        print(f"{name}: {out} holds this run, finished: model in {out / 'model'} (nothing to do; "
              "--resume false trains again)")
    return json.loads(done.read_text(encoding="utf-8"))


def save_final(model, tokenizer, config, metrics: dict, info: DistInfo, subdir: str = "model") -> Path | None:
    """`save_pretrained` of model and tokenizer (LoRA merged), the config and final metrics.
    Call on every rank: a sharded (FSDP) model is gathered first, which is collective."""
    from rlhfkit.training.distributed import full_model_state, is_sharded

    state = full_model_state(model) if info.enabled and is_sharded(model) else None
    if not info.is_main:
        return None
    out = Path(config.output_dir) / subdir
    out.mkdir(parents=True, exist_ok=True)
    to_save = model
    if hasattr(model, "merge_and_unload"):  # a peft model: ship plain HF weights
        # and the adapter alone beside them (before merging: merge_and_unload folds it in), what
        # a learner's version carries (rlhfkit learn: a version is small)
        model.save_pretrained(Path(config.output_dir) / "adapter")
        to_save = model.merge_and_unload()
    to_save.save_pretrained(out, state_dict=state) if state is not None else to_save.save_pretrained(out)
    tokenizer.save_pretrained(out)
    save_config(config, Path(config.output_dir) / "config.yaml")
    (Path(config.output_dir) / "final_metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    os.sync()
    return out
