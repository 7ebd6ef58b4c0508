"""Held-out splits and subsets of records: whole prompts held out (compared case and spacing
aside), training records that share a prompt with a held-out file dropped, seeded draws and
prefixes (the ``max_*`` limits)."""

from __future__ import annotations

import json
import random
import unicodedata

import torch


def split_holdout(records: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """A fixed-seed shuffle, then the last `eval_fraction` is held out."""
    if not 0 <= eval_fraction < 1:
        raise ValueError("eval_fraction must be in [0, 1)")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(records), generator=g).tolist()
    n_eval = int(round(len(records) * eval_fraction))
    train = [records[i] for i in order[: len(records) - n_eval]]
    held = [records[i] for i in order[len(records) - n_eval :]]
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
        texts += [
            json.dumps(x, sort_keys=True, ensure_ascii=False)
            for x in (v if isinstance(v, list) else [v])
            if x is not None
        ]
    return "\0texts " + json.dumps(sorted(texts), ensure_ascii=False)


def split_by_prompt(
    items: list, fraction: float, seed: int, prompt_of=split_key, shuffle: bool = False
) -> tuple[list, list]:
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
        print(
            f"held-out split: a fraction of {fraction:g} of {len(distinct)} distinct prompts rounds to none: nothing "
            "is held out (more prompts, a larger fraction, or a held-out file)"
        )
    if shuffle:
        g = torch.Generator().manual_seed(seed)
        train = [train[i] for i in torch.randperm(len(train), generator=g).tolist()]
        held_out = [held_out[i] for i in torch.randperm(len(held_out), generator=g).tolist()]
    return train, held_out


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
        print(f"{source}: dropped {len(train) - len(kept)} training records that share a prompt with the held-out data")
    return kept


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
