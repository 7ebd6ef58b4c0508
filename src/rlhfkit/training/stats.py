"""Statistics over every rank's rows: the whitening and diagnostics a data-parallel online update
takes over the whole step, not one process's share of it. With one process (``info`` None or a
world of one) each is exactly its single-process counterpart (``core.masking``)."""

from __future__ import annotations

import torch

from rlhfkit.core.masking import masked_whiten
from rlhfkit.training.distributed import DistInfo, all_gather_rows, all_reduce_sum


def global_masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, info: DistInfo | None, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """``core.masking.masked_whiten`` with the mean and unbiased variance of every rank's valid
    positions (one process: exactly ``masked_whiten``)."""
    if info is None or not info.enabled:
        return masked_whiten(x, mask, shift_mean=shift_mean, eps=eps)
    m = mask.bool()
    xz = torch.where(m, x, torch.zeros((), dtype=x.dtype))
    n, total = (float(v) for v in all_reduce_sum(torch.stack([m.sum().double(), xz.sum().double()]), info))
    if n < 2:
        raise ValueError(f"whitening needs at least 2 valid elements over all ranks, got {int(n)}")
    mean = total / n
    sq = float(
        all_reduce_sum(torch.where(m, (x.double() - mean) ** 2, torch.zeros((), dtype=torch.float64)).sum(), info)
    )
    out = (xz - mean) * torch.rsqrt(torch.tensor(sq / (n - 1) + eps, dtype=x.dtype))
    if not shift_mean:
        out = out + mean
    return torch.where(m, out, torch.zeros((), dtype=out.dtype))


def global_whiten(x: torch.Tensor, info: DistInfo | None, eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / (std + eps)`` of one value per row ``[B]``, the mean and unbiased std taken
    over every rank's rows (RLOO's ``normalize_advantages``)."""
    whole = all_gather_rows(x, info)
    return (x - whole.mean()) / (whole.std() + eps)


def explained_variance(
    values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, info: DistInfo | None = None
) -> float:
    """``1 - Var[returns - values] / Var[returns]`` over valid tokens (cleanrl's debug metric),
    over every rank's tokens when ``info`` has several."""
    m = mask.bool()
    if info is not None and info.enabled:
        y, d = returns[m].double(), (returns - values)[m].double()
        n, sy, syy, sd, sdd = (
            float(v)
            for v in all_reduce_sum(
                torch.stack(
                    [
                        torch.tensor(float(y.numel()), dtype=torch.float64),
                        y.sum(),
                        (y * y).sum(),
                        d.sum(),
                        (d * d).sum(),
                    ]
                ),
                info,
            )
        )
        if n < 2:
            return float("nan")
        var_y, var_d = (syy - sy * sy / n) / (n - 1), (sdd - sd * sd / n) / (n - 1)
        return float(1 - var_d / var_y) if var_y > 0 else float("nan")
    if int(m.sum()) < 2:
        return float("nan")
    y, v = returns[m], values[m]
    var_y = y.var()
    return float(1 - (y - v).var() / var_y) if var_y > 0 else float("nan")
