"""How a per-token loss over a minibatch becomes one number: token weights.

A weight per token, computed once per minibatch from its mask, makes ``sum(w * per_token_loss)``
the minibatch's loss however its rows are later cut into micro-batches (gradient accumulation) or
spread over processes: the normaliser is the whole minibatch's, never a micro-batch's.
"""

from __future__ import annotations

import torch

AGGREGATIONS = ("token", "sequence", "constant")


def token_weights(
    mask: torch.Tensor,
    aggregation: str,
    max_new_tokens: int,
    n_sequences: int | None = None,
    n_tokens: float | None = None,
) -> torch.Tensor:
    """Per-token weights ``[B, R]`` such that ``sum(w * per_token_loss)`` over a minibatch of B
    sequences is its loss; rows may then be split into micro-batches in any way. Over several
    processes each holds part of the minibatch: ``n_sequences`` / ``n_tokens`` are then the whole
    minibatch's counts (default: this ``mask``'s), so the ranks' losses add up to the loss.

    - ``token``: ``1 / (valid tokens in the minibatch)`` (DAPO, Yu et al. 2025; TRL "dapo");
    - ``sequence``: ``1 / (len_i * B)``: each sequence's token mean, then the mean over
      sequences (GRPO, Shao et al. 2024; TRL "grpo");
    - ``constant``: ``1 / (max_new_tokens * B)``: a fixed normaliser, no length bias (Dr. GRPO,
      Liu et al. 2025).
    """
    m = mask.bool().to(torch.float32)
    B = m.shape[0] if n_sequences is None else n_sequences
    if aggregation == "token":
        w = m / (m.sum() if n_tokens is None else torch.tensor(float(n_tokens))).clamp(min=1)
    elif aggregation == "sequence":
        w = m / (m.sum(1, keepdim=True).clamp(min=1) * B)
    elif aggregation == "constant":
        w = m / (max_new_tokens * B)
    else:
        raise ValueError(f"aggregation must be token, sequence or constant, got {aggregation!r}")
    return w
