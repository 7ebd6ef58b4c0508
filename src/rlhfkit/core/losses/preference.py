"""Direct preference optimisation losses: DPO, IPO, conservative DPO, SimPO, ORPO and KTO.

Every function takes per-sequence log-probs that are already *summed over the response tokens*
(prompt and padding excluded), plus the response token counts where a loss length-normalises,
and returns a :class:`PreferenceLossOutput` of per-example losses and implicit rewards (detached),
so a caller can sum, mean or weight them as its loop needs. Shapes: ``B`` pairs (or, for KTO,
``B`` unpaired examples).

Tied pairs (``tie`` true: chosen and rejected equally good) are supported by the pairwise losses:
the target is then equal preference, i.e. the loss is minimised where the two implicit rewards
are equal (logistic losses: label 1/2, ``-0.5 * (logsigmoid(z) + logsigmoid(-z))``, the cDPO loss
with ``label_smoothing = 0.5``; IPO: target margin 0, as IPO's regression target is
``(p - 1/2) / tau`` for a preference probability ``p`` = 1/2).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F


class PreferenceLossOutput(NamedTuple):
    """``losses`` [B] (differentiable); ``chosen_rewards`` and ``rejected_rewards`` [B], detached
    implicit rewards (for KTO: ``chosen_rewards`` are all examples' rewards, ``rejected_rewards``
    is empty, and ``kl`` holds the reference point z0)."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    kl: Optional[torch.Tensor] = None


def _tied_logistic(z: torch.Tensor, tie: Optional[torch.Tensor], label_smoothing: float = 0.0) -> torch.Tensor:
    """``-(1-eps) logsigmoid(z) - eps logsigmoid(-z)`` with eps = 1/2 on tied rows."""
    loss = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    if tie is not None:
        loss = torch.where(tie.bool(), -0.5 * (F.logsigmoid(z) + F.logsigmoid(-z)), loss)
    return loss


def _lengths(n: torch.Tensor) -> torch.Tensor:
    return n.to(torch.get_default_dtype() if not n.is_floating_point() else n.dtype).clamp(min=1)


def dpo_sigmoid_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    tie: Optional[torch.Tensor] = None,
) -> PreferenceLossOutput:
    """DPO, Rafailov et al. 2023 ("Direct Preference Optimization", eq. 7):
    ``-logsigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))``; implicit reward
    ``beta * (log pi - log pi_ref)`` (their eq. 5).

    Shapes: all log-probs [B] (summed over response tokens); ``tie`` bool [B] optional -> [B]."""
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    z = beta * (chosen_ratio - rejected_ratio)
    return PreferenceLossOutput(_tied_logistic(z, tie), beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def cdpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.1,
    tie: Optional[torch.Tensor] = None,
) -> PreferenceLossOutput:
    """Conservative DPO, Mitchell 2023 ("A note on DPO with noisy preferences"): the labels are
    flipped with probability ``eps = label_smoothing``, so the target is ``1 - eps``:
    ``-(1-eps) logsigmoid(z) - eps logsigmoid(-z)`` with ``z`` the DPO logit. ``eps = 0`` is DPO.

    Shapes as :func:`dpo_sigmoid_loss`."""
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    z = beta * (chosen_ratio - rejected_ratio)
    return PreferenceLossOutput(
        _tied_logistic(z, tie, label_smoothing), beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
    )


