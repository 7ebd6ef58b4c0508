"""Advantage estimators: GAE (PPO), RLOO, group-normalised (GRPO / Dr. GRPO)."""

from __future__ import annotations

from typing import Tuple

import torch


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Generalised Advantage Estimation (Schulman et al. 2016, "High-Dimensional Continuous
    Control Using GAE"), per token, batched.

    Shapes: ``rewards``, ``values``, ``mask`` [B, T] -> ``(advantages [B, T], returns [B, T])``.
    ``delta_t = r_t + gamma * V_{t+1} - V_t``; ``A_t = delta_t + gamma * lam * A_{t+1}``;
    ``returns = advantages + values``. The value after the last valid token is 0 (the episode
    ends there, as in TRL/OpenAI PPO). Masked positions are skipped entirely (the recursion
    carries across them, so left or interior padding also works) and get advantage/return 0.
    One reverse loop over T, vectorised over B. Pass detached tensors (no gradient intended).
    """
    m = mask.bool() if mask.dtype != torch.bool else mask
    zero = torch.zeros_like(rewards[:, 0])
    next_value = zero
    next_adv = zero
    adv = torch.zeros_like(rewards)
    for t in range(rewards.shape[1] - 1, -1, -1):
        valid = m[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a_t = delta + gamma * lam * next_adv
        a_t = torch.where(valid, a_t, next_adv)  # carry state across masked positions
        next_value = torch.where(valid, values[:, t], next_value)
        next_adv = a_t
        adv[:, t] = a_t
    adv = torch.where(m, adv, torch.zeros_like(adv))
    returns = torch.where(m, adv + values, torch.zeros_like(adv))
    return adv, returns


def rloo_advantages(scores: torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out baseline (Ahmadian et al. 2024, "Back to Basics"; Kool et al. 2019).

    Shapes: ``scores`` [B, k] (k samples per prompt) -> [B, k]:
    ``A_i = s_i - mean_{j != i} s_j = k / (k - 1) * (s_i - mean_j s_j)``. Needs k >= 2.
    """
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"rloo_advantages needs scores of shape [B, k] with k >= 2, got {tuple(scores.shape)}")
    k = scores.shape[1]
    others_mean = (scores.sum(dim=1, keepdim=True) - scores) / (k - 1)
    return scores - others_mean


def group_normalised_advantages(scores: torch.Tensor, scale_by_std: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """Group-relative advantages.

    Shapes: ``scores`` [B, k] (k samples per prompt) -> [B, k].
    ``scale_by_std=True``: ``(s - mean_group) / (std_group + eps)`` (GRPO, Shao et al. 2024,
    DeepSeekMath), with the *unbiased* (n - 1) sample std, as TRL's ``GRPOTrainer``
    (``Tensor.std`` default) and ``eps=1e-4`` as TRL. ``scale_by_std=False``: ``s - mean_group``
    (Dr. GRPO, Liu et al. 2025, "Understanding R1-Zero-Like Training"). Needs k >= 2.
    """
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(
            f"group_normalised_advantages needs scores of shape [B, k] with k >= 2, got {tuple(scores.shape)}"
        )
    centred = scores - scores.mean(dim=1, keepdim=True)
    if not scale_by_std:
        return centred
    return centred / (scores.std(dim=1, unbiased=True, keepdim=True) + eps)
