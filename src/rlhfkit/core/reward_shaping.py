"""Turning sequence scores into KL-penalised rewards: per token (PPO) or per sequence (RLOO, REINFORCE)."""

from __future__ import annotations

from typing import Tuple, Union

import torch

from .kl import kl_k1, kl_k2, kl_k3, sequence_kl
from .masking import last_true_index

_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_penalised_rewards(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sequence rewards with the KL leash in them (RLOO, REINFORCE; as TRL's RLOOTrainer):
    ``(scores - kl_coef * kl, kl)`` with ``kl`` the summed k1 over the response (``sequence_kl``).

    Shapes: ``scores`` [B], ``logprobs``, ``ref_logprobs``, ``mask`` [B, R] -> ``([B], [B])``."""
    kl = sequence_kl(logprobs, ref_logprobs, mask)
    return scores - kl_coef * kl, kl


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


ENSEMBLE_COMBINATIONS = ("mean", "min", "uwo")


def combine_ensemble(scores: torch.Tensor, how: str = "mean", uwo_lambda: float = 0.0) -> torch.Tensor:
    """One reward per response from an ensemble's ``scores`` [M, N] (M members), after Coste et
    al. 2023, "Reward Model Ensembles Help Mitigate Overoptimization":

    - ``mean``: the members' mean (what the loop optimised before);
    - ``min``: worst-case optimisation (WCO), the lowest member's score: the policy only gains
      where every member agrees it gained;
    - ``uwo``: uncertainty-weighted optimisation, ``mean - uwo_lambda * Var_m`` (population
      variance over members): a response the members disagree on is worth less, which is where
      a policy exploiting one member's error would go.

    With one member every combination is that member's score."""
    if scores.dim() != 2 or scores.shape[0] < 1:
        raise ValueError(f"scores must be [members, responses], got shape {tuple(scores.shape)}")
    s = scores.float()
    if how == "mean":
        return s.mean(0)
    if how == "min":
        return s.min(0).values
    if how == "uwo":
        return s.mean(0) - float(uwo_lambda) * s.var(0, unbiased=False)
    raise ValueError(f"ensemble combination must be one of {', '.join(ENSEMBLE_COMBINATIONS)}, got {how!r}")
