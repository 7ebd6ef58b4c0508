"""Scalar reward models: ``AutoModelForSequenceClassification`` with ``num_labels=1`` on either a
causal-LM backbone (scores the last real token) or an encoder backbone (scores [CLS]/pooler).

``reward_scores`` is padding invariant: it takes positions from the attention mask (so left
padding works for causal models, docs/PPO_CHECKLIST.md #2 (padding-aware positions)) and finds
the last real token from the mask, never from pad ids (which may equal real ids in a user's tokenizer).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import warnings
from typing import Any

import torch
from torch import nn

from .loading import (
    ModelLoadError,
    _from_pretrained,
    _strip_gguf_quantization,
    _unwrap,
    disable_dropout,
    ensure_pad_token,
    load_tokenizer,
    resolve_model_source,
)

__all__ = [
    "init_score_head",
    "is_encoder",
    "score_head",
    "position_ids_from_mask",
    "last_real_index",
    "causal_lm_to_sequence_classifier",
    "load_reward_model",
    "reward_scores",
]

_HEAD_NAMES = ("score", "classifier", "v_head", "value_head")


@torch.no_grad()
def init_score_head(head: nn.Module, hidden_size: int, zero: bool = False) -> nn.Module:
    """Initialise a scalar head in place: weight ~ N(0, std=1/sqrt(hidden_size + 1)) and bias 0
    (docs/PPO_CHECKLIST.md #5 (reward on the last real token)), or weight and bias all zero with
    ``zero=True`` (value head from a policy, docs/PPO_CHECKLIST.md #8 (no dropout, value head
    init)). Works on the last ``nn.Linear`` inside ``head``."""
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TypeError(f"no nn.Linear in the head {type(head).__name__}")
    last = linears[-1]
    if zero:
        last.weight.zero_()
    else:
        last.weight.normal_(mean=0.0, std=1.0 / math.sqrt(hidden_size + 1))
    if last.bias is not None:
        last.bias.zero_()
    return head


def is_encoder(model_or_config: Any) -> bool:
    """True for a bidirectional encoder (BERT, RoBERTa, DeBERTa, ModernBERT, ...): its model type
    has a masked-LM head in transformers and the config is not flagged ``is_decoder``."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    config = model_or_config
    if isinstance(model_or_config, nn.Module):
        config = _unwrap(model_or_config).config
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "is_decoder", False):
        return False
    return getattr(config, "model_type", None) in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def score_head(model: nn.Module) -> nn.Module:
    """The scalar head of a sequence-classification model (``score``, ``classifier``, ...)."""
    inner = _unwrap(model)
    for name in _HEAD_NAMES:
        head = getattr(inner, name, None)
        if isinstance(head, nn.Module):
            return head
    raise TypeError(f"{type(inner).__name__} has no scalar head (looked for {_HEAD_NAMES})")


def _head_prefix(model: nn.Module) -> str:
    inner = _unwrap(model)
    head = score_head(inner)
    for name, module in inner.named_children():
        if module is head:
            return name
    raise TypeError("head is not a direct child of the model")  # pragma: no cover


def _backbone(model: nn.Module) -> nn.Module:
    inner = _unwrap(model)
    prefix = getattr(inner, "base_model_prefix", "")
    backbone = getattr(inner, prefix, None) if prefix else None
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"{type(inner).__name__} has no backbone attribute {prefix!r}")
    return backbone


def _hidden_size(model: nn.Module) -> int:
    config = _unwrap(model).config
    get_text = getattr(config, "get_text_config", None)
    text = get_text() if callable(get_text) else config
    return int(getattr(text, "hidden_size", None) or text.d_model)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``cumsum(mask) - 1`` clamped at 0: positions 0, 1, ... on the real tokens whatever the
    padding side. ``[B, T]`` long."""
    mask = attention_mask.long()
    return (mask.cumsum(dim=-1) - 1).clamp(min=0)


def last_real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position where ``attention_mask`` is true, per row (0 for empty rows)."""
    mask = attention_mask.bool()
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    return torch.where(mask, positions, torch.zeros_like(positions)).max(dim=-1).values


def _to_right_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """Move the real tokens of each row to the front (order kept), pads to the back."""
    mask = attention_mask.bool()
    order = torch.sort((~mask).to(torch.int8), dim=-1, stable=True).indices
    return input_ids.gather(-1, order), attention_mask.gather(-1, order)