def ipo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    chosen_lengths: Optional[torch.Tensor] = None,
    rejected_lengths: Optional[torch.Tensor] = None,
    tie: Optional[torch.Tensor] = None,
) -> PreferenceLossOutput:
    """IPO, Azar et al. 2023 ("A General Theoretical Paradigm to Understand Learning from Human
    Preferences", eq. 17): ``(h - 1/(2 beta))^2`` with ``h`` the difference of log-ratios and
    ``beta`` the regulariser (their tau). With ``chosen_lengths``/``rejected_lengths`` each
    log-ratio is divided by its response's token count first (TRL's form, which its authors
    confirmed the paper's results use); without them, the paper's summed form. Tied pairs:
    target margin 0 (``h^2``). Rewards: ``beta * log-ratio`` (summed, as DPO's).

    Shapes: log-probs [B]; lengths [B] (int or float) optional; ``tie`` bool [B] -> [B]."""
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("give both chosen_lengths and rejected_lengths, or neither")
    if chosen_lengths is not None:
        h = chosen_ratio / _lengths(chosen_lengths) - rejected_ratio / _lengths(rejected_lengths)
    else:
        h = chosen_ratio - rejected_ratio
    target = torch.full_like(h, 1 / (2 * beta))
    if tie is not None:
        target = torch.where(tie.bool(), torch.zeros_like(h), target)
    return PreferenceLossOutput((h - target) ** 2, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def simpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    beta: float = 2.0,
    gamma: float = 0.5,
    tie: Optional[torch.Tensor] = None,
) -> PreferenceLossOutput:
    """SimPO, Meng et al. 2024 ("SimPO: Simple Preference Optimization with a Reference-Free
    Reward", eq. 6): reference-free reward ``beta * logp / |y|`` (length-normalised) and a target
    margin ``gamma``: ``-logsigmoid(beta * (logp_c/|y_c| - logp_r/|y_r|) - gamma)``. Tied pairs:
    label 1/2 without the margin. Rewards: ``beta * logp / |y|``.

    Shapes: summed log-probs [B], response token counts [B] -> [B]."""
    chosen_reward = beta * chosen_logps / _lengths(chosen_lengths)
    rejected_reward = beta * rejected_logps / _lengths(rejected_lengths)
    d = chosen_reward - rejected_reward
    z = d - gamma
    if tie is not None:
        z = torch.where(tie.bool(), d, z)
    return PreferenceLossOutput(_tied_logistic(z, tie), chosen_reward.detach(), rejected_reward.detach())


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, stable at both ends (Maechler 2012: expm1 near 0,
    log1p far from it). Shape-preserving."""
    x = x.clamp(max=-1e-12)  # a log-prob of exactly 0 would make the odds infinite
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    lam: float = 0.1,
    tie: Optional[torch.Tensor] = None,
) -> PreferenceLossOutput:
    """ORPO, Hong et al. 2024 ("ORPO: Monolithic Preference Optimization without Reference
    Model", eqs. 4-7): with length-normalised log-probs ``a = logp / |y|``,
    ``log odds(y) = a - log(1 - exp(a))``, and the loss per pair is
    ``L_SFT + lam * L_OR`` = ``-a_c + lam * -logsigmoid(log odds(y_c) - log odds(y_r))``.

    The SFT (NLL) term is *included*, per pair as the chosen response's mean token NLL; TRL instead
    takes the token mean over the whole batch's chosen tokens (the same number when all chosen
    responses have one length). Tied pairs: label 1/2 on the odds-ratio term. Rewards (TRL's
    convention, for logging): ``lam * a``.

    Shapes: summed log-probs [B], response token counts [B] -> [B]."""
    a_c = chosen_logps / _lengths(chosen_lengths)
    a_r = rejected_logps / _lengths(rejected_lengths)
    log_odds = (a_c - a_r) - (log1mexp(a_c) - log1mexp(a_r))
    losses = -a_c + lam * _tied_logistic(log_odds, tie)
    return PreferenceLossOutput(losses, lam * a_c.detach(), lam * a_r.detach())


def kto_loss(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl_logps: torch.Tensor,
    kl_ref_logps: torch.Tensor,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> PreferenceLossOutput:
    """KTO, Ethayarajh et al. 2024 ("KTO: Model Alignment as Prospect Theoretic Optimization",
    eq. 7): with ``r = log pi(y|x) - log pi_ref(y|x)`` and the reference point
    ``z0 = max(0, mean(log pi(y'|x) - log pi_ref(y'|x)))`` estimated from *mismatched* pairs
    ``(x, y')`` (the paper's in-batch estimate of KL(pi || pi_ref), detached: no gradient flows
    through it, as in the paper and TRL), the loss per example is
    ``w_D * (1 - sigmoid(beta (r - z0)))`` if desirable, ``w_U * (1 - sigmoid(beta (z0 - r)))`` if not.
    Rewards: ``beta * r``; ``kl`` in the output is z0 (a 0-d tensor).

    Shapes: ``logps``, ``ref_logps`` [B] (summed over completion tokens); ``desirable`` bool [B];
    ``kl_logps``, ``kl_ref_logps`` [K] (any K >= 1: the mismatched pairs) -> losses [B]."""
    z0 = (kl_logps - kl_ref_logps).mean().detach().clamp(min=0)
    r = logps - ref_logps
    desirable = desirable.bool()
    losses = torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (r - z0))),
        undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r))),
    )
    return PreferenceLossOutput(losses, beta * r.detach(), r.new_zeros(0), z0)


# name -> pairwise loss; see each function for its arguments. The recipes call them by name.
PREFERENCE_LOSSES = {
    "sigmoid": dpo_sigmoid_loss,
    "ipo": ipo_loss,
    "cdpo": cdpo_loss,
    "simpo": simpo_loss,
    "orpo": orpo_loss,
}
# losses that need no reference model (they read only the policy's log-probs and lengths)
REFERENCE_FREE_LOSSES = ("simpo", "orpo")
