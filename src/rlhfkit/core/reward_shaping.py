"""Turning sequence scores into per-token PPO rewards."""
from __future__ import annotations

from typing import Tuple, Union

import torch

from .kl import kl_k1, kl_k2, kl_k3
from .masking import last_true_index

_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def per_token_rewards(
    score: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: Union[float, torch.Tensor],
    kl_estimator: str = "k1",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """KL-penalised per-token rewards (Ziegler et al. 2019; "The N implementation details of
    RLHF with PPO", Huang et al. 2022: ``rewards = -kl_coef * kl``, score added at the last token).

    Shapes: ``score`` [B], ``logprobs``, ``ref_logprobs``, ``mask`` [B, T] ->
    ``(rewards [B, T], kl [B, T])``. ``kl`` is the per-token estimator ("k1" | "k2" | "k3",
    see ``rlhfkit.core.kl``), 0 outside the mask; ``rewards = -kl_coef * kl`` with ``score``
    added at the last valid token of each row (rows with no valid token get no score).
    """
    if kl_estimator not in _ESTIMATORS:
        raise ValueError(f"kl_estimator must be one of {sorted(_ESTIMATORS)}, got {kl_estimator!r}")
    m = mask.bool() if mask.dtype != torch.bool else mask
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    # values under the mask may be anything (even inf): zero both before the estimator
    kl = _ESTIMATORS[kl_estimator](torch.where(m, logprobs, zero), torch.where(m, ref_logprobs, zero))
    kl = torch.where(m, kl, torch.zeros_like(kl))
    rewards = -kl_coef * kl
    last = last_true_index(m)
    has_token = last >= 0
    add = torch.where(has_token, score.to(rewards.dtype), torch.zeros_like(score, dtype=rewards.dtype))
    rewards = rewards.scatter_add(1, last.clamp(min=0).unsqueeze(1), add.unsqueeze(1))
    return rewards, kl


def apply_missing_eos_penalty(score: torch.Tensor, has_eos: torch.Tensor, penalty: float) -> torch.Tensor:
    """Subtract ``penalty`` from the score of responses that never emitted EOS (TRL
    ``missing_eos_penalty``; cf. "N implementation details": penalise truncated responses).

    Shapes: ``score`` [B], ``has_eos`` bool [B] -> [B].
    """
    return score - penalty * (~has_eos.bool()).to(score.dtype)
