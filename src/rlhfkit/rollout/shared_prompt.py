"""Teacher-forced log-probs with each distinct prompt computed once ("prefix sharing").

GRPO and RLOO score k responses to every prompt. The plain pass (``engine.response_logprobs``)
runs ``prompt ⊕ response`` for each of the k rows, so every prompt token goes through the model k
times, in the reference pass, the behaviour pass and the training forward, backward and
recomputation. Here the rows of one prompt become ONE packed sequence

    [prompt (P, left padded) | response 1 (R) | response 2 (R) | ... | response n (R)]

with a block attention mask: a prompt token sees the real prompt tokens up to itself; a token of
response j sees the real prompt tokens and the real tokens of response j up to itself (never
another response); every position also sees itself, so a pad's softmax is never empty (pads are
never seen by a real token). Position ids are what the plain pass gives each row: the prompt's
``cumsum(mask) - 1``, and response tokens ``(real prompt tokens) + t``. Every real token
therefore attends to exactly the keys, at exactly the positions, it attends to in the plain pass:
the log-probs are the same function (equal to float rounding; tests/rollout/test_shared_prompt.py),
and so are their gradients, the shared prompt's being the sum over its responses. The
LM head runs only on the positions that predict response tokens: the last prompt position
(shared by the n first response tokens) and each response's own positions.

When it pays: a packed sequence is longer (P + nR instead of P + R), so attention costs more
while the linear layers cost less (G·(P + nR) tokens instead of B·(P + R)). ``worth_sharing``
compares the two with the layer shapes and packs only when it saves at least 10%: it does for
SmolLM2-135M with 4 samples per prompt (9% faster no-grad passes, 23% faster forward +
backward, benchmarks/rollout_engines.py), it does not for prompts much shorter than the
responses.

Where it applies: the Hugging Face Llama family (``llama``, ``qwen2``, ``qwen3``, ``mistral``
without a sliding window) with ``sdpa`` or ``eager`` attention, plain or wrapped by peft (LoRA),
since their mask builder takes a prepared 4D mask as it is.
"""

from __future__ import annotations

import torch

from rlhfkit.core.logprobs import IGNORE_INDEX, entropy_from_logits, token_logprobs

__all__ = ["packable", "prompt_groups", "worth_sharing", "packed_inputs", "shared_prompt_logprobs"]

PACKABLE_TYPES = ("llama", "qwen2", "qwen3", "mistral")


def _base(model):
    get = getattr(model, "get_base_model", None)  # peft wrappers
    return get() if callable(get) else model


def packable(model) -> bool:
    """True when ``model`` takes a custom 4D attention mask with per-token position ids."""
    config = getattr(_base(model), "config", None)
    if config is None or getattr(config, "model_type", None) not in PACKABLE_TYPES:
        return False
    if (
        getattr(config, "sliding_window", None)
        and getattr(config, "use_sliding_window", True)
        and config.model_type == "mistral"
    ):
        return False
    return getattr(config, "_attn_implementation", None) in ("sdpa", "eager")


