"""Small pieces the recipes share: named data sets, held-out splits, saving the result."""
from __future__ import annotations

import json
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhfkit.data.records import RankingRecord, RewriteRecord
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
                          max_chars: int = 100_000, drop_duplicates: bool = True) -> list:
    """Records from a named shared set, a file (JSONL, JSON, gz) or a ``datasets`` folder
    (``save_to_disk``); reports skipped lines. ``a+b`` (not itself a file) is the records of ``a``
    followed by those of ``b``, e.g. ``finegrained+oasst`` for preference-model pretraining on both.

    A source with no records is a :class:`DataError` naming it (before any model is loaded).
    Exact duplicates (every field equal, ``labeler`` included: the same judgement by two labelers
    with ids is two labels, without ids the copies cannot be told from a file written twice) are
    dropped and counted, before rankings are expanded to pairs, so that no copy of a held-out
    record can be trained on (``drop_duplicates=False`` keeps deliberate repeats: the copies of
    a bootstrap resample, a class balanced by repetition). Prompt lists (kind ``prompts``) keep
    their repeats."""
    records = _read_source(source, kind, on_error, ties, max_chars)
    if kind != "prompts" and drop_duplicates:
        records = without_duplicates(records, source)
    n_rankings = sum(isinstance(r, RankingRecord) for r in records)
    # K-way rankings train the reward model as all their decided pairs; a corrected response is a demonstration
    records = [x for r in records for x in (r.to_pairs() if isinstance(r, RankingRecord) else
                                            [r.to_demonstration()] if isinstance(r, RewriteRecord) else [r])]
    if n_rankings:
        print(f"{source}: {n_rankings} rankings expanded to {len(records)} pairs")
    if kind == "pairs" and ties == "drop":
        n = len(records)
        records = [r for r in records if not getattr(r, "tie", False)]
        if len(records) < n:
            print(f"{source}: dropped {n - len(records)} tied pairs (ties=drop)")
    return records


def _read_source(source: str, kind: str, on_error: str, ties: str, max_chars: int) -> list:
    """The records of one source as read (rankings and rewrites not yet converted); ``a+b`` joined."""
    if "+" in source and not Path(source).exists():
        return [r for part in source.split("+") for r in _read_source(part, kind, on_error, ties, max_chars)]
    records = named_set(source, kind, ties)
    if records is not None:
        return list(records)
    from rlhfkit.data.errors import DataError
    from rlhfkit.data.readers import read_records

    result = read_records(source, _file_kind(source, kind), on_error=on_error, max_chars=max_chars)
    skipped = sum(result.skipped.values())
    if skipped:
        print(f"{source}: skipped {skipped} records: {dict(result.skipped)}")
    if not result.records:
        raise DataError("no records in it" + (f" (skipped {skipped} bad ones: {dict(result.skipped)})" if skipped else
                                              " (an empty file?)"), path=source, reason="invalid_value")
    return result.records


def record_key(record, with_labeler: bool = True) -> str:
    """A record's normalised form (its fields as sorted JSON; a weight of 1 is no weight, as
    training counts it), the identity of exact duplicates; without ``labeler`` and ``weight`` it
    is the judged example alone (who judged it aside)."""
    from rlhfkit.data.records import OPTIONAL_FIELDS

    d = record.to_dict()
    if d.get("weight") == 1.0:
        del d["weight"]
    if not with_labeler:
        d = {k: v for k, v in d.items() if k not in OPTIONAL_FIELDS}
    return json.dumps(d, sort_keys=True, ensure_ascii=False)


def without_duplicates(records: list, source: str) -> list:
    """``records`` without exact repeats (the first copy kept, in order); prints how many went."""
    seen: set[str] = set()
    kept = []
    for r in records:
        key = record_key(r)
        if key not in seen:
            seen.add(key)
            kept.append(r)
    if len(kept) < len(records):
        print(f"{source}: dropped {len(records) - len(kept)} exact duplicate records ({len(kept)} left)")
    return kept


