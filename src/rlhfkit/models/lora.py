"""LoRA adapters (peft) and the reference policy as the same weights with the adapter off."""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

from .loading import _unwrap, disable_dropout

__all__ = ["apply_lora", "reference_context"]


def apply_lora(
    model: nn.Module, r: int = 16, alpha: int = 32, dropout: float = 0.0, target_modules: str | list[str] = "all-linear"
):
    """Wrap ``model`` in a peft ``PeftModel`` with a LoRA adapter (in place: ``model``'s layers are
    replaced). ``"all-linear"`` targets every linear layer except the output head. For a
    sequence-classification model (reward / value) the scalar head is fully trainable
    (peft ``SEQ_CLS`` task). Only adapter (and head) parameters require grad. ``dropout`` is the
    LoRA dropout; all other dropout stays off. The wrapped model keeps ``model``'s train / eval mode."""
    from peft import LoraConfig, TaskType, get_peft_model

    inner = _unwrap(model)
    has_lm_head = getattr(inner, "get_output_embeddings", lambda: None)() is not None
    task = TaskType.CAUSAL_LM if has_lm_head else TaskType.SEQ_CLS
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        task_type=task,
        bias="none",
    )
    was_training = model.training
    peft_model = get_peft_model(model, config)
    # the adapter's new modules start in train mode whatever the model's mode: a model loaded for
    # sampling (eval mode) would draw LoRA dropout in its rollouts and no-grad passes
    # (docs/PPO_CHECKLIST.md #8 (no dropout, value head init)) until something called .eval(),
    # and a resumed run would not repeat the original's draws
    peft_model.train(was_training)
    if dropout == 0.0:
        disable_dropout(peft_model)
    else:  # keep the LoRA dropout, zero the rest
        for name, module in peft_model.named_modules():
            if isinstance(module, nn.modules.dropout._DropoutNd) and "lora_dropout" not in name:
                module.p = 0.0
    return peft_model


@contextlib.contextmanager
def reference_context(model: nn.Module) -> Iterator[nn.Module]:
    """``with reference_context(policy): ...`` runs ``policy`` with its LoRA adapter (and any
    adapter copy of a trained head) disabled, i.e. as the frozen reference model, then turns the
    adapter back on. Raises ``TypeError`` for a model without an adapter."""
    disable = getattr(model, "disable_adapter", None)
    if not callable(disable) or not hasattr(model, "peft_config"):
        raise TypeError(f"{type(model).__name__} has no LoRA adapter; keep a separate reference model instead")
    with disable():
        yield model
