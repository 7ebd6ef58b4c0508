"""PPO clipped policy and value losses over masked token sequences."""

from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch

Normaliser = Optional[Union[int, float, torch.Tensor]]


def _agg(x: torch.Tensor, m: torch.Tensor, normaliser: Normaliser) -> torch.Tensor:
    total = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum()
    if normaliser is None:
        normaliser = m.sum().clamp(min=1).to(x.dtype)
    return total / normaliser


def _mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return _agg(x, m, None).detach()


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    normaliser: Normaliser = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Clipped surrogate objective (Schulman et al. 2017, "Proximal Policy Optimization", eq. 7),
    as a loss to minimise.

    Shapes: ``logprobs``, ``old_logprobs``, ``advantages``, ``mask`` [B, T] -> ``(loss scalar,
    stats)``. ``ratio = exp(logp - old_logp)``;
    ``loss = sum_mask max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)) / normaliser`` where
    ``normaliser`` defaults to the number of valid tokens (a masked mean); pass the global token
    count for split-invariant aggregation. Stats (detached 0-d tensors, masked means):
    ``clipfrac`` (fraction where the clipped term is active, TRL), ``approx_kl``
    (``0.5 * (logp - old)**2``, cleanrl/TRL), ``approx_kl_k3`` (``(ratio - 1) - log ratio``,
    Schulman's k3), ``ratio_mean``.
    """
    m = mask.bool() if mask.dtype != torch.bool else mask
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    log_ratio = torch.where(m, logprobs - old_logprobs, zero)  # keep garbage under the mask out
    adv = torch.where(m, advantages, zero)
    ratio = torch.exp(log_ratio)
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = _agg(torch.max(pg1, pg2), m, normaliser)
    with torch.no_grad():
        stats = {
            "clipfrac": _mean((pg2 > pg1).to(logprobs.dtype), m),
            "approx_kl": _mean(0.5 * log_ratio**2, m),
            "approx_kl_k3": _mean(torch.expm1(log_ratio) - log_ratio, m),
            "ratio_mean": _mean(ratio, m),
        }
    return loss, stats


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    normaliser: Normaliser = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Clipped value loss (OpenAI baselines PPO2 / "N implementation details" detail on value
    clipping): ``0.5 * max((v - R)^2, (clip(v, old - eps, old + eps) - R)^2)`` summed over the
    mask / ``normaliser`` (default: number of valid tokens).

    Shapes: ``values``, ``old_values``, ``returns``, ``mask`` [B, T] -> ``(loss scalar, stats)``;
    stats: ``vf_clipfrac`` (fraction where the clipped term is larger), detached 0-d tensor.
    """
    m = mask.bool() if mask.dtype != torch.bool else mask
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    # values under the mask may be anything (even nan/inf): zero them so no nan reaches the grad
    values, old_values, returns = (torch.where(m, t, zero) for t in (values, old_values, returns))
    v_clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    l1 = (values - returns) ** 2
    l2 = (v_clipped - returns) ** 2
    loss = 0.5 * _agg(torch.max(l1, l2), m, normaliser)
    with torch.no_grad():
        stats = {"vf_clipfrac": _mean((l2 > l1).to(values.dtype), m)}
    return loss, stats
