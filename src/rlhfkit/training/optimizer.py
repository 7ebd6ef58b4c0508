"""The optimiser and learning-rate schedule of the training loops (``fit``, and the online
recipes' driver): fused AdamW where it can be, warm-up then linear decay or a constant rate."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .loop import TrainingConfig


def adamw(params, config: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW with ``config``'s learning rate, weight decay and epsilon. The fused kernel (one pass
    per tensor, no temporaries the size of the largest parameter; CPU since torch 2.4) whenever
    every parameter is a plain float tensor on CPU or CUDA; sharded (DTensor) parameters keep
    the default implementation."""
    params = [p for p in params if p.requires_grad]
    fused = bool(params) and all(
        type(p.data) is torch.Tensor
        and p.device.type in ("cpu", "cuda")
        and p.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64)
        for p in params
    )
    return torch.optim.AdamW(
        params, lr=config.learning_rate, weight_decay=config.weight_decay, eps=config.adam_eps, fused=fused or None
    )


def build_optimizer(model: torch.nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    return adamw(model.parameters(), config)


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, config: TrainingConfig, constant_groups: int = 0
):
    """Warm-up then linear decay (or constant) of every parameter group's learning rate, except
    the last ``constant_groups`` groups, which keep theirs (an adversarial discriminator: it must
    keep up with the policy to the last step, not stop learning as the policy's rate reaches 0)."""
    warmup = int(config.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if config.lr_schedule == "constant":
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    if not constant_groups:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    n = len(optimizer.param_groups)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, [factor] * (n - constant_groups) + [_constant] * constant_groups
    )


def _constant(step: int) -> float:
    return 1.0