def drop_held_out_copies(train: list, held: list, source: str, views=None) -> list:
    """Training records that share no prompt with a held-out record (compared as held-out splits
    group them, :func:`split_key`: the same prompt in other case or spacing counts, and so does
    the same example judged otherwise, a pair the other way round or a rating of another value);
    prints how many went. Needed where the held-out set is another file (``eval_data``); a split
    by prompt cannot put a prompt on both sides. ``views(record)``: the forms a training record
    is compared in (default the record itself), e.g. the two thumbs KTO makes of a pair."""
    views = views or (lambda r: [r])
    held_keys = {split_key(r) for r in held}
    kept = [r for r in train if not any(split_key(v) in held_keys for v in views(r))]
    if len(kept) < len(train):
        print(f"{source}: dropped {len(train) - len(kept)} training records that share a prompt with the "
              "held-out data")
    return kept


def require_examples(n_train: int, batch_size: int, source: str, n_held: int = 0,
                     total_weight: float | None = None) -> None:
    """Refuse, naming the data, a training set that cannot fill one batch, or whose records all
    weigh 0 (``total_weight``, :func:`total_weight`: nothing to learn from, every step would be a
    zero update): checked before any model is loaded (and before ``dpo`` / ``kto`` compute their
    reference cache), as ``fit`` would refuse the first after."""
    from rlhfkit.data.errors import DataError

    if n_train < batch_size:
        held = f" ({n_held} held out)" if n_held else ""
        raise DataError(f"{n_train} training examples{held} for a batch of {batch_size}; lower batch_size or "
                        "add data", path=source, reason="invalid_value")
    if total_weight is not None and not total_weight > 0:
        raise DataError(f"every one of the {n_train} training records has weight 0: nothing to train on",
                        path=source, field="weight", reason="invalid_value")


def total_weight(records: list) -> float:
    """The sum of the records' weights (absent = 1)."""
    return float(sum(1.0 if getattr(r, "weight", None) is None else r.weight for r in records))


def scaled_weights(records: list) -> list:
    """``records`` with their weights divided by the power of two at or above the largest one,
    when that is above 1: the losses are weighted means (a sum over the sum of weights), which a
    common factor leaves as they are, exactly so for a power of two (floating point multiplies by
    one without rounding), while a weight near the float range (1e308: the sum overflows, the loss
    turns NaN) no longer reaches the loss. Records without a weight count 1, as in training."""
    import math
    from dataclasses import replace

    largest = max((1.0 if getattr(r, "weight", None) is None else r.weight for r in records), default=1.0)
    if largest <= 1.0:
        return records
    exponent = math.frexp(largest)[1]  # largest = m * 2**exponent, 0.5 <= m < 1
    return [replace(r, weight=math.ldexp(1.0 if r.weight is None else r.weight, -exponent))
            if hasattr(r, "weight") else r for r in records]


def _file_kind(source, kind: str) -> str:
    """Which reader a file needs: a pair file may hold K-way rankings (`responses` + `ranks`),
    an SFT file may hold rewrites (`original` + `rewrite`); decided from the first record."""
    if kind not in ("pairs", "sft"):
        return kind
    from rlhfkit.data.readers import iter_raw, line_limit

    try:
        _, rows = iter_raw(source, line_limit(100_000))  # a giant first line is read_records' to refuse
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


def with_weight(example: dict, record) -> dict:
    """``example`` with ``weight`` = the record's weight, when it has one."""
    weight = getattr(record, "weight", None)
    return example if weight is None else {**example, "weight": float(weight)}


def weights_of(examples: list[dict]) -> torch.Tensor | None:
    """The examples' weights [B] (absent = 1), or None when every one is 1: the unweighted sums stay
    exactly what they were."""
    weights = [e.get("weight", 1.0) for e in examples]
    return None if all(w == 1.0 for w in weights) else torch.tensor(weights, dtype=torch.float64)


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


def record_prompt(record) -> str:
    """The prompt a record answers: its ``prompt``; for a conversation, its turns before the first
    assistant turn (the opening that every branch of a conversation tree shares), "" when it has
    none."""
    if hasattr(record, "prompt"):
        return record.prompt
    messages = record.messages
    first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), len(messages))
    return json.dumps(messages[:first], sort_keys=True, ensure_ascii=False) if first else ""


