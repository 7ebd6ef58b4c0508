"""Masked statistics and response-mask helpers.

Masks are ``bool`` or 0/1 tensors with the same shape as the values; every statistic here only
reads positions where the mask is true (values under the mask may be anything, even inf/nan).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch


def _bool(mask: torch.Tensor) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: Optional[int] = None) -> torch.Tensor:
    """Sum of ``x`` over positions where ``mask`` is true.

    Shapes: ``x`` and ``mask`` [...] (same shape). ``dim=None`` -> scalar, otherwise the sum
    over ``dim`` (that dimension removed).
    """
    xm = torch.where(_bool(mask), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return xm.sum() if dim is None else xm.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: Optional[int] = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is true.

    Shapes: ``x``, ``mask`` [...]; ``dim=None`` -> scalar, else reduced over ``dim``.
    An empty selection gives NaN (like ``numpy.mean([])``); losses guard against that themselves.
    """
    m = _bool(mask)
    count = m.sum() if dim is None else m.sum(dim=dim)
    return masked_sum(x, m, dim) / count.to(x.dtype)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over all masked positions (scalar).

    Shapes: ``x``, ``mask`` [...] -> scalar. With ``unbiased`` the sum of squared deviations is
    divided by ``n - 1`` (Bessel's correction, as TRL's ``masked_var``); raises ``ValueError`` when
    ``unbiased`` and fewer than 2 positions are selected.
    """
    m = _bool(mask)
    n = int(m.sum().item())
    if unbiased and n < 2:
        raise ValueError(f"masked_var(unbiased=True) needs at least 2 valid elements, got {n}")
    mean = masked_mean(x, m)
    dev = torch.where(m, x - mean, torch.zeros((), dtype=x.dtype, device=x.device))
    sq = (dev**2).sum()
    return sq / (n - 1 if unbiased else n)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Whiten ``x`` with the masked mean and unbiased variance.

    Shapes: ``x``, ``mask`` [...] -> same shape; positions outside the mask are returned as 0.
    ``shift_mean=True``: ``(x - mean) / sqrt(var + eps)`` (mean 0, variance 1 on the mask).
    ``shift_mean=False``: the same, then the mean is added back (only the scale changes; mean kept).
    Semantics of OpenAI lm-human-preferences ``whiten`` / TRL ``masked_whiten`` (see "The N
    implementation details of RLHF with PPO", detail on reward/advantage whitening: rewards are
    whitened with ``shift_mean=False``, advantages with ``shift_mean=True``). torchtune's
    ``rlhf.whiten`` inverts the condition (``if shift_mean: whitened += mean``); that is a bug
    and is deliberately not reproduced here. Variance is unbiased (Bessel), as in TRL, so fewer
    than 2 valid positions raise ``ValueError`` (from ``masked_var``).
    """
    m = _bool(mask)
    x = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))  # no inf/nan into grads
    mean = masked_mean(x, m)
    var = masked_var(x, m, unbiased=True)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(m, out, torch.zeros((), dtype=out.dtype, device=out.device))


def last_true_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last true position in each row.

    Shapes: ``mask`` [B, T] -> LongTensor [B]; -1 for rows with no true position.
    """
    m = _bool(mask)
    T = m.shape[-1]
    pos = torch.arange(1, T + 1, device=m.device).expand_as(m)
    return (pos * m).max(dim=-1).values.long() - 1


def truncate_after_eos(
    ids: torch.Tensor, eos_token_id: int, pad_token_id: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut generated responses at their first EOS.

    Shapes: ``ids`` [B, T] response tokens -> ``(ids_truncated [B, T], response_mask bool [B, T],
    has_eos bool [B])``. Every token strictly after the first EOS becomes ``pad_token_id``;
    ``response_mask`` is true up to and including the first EOS, and all true (the whole
    generated length) in rows without an EOS. Same idea as TRL's ``truncate_response`` /
    "N implementation details of RLHF with PPO" (detail: truncate at EOS, pad afterwards).
    """
    is_eos = ids == eos_token_id
    has_eos = is_eos.any(dim=-1)
    T = ids.shape[-1]
    # argmax returns the first maximal index, i.e. the first EOS; rows without EOS -> T.
    first = torch.where(has_eos, is_eos.int().argmax(dim=-1), torch.full_like(has_eos, T, dtype=torch.long))
    pos = torch.arange(T, device=ids.device).unsqueeze(0)
    response_mask = pos <= first.unsqueeze(-1)
    ids_truncated = torch.where(response_mask, ids, torch.full_like(ids, pad_token_id))
    return ids_truncated, response_mask, has_eos
