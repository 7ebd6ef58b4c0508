"""Reward normalisation with state that is checkpointed with the run."""

from __future__ import annotations

import math
from typing import Any

import torch


class RunningNormaliser:
    """Standardise scores ``(x - mean) / sqrt(var + eps)`` with statistics pooled over every
    batch seen so far (Chan et al. parallel update of count, mean and sum of squared deviations;
    population variance). ``shift_mean=False`` only rescales (the mean is kept, as reward
    whitening in "The N implementation details of RLHF with PPO").

    Two uses: *running* (``normalise(x, update=True)``: stats include the current batch first,
    as OpenRLHF's running reward normalisation), or *fitted once* (``fit(x)`` on scores of the
    reference policy's responses, then ``normalise(x, update=False)``: docs/PPO_CHECKLIST.md #6
    (reward normalisation); Ziegler et al. 2019, who set the reward model's gain and bias so
    reference samples have mean 0, std 1).
    """

    def __init__(self, eps: float = 1e-8, shift_mean: bool = True):
        self.eps = float(eps)
        self.shift_mean = bool(shift_mean)
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0

    @property
    def var(self) -> float:
        return self.m2 / self.count if self.count else 1.0

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double().reshape(-1)
        n = int(x.numel())
        if n == 0:
            return
        b_mean = float(x.mean())
        b_m2 = float(((x - b_mean) ** 2).sum())
        total = self.count + n
        delta = b_mean - self.mean
        self.mean += delta * n / total
        self.m2 += b_m2 + delta**2 * self.count * n / total
        self.count = total

    def fit(self, x: torch.Tensor) -> "RunningNormaliser":
        self.count, self.mean, self.m2 = 0, 0.0, 0.0
        self.update(x)
        return self

    def normalise(self, x: torch.Tensor, update: bool = True) -> torch.Tensor:
        if update:
            self.update(x)
        scale = 1.0 / math.sqrt(self.var + self.eps)
        if self.shift_mean:
            return (x - self.mean) * scale
        return (x - self.mean) * scale + self.mean

    __call__ = normalise

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2, "eps": self.eps, "shift_mean": self.shift_mean}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
        self.mean = float(state["mean"])
        self.m2 = float(state["m2"])
        self.eps = float(state.get("eps", self.eps))
        self.shift_mean = bool(state.get("shift_mean", self.shift_mean))
