"""The supervised training loop shared by `sft` and `reward train`.

Composition, not inheritance: a recipe hands `fit` its model, its examples, a `collate`
function, a `loss_fn` that returns a *sum* over units (tokens, pairs) and a `count_fn` that
counts those units (with record weights: the loss is a weighted sum and the count the sum of the
weights). `fit` divides by the unit count of the whole global batch (all
micro-batches on all ranks), so batch 8 x accumulation 1, batch 1 x accumulation 8 and
2 processes x batch 4 make the same update (TRL's invariance tests; OpenRLHF's aggregation).

Exact resume: the data order of epoch e is a permutation seeded by (seed, e), so the position
in the data is a function of the step alone; the checkpoint stores model, optimiser,
scheduler and RNG states (training/checkpoint.py), and a digest of the training examples: a run
resumes only on the examples it was trained on (``examples_digest``). The optimiser and schedule
are in ``training/optimizer.py``, the best weights' bookkeeping (``best_metric``) in
``training/best_weights.py``.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import torch

from rlhfkit.core.precision import autocast, keep_head_fp32

from .best_weights import BestWeights
from .callbacks import step_ended
from .checkpoint import load_checkpoint, resume_checkpoint, save_checkpoint, unwrap
from .config import ConfigError
from .distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    full_model_state,
    full_optimizer_state,
    grad_sync_context,
    load_full_optimizer_state,
    wrap_model,
)
from .logging import MetricsLogger, progress_bar
from .optimizer import build_optimizer, build_scheduler
from .run_identity import check_resume_config, check_resume_data, examples_digest, resume_fingerprint


@dataclass
class TrainingConfig:
    """Fields every supervised recipe shares (a recipe's config extends this)."""

    output_dir: str = field(
        default="outputs/run", metadata={"help": "where checkpoints, metrics and the final model go"}
    )
    seed: int = field(default=0, metadata={"help": "seed for init, data order and sampling"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the training data"})
    max_steps: int = field(
        default=0,
        metadata={
            "help": "train for exactly this many optimiser steps, passing over "
            "the data as often as needed: overrides epochs, as in HF "
            "Trainer (0 = from epochs)"
        },
    )
    batch_size: int = field(default=16, metadata={"help": "global batch: examples per optimiser step over all ranks"})
    micro_batch_size: int = field(
        default=4, metadata={"help": "examples per forward pass (gradient accumulation fills the batch)"}
    )
    learning_rate: float = field(default=5e-5, metadata={"help": "peak learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    adam_eps: float = field(default=1e-8, metadata={"help": "AdamW epsilon"})
    warmup_ratio: float = field(default=0.0, metadata={"help": "fraction of steps with linear warm-up"})
    lr_schedule: str = field(default="linear", metadata={"help": "linear (decay to 0) or constant"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "global gradient-norm clip (0 = off)"})
    save_every: int = field(default=0, metadata={"help": "checkpoint every N steps (0 = only at the end)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "how many recent checkpoints to keep"})
    eval_every: int = field(default=0, metadata={"help": "evaluate every N steps (0 = only at the end)"})
    best_metric: str = field(
        default="",
        metadata={
            "help": "keep the weights with the best value of this eval metric "
            "(e.g. val_loss; lower is better for names with loss/perplexity/ece, "
            "higher otherwise); the final model is those weights"
        },
    )
    group_by_length: bool = field(
        default=True,
        metadata={
            "help": "sort each global batch by length before cutting micro-batches: less padding, the same gradient"
        },
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "recompute each layer's activations in "
            "the backward pass instead of keeping them: much "
            "less memory for about one more forward pass"
        },
    )
    log_every: int = field(default=1, metadata={"help": "log metrics every N steps"})
    resume: bool = field(default=True, metadata={"help": "continue from the latest checkpoint in output_dir"})
    parallel: str = field(
        default="ddp",
        metadata={"help": "ddp (replicated) or fsdp (sharded, FSDP2) when launched with several processes"},
    )
    tensorboard: bool = field(default=True, metadata={"help": "also log to TensorBoard when installed"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch default)"})
    precision: str = field(
        default="fp32",
        metadata={
            "help": "fp32, or bf16: the training forward passes in bfloat16 "
            "autocast (weights, gradients, optimiser and output head "
            "stay float32; core/precision.py)"
        },
    )

    def trains_without_steps(self) -> bool:
        """Whether ``epochs: 0`` (no optimiser step) is a run: a recipe that fits something
        else first (the reward recipe's linear probe) says so."""
        return False

    def validate(self) -> None:
        if self.batch_size < 1 or self.micro_batch_size < 1:
            raise ValueError("batch_size and micro_batch_size must be >= 1")
        # a misspelt choice must not silently fall back to a default (e.g. "cosine" -> linear)
        if self.lr_schedule not in ("linear", "constant"):
            raise ValueError(f"field 'lr_schedule': {self.lr_schedule!r} is not one of ['linear', 'constant']")
        if self.parallel not in ("ddp", "fsdp", "none"):
            raise ValueError(f"field 'parallel': {self.parallel!r} is not one of ['ddp', 'fsdp', 'none']")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"field 'warmup_ratio': {self.warmup_ratio} is not in [0, 1)")
        if (
            self.epochs < 0
            or self.max_steps < 0
            or (self.epochs == 0 and self.max_steps == 0 and not self.trains_without_steps())
        ):
            raise ValueError("fields 'epochs' / 'max_steps': need epochs > 0 or max_steps > 0 (neither negative)")
        if self.save_every < 0 or self.eval_every < 0 or self.log_every < 1:
            raise ValueError("fields 'save_every' / 'eval_every' must be >= 0 and 'log_every' >= 1")
        from rlhfkit.core.precision import PRECISIONS

        if self.precision not in PRECISIONS:
            raise ValueError(f"field 'precision': {self.precision!r} is not one of {list(PRECISIONS)}")


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled order of epoch `epoch`: the same on every rank and after every resume."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def rank_slice(indices: list[int], info: DistInfo) -> list[int]:
    """This rank's contiguous share of a global batch (global batch must divide by world size)."""
    if len(indices) % info.world_size:
        raise ValueError(f"global batch {len(indices)} does not divide by {info.world_size} processes")
    share = len(indices) // info.world_size
    return indices[info.rank * share : (info.rank + 1) * share]


def to_device(batch: dict, device: torch.device) -> dict:
    """Move every tensor of a collated batch to `device` (a no-op on CPU)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def plan_steps(n_examples: int, config: TrainingConfig) -> tuple[int, int]:
    """(steps per epoch, total steps); the last incomplete global batch of an epoch is dropped.
    ``max_steps`` > 0 is the total whatever ``epochs`` says (HF ``TrainingArguments.max_steps``
    semantics: a user asking for 100 steps gets 100, over as many epochs as that takes)."""
    per_epoch = n_examples // config.batch_size
    if per_epoch == 0:
        # ConfigError (a ValueError) so the command line reports it without a traceback
        raise ConfigError(
            f"only {n_examples} training examples for a batch of {config.batch_size}; lower batch_size or add data"
        )
    total = config.max_steps if config.max_steps else math.ceil(per_epoch * config.epochs)
    return per_epoch, total


def example_length(example: Any) -> int:
    """Padded length an example needs: the longest token list in it (a pair's chosen/rejected,
    DPO's `seqs`, SFT's `input_ids`); used to group similar lengths into one micro-batch."""
    if isinstance(example, dict):
        return max((example_length(v) for v in example.values() if isinstance(v, (list, tuple))), default=0)
    if isinstance(example, (list, tuple)):
        if example and isinstance(example[0], (list, tuple)):
            return max(len(x) for x in example)
        return len(example)
    return 0


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Hugging Face activation checkpointing of every decoder / encoder layer (LoRA-wrapped models
    too). Non-reentrant: the recomputation needs no input that requires grad, so frozen
    embeddings under LoRA work, and it gives the same gradients (dropout is off in rlhfkit)."""
    target = model
    while not hasattr(target, "gradient_checkpointing_enable") and hasattr(target, "module"):
        target = target.module
    if not getattr(target, "supports_gradient_checkpointing", True) or not hasattr(
        target, "gradient_checkpointing_enable"
    ):
        raise ConfigError(f"gradient_checkpointing: {type(target).__name__} does not support it")
    # transformers 5 renamed it; the old name still works there but warns
    if hasattr(target, "activation_checkpointing_enable"):
        target.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        target.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def fit(
    model: torch.nn.Module,
    examples: list[Any],
    collate: Callable[[list[Any]], dict],
    loss_fn: Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict]],
    count_fn: Callable[[dict], int],
    config: TrainingConfig,
    info: DistInfo,
    eval_fn: Callable[[torch.nn.Module], dict] | None = None,
    desc: str = "train",
    unit: str = "tokens",
    length_fn: Callable[[Any], int] | None = example_length,
    final_eval_fn: Callable[[torch.nn.Module], dict] | None = None,
) -> dict:
    """Train `model` in place; returns the last logged metrics (with final eval ones).

    With `config.best_metric`, the model ends holding the weights of the best evaluation
    (metrics gain `best_step` and `best_<metric>`), and the final eval scores are those weights'.
    `final_eval_fn` runs once on the final weights (a test set that took no part in choices).
    `length_fn=None` keeps the data order within a step: for losses with statistics over a
    micro-batch (KTO's KL reference point), where grouping by length would change the update."""
    if config.micro_batch_size * info.world_size > config.batch_size:
        raise ConfigError(
            f"micro_batch_size {config.micro_batch_size} x {info.world_size} processes "
            f"exceeds batch_size {config.batch_size}"
        )
    if config.batch_size % info.world_size:
        raise ConfigError(f"batch_size {config.batch_size} does not divide by {info.world_size} processes")
    per_epoch, total_steps = plan_steps(len(examples), config)
    start_step = 0
    ckpt = resume_checkpoint(config.output_dir, info) if config.resume else None  # the newest intact one
    digest = examples_digest(examples) if (ckpt is not None or config.save_every) else None
    if ckpt is not None:  # weights go in before wrapping (FSDP shards them in place)
        check_resume_config(ckpt, config)
        check_resume_data(ckpt, digest)
        load_checkpoint(ckpt, model, restore_rng=False)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if config.precision != "fp32":
        keep_head_fp32(model)
    train_model = wrap_model(model, info, config.parallel)
    optimizer = build_optimizer(train_model, config)
    scheduler = build_scheduler(optimizer, total_steps, config)
    if ckpt is not None:
        start_step = load_checkpoint(
            ckpt, None, optimizer, scheduler, load_optimizer=partial(load_full_optimizer_state, train_model)
        )["step"]
    logger = MetricsLogger(
        config.output_dir,
        enabled=info.is_main,
        tensorboard=config.tensorboard,
        resume_step=start_step if ckpt is not None else None,
    )
    if config.best_metric and eval_fn is None:
        raise ConfigError("field 'best_metric' needs evaluation data (an eval or validation set)")
    best = BestWeights(config.output_dir, config.best_metric, info, ckpt is not None) if config.best_metric else None
    train_model.train()
    device = model_device(train_model)

    def evaluated(fn) -> dict:  # an evaluation of the model being trained, at the run's precision
        with autocast(config.precision, device):
            return fn(unwrap(train_model))

    bar = progress_bar(total_steps, initial=start_step, desc=desc, enabled=info.is_main)
    last: dict = {}
    t_window, units_window, samples_window = time.perf_counter(), 0.0, 0
    for step in range(start_step, total_steps):
        epoch, position = divmod(step, per_epoch)
        order = epoch_order(len(examples), config.seed, epoch)
        global_batch = order[position * config.batch_size : (position + 1) * config.batch_size]
        local = rank_slice(global_batch, info)
        if config.group_by_length and length_fn is not None:
            # the loss is a sum normalised by the global unit count, so the order of examples
            # within the step does not change the update; sorting only removes padding
            local = sorted(local, key=lambda i: -length_fn(examples[i]))
        micro = [
            to_device(collate([examples[i] for i in idx]), device) for idx in chunks(local, config.micro_batch_size)
        ]
        n_units = all_reduce_sum(sum(count_fn(b) for b in micro), info).item()
        # the normaliser; a weighted unit count (records with weights) may be fractional, so it is
        # used as it is unless nothing at all is counted
        normaliser = n_units if n_units > 0 else 1
        loss_total = 0.0
        extra: dict[str, float] = {}
        for k, batch in enumerate(micro):
            with grad_sync_context(train_model, sync=k == len(micro) - 1):
                with autocast(config.precision, device):  # the forward pass only (AMP)
                    loss_sum, stats = loss_fn(train_model, batch)
                # DDP averages gradients over ranks; scale by world size so the result is
                # the gradient of (sum over the global batch) / (global unit count).
                (loss_sum * (info.world_size / normaliser)).backward()
            loss_total += loss_sum.item()
            for key, value in stats.items():
                extra[key] = extra.get(key, 0.0) + float(value)
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(train_model.parameters(), config.max_grad_norm)
            if config.max_grad_norm > 0
            else torch.tensor(0.0)
        )
        lr_of_step = scheduler.get_last_lr()[0]  # the rate this step used (after scheduler.step() it is the next one's)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step_done = step + 1
        units_window += n_units
        samples_window += len(global_batch)
        bar.update(1)
        if step_done % config.log_every == 0 or step_done == total_steps:
            loss_global = all_reduce_sum(loss_total, info).item() / normaliser
            sums = {k: all_reduce_sum(v, info).item() for k, v in extra.items()}
            elapsed = time.perf_counter() - t_window
            last = {
                "loss": loss_global,
                "grad_norm": float(grad_norm),
                "lr": lr_of_step,
                "epoch": step_done / per_epoch,
                f"{unit}_per_s": units_window / elapsed,
                "samples_per_s": samples_window / elapsed,
                **{k: v / normaliser for k, v in sums.items()},
            }
            t_window, units_window, samples_window = time.perf_counter(), 0.0, 0
            logger.log(step_done, last)
            bar.set_postfix(loss=f"{loss_global:.4f}")
        if eval_fn is not None and config.eval_every and step_done % config.eval_every == 0 and step_done < total_steps:
            scores = evaluated(eval_fn)
            logger.log(step_done, scores)
            if best is not None:
                best.update(step_done, scores, train_model)
            train_model.train()
        if config.save_every and step_done % config.save_every == 0 and step_done < total_steps:
            model_state = full_model_state(train_model)  # collective under FSDP: every rank
            optimizer_state = full_optimizer_state(train_model, optimizer)
            if info.is_main:
                save_checkpoint(
                    config.output_dir,
                    step_done,
                    train_model,
                    optimizer,
                    scheduler,
                    {"epoch": epoch, "config": resume_fingerprint(config), "data": digest},
                    keep_last=config.keep_checkpoints,
                    model_state=model_state,
                    optimizer_state=optimizer_state,
                )
            barrier(info)
        step_ended(step_done)
    bar.close()
    if eval_fn is not None:
        scores = evaluated(eval_fn)
        logger.log(total_steps, scores)
        if best is not None:
            best.update(total_steps, scores, train_model)
            if best.step is None:  # every evaluation NaN (an all-tie set): nothing was kept
                if info.is_main:
                    print(
                        f"rlhfkit: warning: best_metric: no evaluation had a finite {best.metric}; the model "
                        f"keeps the final weights (step {total_steps})",
                        file=sys.stderr,
                        flush=True,
                    )
            elif best.step != total_steps and best.restore(train_model, total_steps, scores):
                scores = evaluated(eval_fn)  # the restored weights' (a damaged copy: the final ones stay)
            scores = {**scores, "best_step": best.step, f"best_{best.metric}": best.value}
            logger.log(total_steps, scores)
        last.update(scores)
    if final_eval_fn is not None:
        scores = evaluated(final_eval_fn)
        logger.log(total_steps, scores)
        last.update(scores)
    logger.close()
    return last
