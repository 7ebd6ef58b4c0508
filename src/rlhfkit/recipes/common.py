"""Small pieces the recipes share: LoRA settings, checks of the data fields, record weights,
saving the result. Records are read by ``rlhfkit.data.loading`` and split by
``rlhfkit.data.splits``."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from rlhfkit.data.errors import DataError
from rlhfkit.models import apply_lora
from rlhfkit.training.config import save_config
from rlhfkit.training.distributed import DistInfo, full_model_state, is_sharded


@dataclass
class LoraConfig:
    r: int = field(default=0, metadata={"help": "LoRA rank (0 = full fine-tuning)"})
    alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    dropout: float = field(
        default=0.0,
        metadata={"help": "LoRA dropout, off by default: docs/PPO_CHECKLIST.md #8 (no dropout, value head init)"},
    )
    target_modules: str = field(default="all-linear", metadata={"help": "peft target_modules"})


def with_lora(model, lora: LoraConfig):
    """``model`` wrapped in a LoRA adapter as ``lora`` says (``models.apply_lora``), or ``model``
    itself when ``lora.r`` is 0 (full fine-tuning): the one place a recipe's LoRA settings reach
    the model."""
    if not lora.r:
        return model
    return apply_lora(model, r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_modules=lora.target_modules)


def validate_data_fields(config) -> None:
    """Checks of the data fields the supervised recipes share (those present on `config`), so a
    typo is a config error before any model is loaded, never a silent default."""
    if getattr(config, "on_error", "raise") not in ("raise", "skip"):
        raise ValueError(f"field 'on_error': {config.on_error!r} is not one of ['raise', 'skip']")
    if getattr(config, "ties", "drop") not in ("drop", "keep"):
        raise ValueError(f"field 'ties': {config.ties!r} is not one of ['drop', 'keep']")
    if not 0 <= getattr(config, "eval_fraction", 0.0) < 1:
        raise ValueError(f"field 'eval_fraction': {config.eval_fraction} is not in [0, 1)")
    if getattr(config, "max_length", 1) < 1:
        raise ValueError(f"field 'max_length': must be >= 1, got {config.max_length}")


def require_examples(
    n_train: int, batch_size: int, source: str, n_held: int = 0, total_weight: float | None = None
) -> None:
    """Refuse, naming the data, a training set that cannot fill one batch, or whose records all
    weigh 0 (``total_weight``, :func:`total_weight`: nothing to learn from, every step would be a
    zero update): checked before any model is loaded (and before ``dpo`` / ``kto`` compute their
    reference cache), as ``fit`` would refuse the first after."""
    if n_train < batch_size:
        held = f" ({n_held} held out)" if n_held else ""
        raise DataError(
            f"{n_train} training examples{held} for a batch of {batch_size}; lower batch_size or add data",
            path=source,
            reason="invalid_value",
        )
    if total_weight is not None and not total_weight > 0:
        raise DataError(
            f"every one of the {n_train} training records has weight 0: nothing to train on",
            path=source,
            field="weight",
            reason="invalid_value",
        )


def total_weight(records: list) -> float:
    """The sum of the records' weights (absent = 1)."""
    return float(sum(1.0 if getattr(r, "weight", None) is None else r.weight for r in records))


def scaled_weights(records: list) -> list:
    """``records`` with their weights divided by the power of two at or above the largest one,
    when that is above 1: the losses are weighted means (a sum over the sum of weights), which a
    common factor leaves as they are, exactly so for a power of two (floating point multiplies by
    one without rounding), while a weight near the float range (1e308: the sum overflows, the loss
    turns NaN) no longer reaches the loss. Records without a weight count 1, as in training."""
    largest = max((1.0 if getattr(r, "weight", None) is None else r.weight for r in records), default=1.0)
    if largest <= 1.0:
        return records
    exponent = math.frexp(largest)[1]  # largest = m * 2**exponent, 0.5 <= m < 1
    return [
        replace(r, weight=math.ldexp(1.0 if r.weight is None else r.weight, -exponent)) if hasattr(r, "weight") else r
        for r in records
    ]


def with_weight(example: dict, record) -> dict:
    """``example`` with ``weight`` = the record's weight, when it has one."""
    weight = getattr(record, "weight", None)
    return example if weight is None else {**example, "weight": float(weight)}


def weights_of(examples: list[dict]) -> torch.Tensor | None:
    """The examples' weights [B] (absent = 1), or None when every one is 1: the unweighted sums stay
    exactly what they were."""
    weights = [e.get("weight", 1.0) for e in examples]
    return None if all(w == 1.0 for w in weights) else torch.tensor(weights, dtype=torch.float64)


def set_threads(threads: int) -> None:
    if threads:
        torch.set_num_threads(threads)


def save_final(model, tokenizer, config, metrics: dict, info: DistInfo, subdir: str = "model") -> Path | None:
    """`save_pretrained` of model and tokenizer (LoRA merged), the config and final metrics.
    Call on every rank: a sharded (FSDP) model is gathered first, which is collective."""
    state = full_model_state(model) if info.enabled and is_sharded(model) else None
    if not info.is_main:
        return None
    out = Path(config.output_dir) / subdir
    out.mkdir(parents=True, exist_ok=True)
    to_save = model
    if hasattr(model, "merge_and_unload"):  # a peft model: ship plain HF weights
        # and the adapter alone beside them (before merging: merge_and_unload folds it in), what
        # a learner's version carries (rlhfkit learn: a version is small)
        model.save_pretrained(Path(config.output_dir) / "adapter")
        to_save = model.merge_and_unload()
    to_save.save_pretrained(out, state_dict=state) if state is not None else to_save.save_pretrained(out)
    tokenizer.save_pretrained(out)
    save_config(config, Path(config.output_dir) / "config.yaml")
    (Path(config.output_dir) / "final_metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    os.sync()
    return out