def causal_lm_to_sequence_classifier(lm: nn.Module, zero_head: bool = False) -> nn.Module:
    """A ``*ForSequenceClassification`` (``num_labels=1``) whose backbone is a copy of the causal
    LM's (weights cloned, ``lm`` untouched) and whose head is freshly initialised
    (std 1/sqrt(hidden+1), or zeros with ``zero_head``). Dropout disabled, eval mode."""
    from transformers import AutoModelForSequenceClassification

    if hasattr(lm, "get_base_model") or hasattr(lm, "peft_config"):
        raise TypeError("pass the plain causal LM (before apply_lora), not a peft model")
    config = copy.deepcopy(lm.config)
    if getattr(config, "quantization_config", None) is not None:
        try:
            del config.quantization_config
        except AttributeError:  # pragma: no cover
            config.quantization_config = None
    config.num_labels = 1
    config.architectures = None
    dtype = next(lm.parameters()).dtype
    model = AutoModelForSequenceClassification.from_config(config, dtype=dtype)
    source = getattr(lm, lm.base_model_prefix)
    target = getattr(model, model.base_model_prefix)
    target.load_state_dict(source.state_dict())
    init_score_head(score_head(model), _hidden_size(model), zero=zero_head)
    disable_dropout(model)
    return model.eval()


def _unloaded_keys(info: dict) -> list[str]:
    """Weights ``from_pretrained`` left freshly initialised: missing, or of another shape."""
    keys: list[str] = list(info.get("missing_keys", []) or [])
    for item in info.get("mismatched_keys", []) or []:
        keys.append(item[0] if isinstance(item, (tuple, list)) else str(item))
    return keys