def prompt_key(text: str) -> str:
    """The form prompts are compared in by held-out splits: Unicode NFKC, case folded, every run of
    white space one space, none at the ends, so that "What is 2+2?" and "what is  2+2? " (a file
    gathered from two sources) fall on one side."""
    import unicodedata

    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


# the texts a judged record is about, for records without a prompt (implicit-prompt data)
_RESPONSE_FIELDS = ("completion", "chosen", "rejected", "responses", "original", "rewrite", "messages")


def split_key(record) -> str:
    """What held-out splits group records by: :func:`prompt_key` of :func:`record_prompt`; for a
    record without a prompt (implicit-prompt data, where the prompt is inside the responses) the
    texts it judges, in sorted order, so that one example judged by several people, or a pair
    the other way round, stays on one side (otherwise every such record would share the prompt
    "" and either all of them, or none, would be held out)."""
    prompt = prompt_key(record_prompt(record))
    if prompt:
        return prompt
    d = record.to_dict()
    texts = []
    for k in _RESPONSE_FIELDS:
        v = d.get(k)
        texts += [json.dumps(x, sort_keys=True, ensure_ascii=False) for x in (v if isinstance(v, list) else [v])
                  if x is not None]
    return "\0texts " + json.dumps(sorted(texts), ensure_ascii=False)


def split_by_prompt(items: list, fraction: float, seed: int, prompt_of=split_key,
                    shuffle: bool = False) -> tuple[list, list]:
    """``(train, held-out)`` items, whole prompts held out (``split_holdout`` over the distinct
    prompts, in first-seen order, compared as :func:`prompt_key` gives them): with several items
    per prompt (K-way rankings, one pair labelled by several people, a chosen and a rejected
    response, several demonstrations) a held-out item must not share its prompt, and so a
    response, with a training item. ``prompt_of``: the item's prompt (default :func:`split_key`).
    Both parts keep the items' order, or with ``shuffle`` come in a ``seed``-fixed shuffled order
    (the recipes' ``max_train`` / ``max_eval`` take a prefix: a random subset, nested as the
    limit grows). Prints why when ``fraction`` is above 0 but holds out nothing (too few
    distinct prompts)."""
    keys = [prompt_key(prompt_of(x)) for x in items]
    distinct = list(dict.fromkeys(keys))
    _, held_prompts = split_holdout(distinct, fraction, seed)
    held = set(held_prompts)
    train = [x for x, k in zip(items, keys) if k not in held]
    held_out = [x for x, k in zip(items, keys) if k in held]
    if fraction > 0 and items and not held_out:
        print(f"held-out split: a fraction of {fraction:g} of {len(distinct)} distinct prompts rounds to none: nothing "
              "is held out (more prompts, a larger fraction, or a held-out file)")
    if shuffle:
        g = torch.Generator().manual_seed(seed)
        train = [train[i] for i in torch.randperm(len(train), generator=g).tolist()]
        held_out = [held_out[i] for i in torch.randperm(len(held_out), generator=g).tolist()]
    return train, held_out


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
    try:
        saved = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8")) or {}
        final = json.loads(done.read_text(encoding="utf-8"))
        if not isinstance(saved, dict) or not isinstance(final, dict):
            raise ValueError("not a mapping")
    except (OSError, ValueError, yaml.YAMLError) as err:  # ValueError: JSON and UTF-8 decoding errors too
        # what it finished with is unknown: it is not taken as finished, and resumes from its newest
        # intact checkpoint (or trains afresh), writing model/, config.yaml and the metrics again
        if info.is_main:
            print(f"rlhfkit: warning: {out}: the finished run's config.yaml or final_metrics.json is unreadable "
                  f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); it is trained again "
                  "(from its newest intact checkpoint, if any)", file=sys.stderr, flush=True)
        return None
    saved = json.loads(json.dumps(saved, default=str))
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
    return final


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
        to_save = model.merge_and_unload()
    to_save.save_pretrained(out, state_dict=state) if state is not None else to_save.save_pretrained(out)
    tokenizer.save_pretrained(out)
    save_config(config, Path(config.output_dir) / "config.yaml")
    (Path(config.output_dir) / "final_metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    os.sync()
    return out
