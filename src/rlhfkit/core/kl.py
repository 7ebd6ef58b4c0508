"""KL estimators (per token and summed per sequence) and KL-coefficient controllers."""

from __future__ import annotations

from typing import Any, Dict, Union

import torch

Number = Union[float, int, torch.Tensor]


# Estimators of KL(pi || ref) from samples of pi, per token, J. Schulman, "Approximating KL
# divergence" (2020, http://joschu.net/blog/kl-approx.html), with log r = ref_logp - logp.
def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = ``logp - ref_logp`` (unbiased, high variance, can be negative). Shapes: any, same."""
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = ``0.5 * (logp - ref_logp)**2`` (biased, low variance, >= 0). Shapes: any, same."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = ``exp(log r) - 1 - log r`` with ``log r = ref_logp - logp`` (unbiased, >= 0).

    Shapes: any, same.
    """
    log_r = ref_logp - logp
    return torch.expm1(log_r) - log_r


def sequence_kl(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, estimator: str = "k1"
) -> torch.Tensor:
    """Per-sequence KL(pi || ref) estimate ``[B]``: the per-token estimator summed over the response
    tokens (``mask``), in float32. ``k1``: ``sum_t (logp - ref_logp)``; ``k3``: ``sum_t (r - 1 -
    log r)``, ``r = pi_ref / pi``. Both are unbiased for the sequence KL on the policy's own
    samples (the chain rule: each token's term has the KL at that position as its mean given the
    context); k1 can be negative on a few samples, k3 never is (Schulman 2020).

    Shapes: ``logprobs``, ``ref_logprobs``, ``mask`` ``[B, R]`` -> ``[B]``."""
    per_token = {"k1": kl_k1, "k3": kl_k3}
    if estimator not in per_token:
        raise ValueError(f"estimator must be k1 or k3, got {estimator!r}")
    k = per_token[estimator](logprobs.float(), ref_logprobs.float())
    return torch.where(mask.bool(), k, torch.zeros_like(k)).sum(dim=1)


def _f(x: Number) -> float:
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


class FixedKLController:
    """Constant KL coefficient (``value``); ``update`` is a no-op."""

    def __init__(self, value: float):
        self.value = float(value)

    def update(self, current_kl: Number, n_steps: int) -> None:
        return None

    def state_dict(self) -> Dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.value = float(state["value"])


def kl_controller(kind: str, kl_coef: float, target: float, horizon: float):
    """A ``fixed`` or ``adaptive`` KL coefficient controller."""
    if kind == "adaptive":
        return AdaptiveKLController(kl_coef, target, horizon)
    if kind == "fixed":
        return FixedKLController(kl_coef)
    raise ValueError(f"kl_control must be 'fixed' or 'adaptive', got {kind!r}")


class AdaptiveKLController:
    """Adaptive KL coefficient of Ziegler et al. 2019 ("Fine-Tuning Language Models from Human
    Preferences", section 2.2; lm-human-preferences ``AdaptiveKLController``):

    ``e = clip(current_kl / target - 1, -0.2, 0.2)``; ``value *= 1 + e * n_steps / horizon``.
    ``n_steps`` is the number of samples (episodes) the KL was measured over.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError("target and horizon must be > 0")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: Number, n_steps: int) -> None:
        proportional_error = min(max(_f(current_kl) / self.target - 1.0, -0.2), 0.2)
        mult = 1.0 + proportional_error * n_steps / self.horizon
        self.value *= mult

    def state_dict(self) -> Dict[str, Any]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.value = float(state["value"])
        self.target = float(state.get("target", self.target))
        self.horizon = float(state.get("horizon", self.horizon))
