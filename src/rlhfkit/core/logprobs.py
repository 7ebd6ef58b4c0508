"""Per-token log-probabilities and entropies from logits."""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    # docs/PPO_CHECKLIST.md #3 (temperature in log-probs): the logits must be divided by
    # the sampling temperature before the log-softmax, otherwise the log-probs used in the
    # ratio / KL do not match the distribution the responses were sampled from.
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return logits if temperature == 1.0 else logits / temperature


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log softmax(logits / temperature)[label]`` for each position.

    Shapes: ``logits`` [B, T, V] already aligned with ``labels`` [B, T] (callers slice
    ``logits[:, :-1]`` and ``labels[:, 1:]``) -> float [B, T]; 0 where ``labels == -100``.
    Computed as ``gather(logits) - logsumexp(logits)``, never materialising a second [B, T, V]
    log-softmax; half-precision logits are processed one row at a time in float32 (the
    "selective log-softmax" trick of TRL) to bound peak memory and keep precision.
    """
    valid = labels != IGNORE_INDEX
    safe = torch.where(valid, labels, torch.zeros_like(labels)).unsqueeze(-1)
    if logits.dtype in (torch.float32, torch.float64):
        scaled = _scaled(logits, temperature)
        picked = scaled.gather(-1, safe).squeeze(-1)
        out = picked - torch.logsumexp(scaled, dim=-1)
    else:
        rows = []
        for row_logits, row_labels in zip(logits, safe):
            row = _scaled(row_logits.float(), temperature)
            rows.append(row.gather(-1, row_labels).squeeze(-1) - torch.logsumexp(row, dim=-1))
        out = torch.stack(rows)
    return torch.where(valid, out, torch.zeros((), dtype=out.dtype, device=out.device))


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0, chunk_size: int = 128) -> torch.Tensor:
    """Entropy of ``softmax(logits / temperature)`` at each position.

    Shapes: ``logits`` [B, T, V] -> [B, T]. ``H = logsumexp(z) - sum(softmax(z) * z)``
    (same identity as TRL's ``entropy_from_logits``); computed in float32 at least, over
    ``chunk_size`` positions at a time, so its temporaries stay a few ``[chunk_size, V]`` blocks
    instead of several copies of ``[B, T, V]`` (hundreds of MB with a 49k vocabulary).
    """
    flat = logits.reshape(-1, logits.shape[-1])
    out = []
    for block in flat.split(max(1, chunk_size)):
        z = _scaled(block if block.dtype == torch.float64 else block.float(), temperature)
        p = torch.softmax(z, dim=-1)
        out.append(torch.logsumexp(z, dim=-1) - (p * z).sum(dim=-1))
    return torch.cat(out).reshape(logits.shape[:-1]) if out else logits.new_zeros(logits.shape[:-1]).float()