def _in_head(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def _fresh_head_keys(info: dict, prefix: str) -> bool:
    return any(_in_head(k, prefix) for k in _unloaded_keys(info))


class _DropLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


@contextlib.contextmanager
def _without_load_report():
    """Hide transformers' load-report table while a reward model loads: a new reward model's score
    head is missing from its backbone's checkpoint by design (the table printed it, with "consider
    training", for every ensemble member of every loop round). Keys that matter are reported by
    :func:`_warn_missing_backbone_keys` instead."""
    log = logging.getLogger("transformers.modeling_utils")
    drop = _DropLoadReport()
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


def _warn_missing_backbone_keys(spec: Any, info: dict, head_prefix: str) -> None:
    """Warn about weights outside the score head that the checkpoint did not provide (they are
    random: the model would score noise). Unexpected keys, such as a causal LM's ``lm_head``
    that a sequence classifier drops, are expected and not reported."""
    stray = sorted(k for k in _unloaded_keys(info) if not _in_head(k, head_prefix))
    if stray:
        warnings.warn(
            f"{os.fspath(spec)}: {len(stray)} backbone weight(s) missing from the checkpoint or of another "
            f"shape, left randomly initialised: {', '.join(stray[:5])}{' ...' if len(stray) > 5 else ''}",
            stacklevel=3,
        )


def _no_trained_head(spec: Any, why: str) -> ModelLoadError:
    return ModelLoadError(
        f"{os.fspath(spec)}: not a trained reward model ({why}); train one with "
        f"`rlhfkit reward train --model {os.fspath(spec)}` and score with its output folder"
    )


def load_reward_model(
    spec: str | os.PathLike,
    kind: str = "auto",
    tokenizer: Any | None = None,
    dtype: torch.dtype = torch.float32,
    trained_head: bool = False,
) -> tuple[nn.Module, Any]:
    """Load a scalar reward model and its tokenizer: ``(model, tokenizer)``.

    ``spec``: alias, local folder, ``.gguf`` file or hub name (see ``resolve_model_source``).
    ``kind``: ``"causal"``, ``"encoder"`` or ``"auto"`` (decided from the config). A GGUF source
    is loaded as a causal LM and its backbone copied into a ``*ForSequenceClassification``. A
    freshly created head gets std 1/sqrt(hidden+1) and bias 0; a trained head (a saved reward
    model) is kept. Dropout is disabled, the pad token is distinct from EOS (embeddings resized
    if needed) and ``config.pad_token_id`` is set. A tokenizer loaded here pads on the right; a
    tokenizer passed in keeps its padding side (``reward_scores`` is padding invariant).

    ``trained_head=True`` (scoring, evaluation): refuse a source whose score head would be
    freshly initialised (a base model, a GGUF file, a classifier with another number of
    labels): its scores would be noise that looks like a result.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    if kind not in {"auto", "causal", "encoder"}:
        raise ValueError(f"kind must be 'auto', 'causal' or 'encoder', got {kind!r}")
    folder, gguf_file = resolve_model_source(spec)
    if tokenizer is None:
        tokenizer = load_tokenizer(spec, padding_side="right")
    if gguf_file is not None:
        if kind == "encoder":
            raise ValueError(f"{os.fspath(spec)!r} is a GGUF causal LM, not an encoder")
        if trained_head:
            raise _no_trained_head(spec, "a GGUF file holds a language model, not a reward head")
        lm = _from_pretrained(AutoModelForCausalLM, spec, folder, gguf_file, dtype=dtype)
        _strip_gguf_quantization(lm)
        model = causal_lm_to_sequence_classifier(lm)
        del lm
    else:
        config = _from_pretrained(AutoConfig, spec, folder, None)
        encoder = is_encoder(config)
        if kind == "encoder" and not encoder:
            raise ValueError(f"{os.fspath(spec)!r} is not an encoder (model_type {config.model_type!r})")
        if kind == "causal" and encoder:
            raise ValueError(f"{os.fspath(spec)!r} is an encoder (model_type {config.model_type!r})")
        with _without_load_report():
            model, info = _from_pretrained(
                AutoModelForSequenceClassification,
                spec,
                folder,
                None,
                num_labels=1,
                dtype=dtype,
                output_loading_info=True,
                ignore_mismatched_sizes=True,
            )
        _warn_missing_backbone_keys(spec, info, _head_prefix(model))
        if _fresh_head_keys(info, _head_prefix(model)):
            if trained_head:
                raise _no_trained_head(
                    spec, f"its checkpoint has no trained '{_head_prefix(model)}' weights for one output"
                )
            init_score_head(score_head(model), _hidden_size(model))
    ensure_pad_token(tokenizer, model)
    disable_dropout(model)
    return model.eval(), tokenizer


def reward_scores(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """One float32 score per sequence, ``[B]``, padding invariant.

    Causal backbones: ``position_ids = cumsum(mask) - 1`` (left padding works) and the head read
    at the last real token (padded positions carry the pad id, which the HF head skips). Encoders: rows are
    re-packed to right padding and the model's own [CLS]/pooler head is used.
    Gradients flow (wrap in ``torch.no_grad()`` for inference).
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    inner = _unwrap(model)
    if getattr(inner.config, "num_labels", 1) != 1:
        raise ValueError(f"a reward model has num_labels=1, this one has {inner.config.num_labels}")
    if is_encoder(inner):
        ids, mask = _to_right_padding(input_ids, attention_mask)
        logits = model(input_ids=ids, attention_mask=mask).logits
        return logits[:, 0].float()
    # Go through the model's own forward (so DDP / FSDP / peft wrappers see the call) with
    # every padded position set to the pad id: Hugging Face's *ForSequenceClassification pools
    # the last position whose id is not the pad id, which is then the last real token.
    pad_id = inner.config.pad_token_id
    if pad_id is None:
        raise ValueError("the reward model's config has no pad_token_id (use load_reward_model)")
    mask = attention_mask.bool()
    # the head pools the last position whose id is not the pad id: a row whose last real token
    # *is* the pad id would be scored one token early, silently, so refuse it
    last = input_ids.gather(-1, last_real_index(mask).unsqueeze(-1)).squeeze(-1)
    if bool(((last == pad_id) & mask.any(dim=-1)).any()):
        raise ValueError(
            f"a sequence ends in the pad token (id {pad_id}) as a real token: the reward head "
            "could not find its last token; give the tokenizer a pad token distinct from every "
            "token the data uses (load_reward_model does: '<|pad|>')"
        )
    ids = torch.where(mask, input_ids, torch.full_like(input_ids, pad_id))
    logits = model(
        input_ids=ids,
        attention_mask=attention_mask.long(),
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    ).logits
    return logits[:, 0].float()
