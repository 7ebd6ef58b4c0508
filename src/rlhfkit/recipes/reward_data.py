"""Reward-model examples: records encoded with their objective's target, collated, counted.

Pairs keep chosen and rejected token ids (scored in one forward pass: rows [0, n) chosen, [n, 2n)
rejected), ratings and thumbs one sequence with its target; a record's ``weight`` travels along,
and a batch counts as the sum of its weights when it has them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from rlhfkit.data.tokenize import pad_sequences, tokenize_pair
from rlhfkit.recipes.common import weights_of
from rlhfkit.recipes.rating_targets import rating_target

if TYPE_CHECKING:
    from rlhfkit.recipes.reward import RewardConfig


def encode_records(records, tokenizer, config: RewardConfig, targets: list[float] | None = None) -> list[dict]:
    """Token ids of prompt ⊕ response, with the target of each objective (ratings: ``targets``
    when given, else the rating mapped to [0, 1]) and the record's ``weight`` when it has one."""
    out = []
    for i, r in enumerate(records):
        if config.objective == "pairwise":
            e = {
                "chosen": tokenize_pair(r.prompt, r.chosen, tokenizer, config.max_length),
                "rejected": tokenize_pair(r.prompt, r.rejected, tokenizer, config.max_length),
                "margin": float(r.margin) if (config.use_margin and r.margin is not None) else 0.0,
                "tie": bool(r.tie),
                "subset": r.subset,
            }
        elif config.objective == "regression":
            e = {
                "ids": tokenize_pair(r.prompt, r.completion, tokenizer, config.max_length),
                "target": rating_target(r) if targets is None else float(targets[i]),
            }
        else:
            e = {"ids": tokenize_pair(r.prompt, r.completion, tokenizer, config.max_length), "target": float(r.label)}
        if r.weight is not None:
            e["weight"] = float(r.weight)
        out.append(e)
    return out


def make_collate(pad_id: int, objective: str):
    def collate(examples: list[dict]) -> dict:
        if objective == "pairwise":
            # chosen and rejected in one forward pass: rows [0, n) chosen, [n, 2n) rejected
            seqs = [e["chosen"] for e in examples] + [e["rejected"] for e in examples]
            ids, mask = pad_sequences(seqs, pad_id, side="right")
            batch = {
                "input_ids": ids,
                "attention_mask": mask,
                "margin": torch.tensor([e["margin"] for e in examples]),
                "tie": torch.tensor([e["tie"] for e in examples]),
            }
        else:
            ids, mask = pad_sequences([e["ids"] for e in examples], pad_id, side="right")
            batch = {"input_ids": ids, "attention_mask": mask, "target": torch.tensor([e["target"] for e in examples])}
        if (weights := weights_of(examples)) is not None:
            batch["weight"] = weights
        return batch

    return collate


def count_examples(batch: dict) -> int | float:
    """Examples in the batch, or the sum of their weights when they have weights."""
    if "weight" in batch:
        return float(batch["weight"].sum())
    return int(batch["tie"].numel()) if "tie" in batch else int(batch["target"].numel())
