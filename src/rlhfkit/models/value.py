"""Value models: a ``*ForSequenceClassification`` (``num_labels=1``) whose scalar head is applied
at every position, giving one value per token.

``make_value_model`` builds one from a policy (backbone copied, head zero-initialised,
docs/PPO_CHECKLIST.md #8 (no dropout, value head init)) or from a reward model (backbone and,
unless ``zero_init``, head copied from the RM).
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import nn

from .loading import _unwrap, disable_dropout, ensure_pad_token, load_tokenizer
from .reward import (
    _backbone,
    _hidden_size,
    causal_lm_to_sequence_classifier,
    init_score_head,
    is_encoder,
    load_reward_model,
    position_ids_from_mask,
    score_head,
)

__all__ = ["token_values", "make_value_model"]


def token_values(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token values ``[B, T]`` (float32) from a sequence-classification model: the backbone's
    last hidden states (``position_ids`` from the mask, so either padding side works) followed by
    the model's linear scalar head at every position. Values at pad positions are meaningless;
    mask them. ``values[:, t]`` is the value of the state ending with token ``t``."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    inner = _unwrap(model)
    kwargs: dict[str, Any] = dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
    )
    if not is_encoder(inner):
        kwargs["use_cache"] = False
    hidden = _backbone(model)(**kwargs).last_hidden_state
    values = score_head(model)(hidden)
    if values.dim() != 3 or values.shape[-1] != 1:
        raise TypeError(
            f"the head of {type(inner).__name__} does not map each hidden state to one scalar "
            f"(got shape {tuple(values.shape)}); token_values needs a linear head with num_labels=1"
        )
    return values.squeeze(-1).float()


def _is_sequence_classifier(model: nn.Module) -> bool:
    try:
        score_head(model)
    except TypeError:
        return False
    return getattr(model, "get_output_embeddings", lambda: None)() is None


def make_value_model(spec_or_model: Any, zero_init: bool = True, tokenizer: Any | None = None) -> nn.Module:
    """A new value model (the source is never modified or shared).

    - a causal LM (the policy): a ``*ForSequenceClassification`` with a copy of its backbone;
      head zero-initialised (``zero_init=True``, docs/PPO_CHECKLIST.md #8 (no dropout, value head
      init)) or std 1/sqrt(hidden+1);
    - a sequence-classification model (a reward model): a deep copy; its head is zeroed with
      ``zero_init=True`` and kept (the RM's head) with ``zero_init=False``;
    - a spec (alias, folder, ``.gguf``, hub name): loaded with ``load_reward_model(kind="causal")``,
      the head then handled as for a reward model. ``tokenizer`` (default ``load_tokenizer(spec)``)
      gets its pad token and the embeddings are resized to it, matching the policy's vocabulary.
    Dropout disabled, eval mode.
    """
    if isinstance(spec_or_model, (str, os.PathLike)):
        if tokenizer is None:
            tokenizer = load_tokenizer(spec_or_model)
        model, _ = load_reward_model(spec_or_model, kind="causal", tokenizer=tokenizer)
        if zero_init:
            init_score_head(score_head(model), _hidden_size(model), zero=True)
        return model
    if not isinstance(spec_or_model, nn.Module):
        raise TypeError(f"expected a model or a model source, got {type(spec_or_model).__name__}")
    if hasattr(spec_or_model, "peft_config"):
        raise TypeError("pass the model before apply_lora, not a peft model")
    if _is_sequence_classifier(spec_or_model):
        model = copy.deepcopy(spec_or_model)
        if zero_init:
            init_score_head(score_head(model), _hidden_size(model), zero=True)
    else:
        model = causal_lm_to_sequence_classifier(spec_or_model, zero_head=zero_init)
    if tokenizer is not None:
        ensure_pad_token(tokenizer, model)
    disable_dropout(model)
    return model.eval()
