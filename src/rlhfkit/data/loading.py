"""Reading data: training records from a named shared set or a file (exact duplicates dropped,
rankings expanded to pairs), prompt pools, and the plain JSONL rows rlhfkit writes between stages.
The recipes, the pipeline, the loop, the evaluation and the adversarial reward read through here."""

from __future__ import annotations

import json
from pathlib import Path

from . import shared_sets
from .errors import DataError
from .readers import iter_raw, line_limit, read_records
from .records import OPTIONAL_FIELDS, RankingRecord, RewriteRecord
from .splits import prompt_key


def named_set(name: str, kind: str, ties: str = "drop"):
    """The shared real data sets by name; `None` when `name` is not one of them.

    kind 'sft': finegrained-corrections, oasst-best; kind 'pairs': hh-rlhf, finegrained, oasst.
    """
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


def load_training_records(
    source: str,
    kind: str,
    on_error: str = "raise",
    ties: str = "drop",
    max_chars: int = 100_000,
    drop_duplicates: bool = True,
) -> list:
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
    records = [
        x
        for r in records
        for x in (
            r.to_pairs()
            if isinstance(r, RankingRecord)
            else [r.to_demonstration()]
            if isinstance(r, RewriteRecord)
            else [r]
        )
    ]
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
    result = read_records(source, _file_kind(source, kind), on_error=on_error, max_chars=max_chars)
    skipped = sum(result.skipped.values())
    if skipped:
        print(f"{source}: skipped {skipped} records: {dict(result.skipped)}")
    if not result.records:
        raise DataError(
            "no records in it"
            + (f" (skipped {skipped} bad ones: {dict(result.skipped)})" if skipped else " (an empty file?)"),
            path=source,
            reason="invalid_value",
        )
    return result.records


def _file_kind(source, kind: str) -> str:
    """Which reader a file needs: a pair file may hold K-way rankings (`responses` + `ranks`),
    an SFT file may hold rewrites (`original` + `rewrite`); decided from the first record."""
    if kind not in ("pairs", "sft"):
        return kind
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


def record_key(record, with_labeler: bool = True) -> str:
    """A record's normalised form (its fields as sorted JSON; a weight of 1 is no weight, as
    training counts it), the identity of exact duplicates; without ``labeler`` and ``weight`` it
    is the judged example alone (who judged it aside)."""
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


# ----------------------------------------------------------------------------- prompts
def load_prompts(
    source: str, prompt_words: int = 8, limit: int | None = None, seed: int = 0, unique: bool = False
) -> list[str]:
    """The prompt texts of ``source``: a named pool (``shared_sets.PROMPT_POOLS``: ``movie-reviews``,
    the first ``prompt_words`` words of each shared review; ``chat-first-turns``, the first human
    turns of OASST and HH-RLHF; with ``limit``, that many drawn with ``random.Random(seed)``, in
    pool order) or a prompt file (JSONL, JSON, a ``datasets`` folder; with ``limit``, its first
    ``limit`` prompts; repeats kept). ``unique``: each prompt once as held-out splits compare prompts (:func:`prompt_key`:
    case and spacing aside; the first spelling kept), in source order, so that two spellings of
    one prompt cannot land on both sides of a split. The online recipes, the pipeline, the loop
    and ``rlhfkit eval`` read prompts here."""
    if source in shared_sets.PROMPT_POOLS:
        prompts = [r.prompt for r in shared_sets.load_named_prompts(source, prompt_words, limit=limit, seed=seed)]
    else:
        prompts = [r.prompt for r in load_training_records(source, "prompts")][:limit]
    if unique:
        first: dict[str, str] = {}
        for p in prompts:
            first.setdefault(prompt_key(p), p)
        prompts = list(first.values())
    if not prompts:
        raise ValueError(f"no prompts in {source!r}")
    return prompts


def tokenizer_corpus(source: str) -> list[str]:
    """The texts the pipeline's and the loop's tiny initial policy builds its tokenizer from: 600
    prompts of a named pool drawn with seed 0 (of ``movie-reviews``, the first 40 words of each
    review), or every prompt of a prompt file; each once."""
    return load_prompts(source, prompt_words=40, limit=600 if source in shared_sets.PROMPT_POOLS else None, unique=True)


# ----------------------------------------------------------------------------- JSONL rows
def read_jsonl(path: str | Path, tolerant: bool = False) -> list:
    """The rows of a JSONL file rlhfkit wrote (stage outputs, metrics, samples), split on newlines
    only: JSON written with ``ensure_ascii=False`` keeps U+2028, U+0085 or U+001C of a sampled
    text as they are, and ``str.splitlines`` would cut a row there. Blank lines are passed over.
    ``tolerant`` (a report of a run that may be running or was killed): a missing file is no
    rows, and a line that is not JSON (a row cut by a kill) is passed over."""
    path = Path(path)
    if tolerant and not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if not tolerant:
                raise
    return rows
