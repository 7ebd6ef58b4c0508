"""Reward-model losses: pairwise preferences, ratings, binary feedback."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def weighted_sum(losses: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``sum_i weights[i] * losses[i]`` (plain sum without weights): the numerator of a weighted
    mean whose denominator, the sum of weights, the training loop takes over the global batch.
    Shapes: [B], [B] -> scalar."""
    if weights is None:
        return losses.sum()
    return (losses * weights.to(losses.dtype)).sum()


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: Optional[torch.Tensor] = None,
    tie: Optional[torch.Tensor] = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Pairwise Bradley-Terry loss ``-logsigmoid(r_c - r_r - margin)``.

    Shapes: ``chosen_rewards``, ``rejected_rewards`` [B]; ``margin`` [B] or scalar (optional);
    ``tie`` bool [B] (optional) -> scalar, or [B] with ``reduction="none"``.
    InstructGPT (Ouyang et al. 2022) form; the margin term is Llama 2's (Touvron et al. 2023,
    eq. 2). For pairs with ``tie`` true the target is equal preference:
    ``-0.5 * (logsigmoid(d) + logsigmoid(-d))`` with ``d = r_c - r_r`` (margin not applied),
    minimised at ``d = 0`` (tie treated as a half win for each side, Rao-Kupper style).
    """
    d = chosen_rewards - rejected_rewards
    dm = d if margin is None else d - margin
    loss = -F.logsigmoid(dm)
    if tie is not None:
        tie_loss = -0.5 * (F.logsigmoid(d) + F.logsigmoid(-d))
        loss = torch.where(tie.bool(), tie_loss, loss)
    return _reduce(loss, reduction)


def rating_regression_loss(predicted: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean squared error between predicted and given ratings. Shapes: [B], [B] -> scalar or [B]."""
    return _reduce((predicted - target.to(predicted.dtype)) ** 2, reduction)


def binary_feedback_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Binary cross entropy with logits for thumbs up (1) / down (0) feedback
    (KTO-style unpaired data used as a classifier target).

    Shapes: ``logits`` [B], ``labels`` [B] (0/1, bool or float) -> scalar or [B].
    """
    loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")
    return _reduce(loss, reduction)