def prompt_groups(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> list[list[int]]:
    """Rows with identical (prompt ids, mask), in order of first appearance: ``[[0, 1, 2, 3], ...]``."""
    key = torch.cat([prompt_ids, prompt_mask.long()], dim=1)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    groups: dict[int, list[int]] = {}
    for row, g in enumerate(inverse.tolist()):
        groups.setdefault(g, []).append(row)
    return list(groups.values())


def worth_sharing(config, n_rows: int, groups: list[list[int]], P: int, R: int, min_saving: float = 0.1) -> bool:
    """Whether packing saves at least ``min_saving`` of the estimated FLOPs: per layer, the linear
    layers cost ``c`` per token and attention ``a`` per (query, key) pair, computed over full
    rows (the kernels do not skip masked blocks)."""
    if len(groups) == n_rows or R < 1:
        return False
    d = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    kv = (getattr(config, "num_key_value_heads", None) or heads) * head_dim
    q = heads * head_dim
    c = 2 * (d * q + 2 * d * kv + q * d + 3 * d * config.intermediate_size)
    a = 4 * q
    plain = n_rows * ((P + R) * c + (P + R) ** 2 * a)
    n = max(len(g) for g in groups)
    L = P + n * R
    packed = len(groups) * (L * c + L * L * a)
    return packed <= (1 - min_saving) * plain


def packed_inputs(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    groups: list[list[int]],
    pad_id: int,
):
    """``(input_ids [G, L], position_ids [G, L], allowed [G, 1, L, L] bool)`` of the packed
    layout, ``L = P + n R`` with ``n`` the largest group (smaller groups get empty segments)."""
    device = prompt_ids.device
    P, R = prompt_ids.shape[1], response_ids.shape[1]
    G, n = len(groups), max(len(g) for g in groups)
    L = P + n * R
    first = torch.tensor([g[0] for g in groups], device=device)
    ids = torch.full((G, L), pad_id, dtype=torch.long, device=device)
    real = torch.zeros((G, L), dtype=torch.bool, device=device)
    ids[:, :P] = prompt_ids[first]
    real[:, :P] = prompt_mask[first].bool()
    n_prompt = real[:, :P].sum(1, keepdim=True)
    positions = torch.empty((G, L), dtype=torch.long, device=device)
    positions[:, :P] = (prompt_mask[first].long().cumsum(1) - 1).clamp(min=0)
    positions[:, P:] = (n_prompt + torch.arange(R, device=device)).repeat(1, n)
    for g, rows in enumerate(groups):
        for j, row in enumerate(rows):
            s = slice(P + j * R, P + (j + 1) * R)
            ids[g, s] = response_ids[row]
            real[g, s] = response_mask[row].bool()
    segment = torch.full((L,), -1, dtype=torch.long, device=device)  # -1: the prompt
    segment[P:] = torch.arange(n, device=device).repeat_interleave(R)
    idx = torch.arange(L, device=device)
    causal = idx[None, :] <= idx[:, None]  # [query, key]
    same = (segment[None, :] == -1) | (segment[None, :] == segment[:, None])
    allowed = (causal & same)[None] & real[:, None, :]
    allowed |= torch.eye(L, dtype=torch.bool, device=device)[None]
    return ids, positions, allowed[:, None]


def _mask_for(model, allowed: torch.Tensor) -> torch.Tensor:
    """Boolean for sdpa (True = attend); additive float (0 / most negative) for eager."""
    if getattr(_base(model).config, "_attn_implementation", "sdpa") == "sdpa":
        return allowed
    dtype = next(model.parameters()).dtype
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def shared_prompt_logprobs(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    groups: list[list[int]],
    temperature: float,
    with_entropy: bool,
    pad_id: int,
):
    """What ``engine.response_logprobs`` returns (``[B, R]`` log-probs, and entropies with
    ``with_entropy``), computed over the packed layout of ``groups``."""
    B, P = prompt_ids.shape
    R = response_ids.shape[1]
    G, n = len(groups), max(len(g) for g in groups)
    ids, positions, allowed = packed_inputs(prompt_ids, prompt_mask, response_ids, response_mask, groups, pad_id)
    device = ids.device
    # positions whose logits predict response tokens: P-1 (token 0 of every response), then
    # for response j the positions of its tokens 0..R-2 (predicting tokens 1..R-1)
    keep = [P - 1] + [P + j * R + t for j in range(n) for t in range(R - 1)]
    logits = model(
        input_ids=ids,
        attention_mask=_mask_for(model, allowed),
        position_ids=positions,
        use_cache=False,
        logits_to_keep=torch.tensor(keep, device=device),
    ).logits  # [G, 1 + n(R-1), V]
    labels = torch.full((G, n, R), IGNORE_INDEX, dtype=torch.long, device=device)
    for g, rows in enumerate(groups):
        for j, row in enumerate(rows):
            labels[g, j] = torch.where(response_mask[row].bool(), response_ids[row], IGNORE_INDEX)
    first_logits = logits[:, :1].expand(G, n, logits.shape[-1])  # [G, n, V], a view
    lp_first = token_logprobs(first_logits, labels[:, :, 0], temperature)  # [G, n]
    rest = logits[:, 1:].reshape(G * n, R - 1, logits.shape[-1])
    lp_rest = token_logprobs(rest, labels[:, :, 1:].reshape(G * n, R - 1), temperature).view(G, n, R - 1)
    lp = torch.cat([lp_first.unsqueeze(-1), lp_rest], dim=-1)  # [G, n, R]
    where_g = torch.empty(B, dtype=torch.long, device=device)
    where_j = torch.empty(B, dtype=torch.long, device=device)
    for g, rows in enumerate(groups):
        for j, row in enumerate(rows):
            where_g[row], where_j[row] = g, j
    out = lp[where_g, where_j]
    if not with_entropy:
        return out
    with torch.no_grad():  # a diagnostic, as in the plain pass
        t = temperature
        ent_first = entropy_from_logits(logits[:, :1].detach(), temperature=t)  # [G, 1]
        ent_rest = entropy_from_logits(logits[:, 1:].detach(), temperature=t).view(G, n, R - 1)
        ent = torch.cat([ent_first.unsqueeze(1).expand(G, n, 1), ent_rest], dim=-1)[where_g, where_j]
    return out, torch.where(response_mask.bool(), ent, torch.zeros_like(ent))
