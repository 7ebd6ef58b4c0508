"""Preference pairs made ready for training: tokenised, padded for scoring, collated, loaded.

A pair's chosen and rejected sequences share the prompt's tokens (the prompt cut from the left,
each response cut on the right), and ``labels`` score only response tokens, so a sequence's
log-prob sums its response alone. DPO and its variants train on these; KTO reuses the prompt and
response encoding and the padding.
"""

from __future__ import annotations

import torch

from rlhfkit.data.tokenize import IGNORE_INDEX, pad_sequences, special_layout
from rlhfkit.data.loading import load_training_records
from rlhfkit.recipes.common import weights_of, with_weight


def encode_prompt(prompt: str, tokenizer, max_prompt_length: int) -> list[int]:
    """``prefix + tok(prompt)``, the prompt cut from the left (its end, next to the answer, is kept);
    ``prefix`` is what the tokenizer puts before a text (BOS for Llama-style tokenizers)."""
    prefix, _ = special_layout(tokenizer)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    keep = max(0, max_prompt_length - len(prefix))
    return list(prefix) + list(ids[len(ids) - keep :] if keep else [])


def encode_response(response: str, tokenizer) -> list[int]:
    eos = tokenizer.eos_token_id
    return list(tokenizer(response, add_special_tokens=False)["input_ids"]) + ([eos] if eos is not None else [])


def join(prompt_ids: list[int], response_ids: list[int], max_length: int) -> list[int]:
    """prompt ⊕ response, the response cut on the right to fit ``max_length``."""
    return prompt_ids + response_ids[: max_length - len(prompt_ids)]


def encode_pairs(records, tokenizer, config) -> list[dict]:
    """``{"seqs": [chosen ids, rejected ids], "prompt_len", "tie"}`` (and ``weight`` when the pair
    has one) per pair; both sequences share the prompt tokens, so only the responses differ."""
    out = []
    for r in records:
        p = encode_prompt(r.prompt, tokenizer, config.max_prompt_length)
        out.append(
            with_weight(
                {
                    "seqs": [
                        join(p, encode_response(r.chosen, tokenizer), config.max_length),
                        join(p, encode_response(r.rejected, tokenizer), config.max_length),
                    ],
                    "prompt_len": len(p),
                    "tie": bool(r.tie),
                },
                r,
            )
        )
    return out


def pad_scored(seqs: list[list[int]], prompt_lens: list[int], pad_id: int) -> dict:
    """Right-padded ``input_ids``/``attention_mask`` and ``labels`` = ids on response tokens,
    -100 on prompt and padding (so a row's log-prob sums only its response)."""
    ids, mask = pad_sequences(seqs, pad_id, side="right")
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    for i, n in enumerate(prompt_lens):
        labels[i, :n] = IGNORE_INDEX
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def make_collate(pad_id: int):
    def collate(examples: list[dict]) -> dict:
        # chosen and rejected in one forward pass: rows [0, n) chosen, [n, 2n) rejected
        seqs = [e["seqs"][0] for e in examples] + [e["seqs"][1] for e in examples]
        batch = pad_scored(seqs, [e["prompt_len"] for e in examples] * 2, pad_id)
        batch["tie"] = torch.tensor([e["tie"] for e in examples])
        if "ref" in examples[0]:
            batch["ref"] = torch.tensor([e["ref"] for e in examples], dtype=torch.float64)  # [n, 2]
        if (weights := weights_of(examples)) is not None:
            batch["weight"] = weights
        return batch

    return collate


def load_pairs(source: str, config, label: str) -> tuple[list, int]:
    """Pairs with ties handled as configured; returns (records, number of ties seen)."""
    records = load_training_records(
        source, "pairs", config.on_error, ties="keep", drop_duplicates=config.drop_duplicates
    )
    n_ties = sum(1 for r in records if r.tie)
    if config.ties == "drop":
        records = [r for r in records if not r.tie]
    if n_ties:
        print(
            f"{label}: {n_ties} tied pairs {'dropped' if config.ties == 'drop' else 'kept (trained towards equal rewards)'}"
        )
    return records, n_ties
