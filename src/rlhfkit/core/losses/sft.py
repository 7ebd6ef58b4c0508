"""Supervised fine-tuning loss (next-token cross entropy)."""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def count_target_tokens(labels: torch.Tensor, weights: Optional[torch.Tensor] = None) -> Union[int, float]:
    """Number of labels that are not -100 after the causal shift (``labels[:, 1:]``); with
    ``weights`` [B] each row's tokens count its weight (the normaliser of a weighted loss).

    Shapes: ``labels`` [B, T] -> int (float with weights).
    """
    scored = labels[:, 1:] != IGNORE_INDEX
    if weights is None:
        return int(scored.sum().item())
    return float((scored.sum(-1).double() * weights.double()).sum().item())


def sft_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    normaliser: Optional[Union[int, float, torch.Tensor]] = None,
    weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Summed next-token NLL divided by ``normaliser``.

    Shapes: ``logits`` [B, T, V], ``labels`` [B, T] aligned with ``input_ids`` (Hugging Face
    convention: the shift happens here, ``logits[:, :-1]`` predicts ``labels[:, 1:]``);
    -100 labels (prompt, padding) are ignored -> scalar.
    ``normaliser`` defaults to the number of target tokens in this batch (a token-mean). Passing
    the token count of the whole global batch makes the sum of micro-batch / rank losses equal to
    the full-batch loss, whatever the split (the gradient-accumulation fix described in
    Hugging Face's "Fixing gradient accumulation" blog, 2024). An empty batch gives 0.
    ``weights`` [B] (optional): row i's token NLLs count ``weights[i]`` times (a record's weight);
    the default normaliser is then the weighted token count.
    """
    V = logits.shape[-1]
    shift_logits = logits[:, :-1].reshape(-1, V)
    shift_labels = labels[:, 1:].reshape(-1)
    if shift_logits.dtype not in (torch.float32, torch.float64):
        shift_logits = shift_logits.float()
    if weights is None:
        total = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    else:
        per_token = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="none")
        total = (per_token.view(labels.shape[0], -1).sum(-1) * weights.to(per_token.dtype)).sum()
    if normaliser is None:
        normaliser = count_target_tokens(labels, weights) or 1
    return total / normaliser
