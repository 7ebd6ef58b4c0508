"""Response log-probs of right-padded sequences under a causal LM, and under its reference.

``sequence_logps`` sums each row's scored (response) tokens' log-probs, computing logits only at
those positions when the model's head can be run apart from its decoder; ``reference_forward`` is
the same with the LoRA adapter off and no gradient (the ``lora`` reference of DPO and KTO).
"""

from __future__ import annotations

import torch
from torch.nn.parallel import DistributedDataParallel

from rlhfkit.core.logprobs import token_logprobs
from rlhfkit.data.tokenize import IGNORE_INDEX
from rlhfkit.models import position_ids_from_mask, reference_context
from rlhfkit.training.checkpoint import unwrap
from rlhfkit.training.distributed import is_sharded

# causal LMs whose logits are exactly lm_head(final hidden state)
PLAIN_HEAD_MODELS = {"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo", "olmo2", "smollm3"}


def decoder_and_head(model):
    """``(decoder, lm_head)`` of a plain (or LoRA-wrapped) Hugging Face causal LM whose logits are
    just ``lm_head(decoder(...).last_hidden_state)``, else None: distributed wrappers (whose own
    forward must run for gradient sync / unsharding) and models that transform their logits
    further (soft-capping, logit scaling) take the ordinary full-logits path."""
    if isinstance(model, DistributedDataParallel) or is_sharded(model):
        return None
    config = getattr(model, "config", None)
    # an allow-list: other architectures scale or cap their logits after the head (Gemma 2,
    # Cohere, Granite, FalconH1 ...) and take the full path
    if getattr(config, "model_type", None) not in PLAIN_HEAD_MODELS:
        return None
    try:
        decoder, head = model.get_decoder(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if decoder is None or head is None or decoder is model:
        return None
    return decoder, head


def sequence_logps(model, input_ids, attention_mask, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of response-token log-probs [N], response token counts [N]) for right-padded rows.
    Position ids come from the mask (docs/PPO_CHECKLIST.md #2 (padding-aware positions)).

    Logits are computed only where a label is scored: the decoder's hidden states at the K
    response positions go through the LM head ([K, V] instead of [N, T, V]; in HH-style data
    most tokens are prompt, so this saves most of the head's matmul, its log-softmax and their
    memory). Models without a separable head use the full logits (same numbers)."""
    device = next(unwrap(model).parameters()).device
    input_ids, attention_mask, labels = input_ids.to(device), attention_mask.to(device), labels.to(device)
    kwargs = dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    target = labels[:, 1:]
    scored = target != IGNORE_INDEX
    split = decoder_and_head(model)
    if split is None:
        logits = model(**kwargs).logits
        return token_logprobs(logits[:, :-1], target).sum(-1), scored.sum(-1)
    decoder, head = split
    hidden = decoder(**kwargs).last_hidden_state[:, :-1]  # position t predicts token t + 1
    logits = head(hidden[scored])  # [K, V]
    token_lp = token_logprobs(logits.float().unsqueeze(0), target[scored].unsqueeze(0))[0]  # [K]
    rows = torch.arange(target.shape[0], device=device).unsqueeze(1).expand_as(target)[scored]
    sums = torch.zeros(target.shape[0], dtype=token_lp.dtype, device=device).index_add(0, rows, token_lp)
    return sums, scored.sum(-1)


def reference_forward(model, input_ids, attention_mask, labels) -> torch.Tensor:
    """Reference log-probs: the policy with its LoRA adapter off, no gradient."""
    with torch.no_grad(), reference_context(unwrap(model)) as ref:
        return sequence_logps(ref, input_ids, attention_mask, labels)[0]
