"""Pieces the online-RL recipes (ppo, grpo, rloo, reinforce) share.

Each recipe is a flat loop: sample prompts -> roll out -> score -> advantages -> update ->
log -> checkpoint. What is the same in all of them lives here: the config fields, the prompt
order (a function of (seed, step) only, so resuming needs no data-loader state), loading the
policy / reference (a LoRA adapter switched off, or a frozen copy), teacher-forced log-probs in
micro-batches, the loss weights that make an update independent of the micro-batch split, the
clipped policy-gradient update used by GRPO / RLOO / REINFORCE, checkpoints, metrics and the
table of sample generations.

Batch vocabulary: ``batch_size`` = sequences (prompt, response) per step = prompts per step x
``num_generations``; each step makes ``ppo_epochs x num_minibatches`` optimiser steps, each over
``batch_size / num_minibatches`` sequences fed ``micro_batch_size`` at a time (gradient
accumulation). Losses are sums over a minibatch divided by minibatch-global counts, so batch
8 x accumulation 1 and batch 4 x accumulation 2 make the same update (TRL invariance tests).
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from rlhfkit.core.kl import AdaptiveKLController, FixedKLController, kl_k1, kl_k3
from rlhfkit.core.losses import ppo_policy_loss
from rlhfkit.core.masking import masked_mean
from rlhfkit.recipes.common import LoraConfig
from rlhfkit.rewards.adversarial import AdversarialConfig
from rlhfkit.rollout import ENGINES, Rollout, SamplingConfig, make_sampler, response_logprobs, rollout, step_seed
from rlhfkit.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from rlhfkit.training.distributed import DistInfo, all_gather_rows, all_reduce_gradients, all_reduce_sum, barrier
from rlhfkit.training.loop import (TrainingConfig, _kill_for_tests, adamw, build_scheduler,
                                  enable_gradient_checkpointing, epoch_order)


@dataclass
class OnlineConfig(TrainingConfig):
    """Fields every online-RL recipe shares (each recipe's config extends this)."""

    model: str = field(default="smollm2-135m", metadata={"help": "policy (and reference): smollm2-135m, a folder, a .gguf file or a HF name"})
    ref_model: str = field(default="", metadata={"help": "KL reference, same forms as model (empty = the starting policy); "
                                                         "e.g. the SFT model while model is a later policy. Needs model's tokenizer"})
    prompts: str = field(default="movie-reviews", metadata={"help": "movie-reviews (first words of the shared reviews), chat-first-turns (first human turns of OASST and HH-RLHF; with chat_template true) or a JSONL/JSON file of {\"prompt\": ...}"})
    prompt_words: int = field(default=8, metadata={"help": "movie-reviews: words per prompt"})
    max_prompts: int = field(default=0, metadata={"help": "use at most this many prompts (0 = all)"})
    chat_template: bool = field(default=False, metadata={"help": "wrap each prompt as a user turn with the tokenizer's chat template"})
    max_prompt_length: int = field(default=64, metadata={"help": "prompt tokens kept (the last ones)"})
    reward: str = field(default="vader", metadata={"help": "reward: a judge (vader, textblob, afinn, toxicity, readability, frequency:TEXT), rm:PATH, ensemble:mean|min|uwo=LAMBDA:PATH1,PATH2 (reward models combined), fn:pkg.mod:func, or a weighted sum like 0.7*vader+0.3*rm:PATH; empty with adversarial.discriminator: its logit alone"})
    gold_reward: str = field(default="", metadata={"help": "a second reward only logged (gold judge), same syntax; empty = none"})
    reward_batch_size: int = field(default=32, metadata={"help": "sequences per reward-model forward"})
    max_new_tokens: int = field(default=32, metadata={"help": "response tokens generated at most"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (also divides the logits of every log-prob pass)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling (1 = off)"})
    top_k: int = field(default=0, metadata={"help": "top-k sampling (0 = off)"})
    generation_engine: str = field(default="auto", metadata={"help": "sampler: auto (native for plain Llama-family "
                                                                     "models, else hf), native, or hf (model.generate)"})
    num_generations: int = field(default=1, metadata={"help": "samples per prompt (k)"})
    batch_size: int = field(default=16, metadata={"help": "sequences per step (prompts per step x num_generations)"})
    micro_batch_size: int = field(default=4, metadata={"help": "sequences per forward/backward pass (gradient accumulation fills a minibatch)"})
    num_minibatches: int = field(default=1, metadata={"help": "optimiser steps per epoch over the step's batch"})
    ppo_epochs: int = field(default=1, metadata={"help": "passes over each step's batch (shuffled minibatches)"})
    clip_eps: float = field(default=0.2, metadata={"help": "ratio clipping epsilon"})
    kl_coef: float = field(default=0.05, metadata={"help": "KL coefficient beta (initial value when adaptive)"})
    max_steps: int = field(default=100, metadata={"help": "rollout steps"})
    max_minutes: float = field(default=0.0, metadata={"help": "also stop after the step that ends this many minutes "
                                                             "after the loop started (0 = off); a wall-clock budget, "
                                                             "so the number of steps depends on the machine"})
    learning_rate: float = field(default=1e-6, metadata={"help": "peak learning rate"})
    adam_eps: float = field(default=1e-5, metadata={"help": "AdamW epsilon (PPO detail 11)"})
    sample_every: int = field(default=10, metadata={"help": "write a table of sample generations every N steps (0 = off)"})
    num_sample_rows: int = field(default=4, metadata={"help": "rows in each sample table"})
    lora: LoraConfig = field(default_factory=LoraConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)

    def validate(self) -> None:
        super().validate()
        if self.num_generations < 1 or self.batch_size % self.num_generations:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of num_generations {self.num_generations}")
        if self.num_minibatches < 1 or self.batch_size % self.num_minibatches:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of num_minibatches {self.num_minibatches}")
        if (self.batch_size // self.num_minibatches) % self.micro_batch_size:
            raise ValueError("the minibatch (batch_size / num_minibatches) must be a multiple of micro_batch_size")
        if self.max_steps < 1:
            raise ValueError("max_steps must be >= 1")
        if self.max_minutes < 0:
            raise ValueError("max_minutes must be >= 0")
        if self.generation_engine not in ENGINES:
            raise ValueError(f"generation_engine must be one of {list(ENGINES)}, got {self.generation_engine!r}")
        from rlhfkit.rewards import check_reward_field

        if self.reward or not self.adversarial.enabled:  # the discriminator's logit may be the whole reward
            check_reward_field("reward", self.reward)
        self.adversarial.validate()
        if self.gold_reward:
            check_reward_field("gold_reward", self.gold_reward)


# ---------------------------------------------------------------------------- prompts
def load_prompts(config: OnlineConfig) -> list[str]:
    """The prompt texts: a named pool (first ``prompt_words`` words of the movie reviews, or the
    first human turns of chat conversations), or a prompt file."""
    from rlhfkit.data.shared_sets import PROMPT_POOLS, load_named_prompts

    if config.prompts in PROMPT_POOLS:
        records = load_named_prompts(config.prompts, prompt_words=config.prompt_words,
                                     limit=config.max_prompts or None, seed=config.seed)
    else:
        from rlhfkit.recipes.common import load_training_records

        records = load_training_records(config.prompts, "prompts")
    prompts = [r.prompt for r in records]
    if config.max_prompts:
        prompts = prompts[: config.max_prompts]
    if not prompts:
        raise ValueError(f"no prompts in {config.prompts!r}")
    return prompts


def prompts_for_step(prompts: list[str], step: int, n: int, seed: int) -> list[str]:
    """The ``n`` prompts of ``step``: consecutive slices of a per-epoch permutation seeded by
    (seed, epoch), so the data position is a function of the step alone (exact resume)."""
    if n > len(prompts):
        raise ValueError(f"{n} prompts per step but only {len(prompts)} prompts")
    per_epoch = len(prompts) // n
    epoch, pos = divmod(step, per_epoch)
    order = epoch_order(len(prompts), seed, epoch)
    return [prompts[i] for i in order[pos * n:(pos + 1) * n]]


def repeat_each(items: list, k: int) -> list:
    """``[a, b] -> [a, a, b, b]`` for k = 2: the k samples of a prompt are adjacent rows."""
    return [x for x in items for _ in range(k)]


# ---------------------------------------------------------------------------- models
def load_models(config: OnlineConfig, need_reference: bool):
    """``(policy, tokenizer, reference)``. With ``ref_model`` the reference is that model, loaded
    and frozen (a policy that started from an SFT model keeps its KL to it over several runs).
    Else with ``lora.r > 0`` the policy gets an adapter and ``reference`` is None: the reference
    is the same weights with the adapter disabled (``models.reference_context``; one copy of the
    weights). Otherwise the reference is a frozen deep copy of the initial policy (None when not
    needed). Dropout is off in all of them (detail 8)."""
    from rlhfkit.models import apply_lora, load_policy

    from rlhfkit.training.precision import autocast_forward

    policy, tokenizer = load_policy(config.model)  # left padding, pad != eos (detail 1)
    # bf16: every forward of the policy (sampling, behaviour and update log-probs) and of the
    # reference runs in autocast, so the behaviour log-probs and the update's come from the same
    # computation (the teacher-forced pass of rollout.finish_rollout) and the ratio starts at 1;
    # reward models are not touched
    autocast_forward(policy, config.precision)
    reference = None
    if need_reference and config.ref_model:
        reference, ref_tokenizer = load_policy(config.ref_model)
        autocast_forward(reference, config.precision)
        if ref_tokenizer.get_vocab() != tokenizer.get_vocab():  # the KL compares token by token
            raise ValueError(f"field 'ref_model': {config.ref_model!r} has another tokenizer than model "
                             f"{config.model!r}; the KL to the reference needs the same vocabulary")
        reference.eval()
        for p in reference.parameters():
            p.requires_grad_(False)
    if config.lora.r:
        policy = apply_lora(policy, r=config.lora.r, alpha=config.lora.alpha, dropout=config.lora.dropout,
                            target_modules=config.lora.target_modules)
    elif need_reference and reference is None:
        reference = copy.deepcopy(policy).eval()
        for p in reference.parameters():
            p.requires_grad_(False)
    if config.gradient_checkpointing:
        # only the training forward recomputes (HF checkpoints in train mode); generation and the
        # no-grad log-prob passes run in eval mode and are unchanged
        enable_gradient_checkpointing(policy)
    return policy, tokenizer, reference


def make_generator(config: OnlineConfig, tokenizer, policy):
    """The sampler of ``config.generation_engine`` for ``policy`` (rollout.make_sampler)."""
    sampling = SamplingConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                              top_p=config.top_p, top_k=config.top_k)
    return make_sampler(policy, sampling, tokenizer.eos_token_id, tokenizer.pad_token_id, config.generation_engine)


def single_update(config: OnlineConfig) -> bool:
    """One optimiser step per rollout: the log-probs of the update's own forward pass, taken
    before the step, are the behaviour log-probs, so no separate pass is needed for them."""
    return config.ppo_epochs == 1 and config.num_minibatches == 1


def generate(config: OnlineConfig, generator, policy, tokenizer, prompts: list[str], step: int,
             behaviour_logprobs: bool = True, rank: int = 0) -> Rollout:
    """One rollout of ``prompts`` sampled from the seed of (config.seed, step, rank) (rank 0's
    is a single process's); without ``behaviour_logprobs`` its ``logprobs`` stay zero until
    ``policy_gradient_update`` fills them."""
    return rollout(generator, policy, tokenizer, prompts, seed=step_seed(config.seed, step, salt=RANK_SALT * rank),
                   max_prompt_length=config.max_prompt_length, chat_template=config.chat_template,
                   logprob_batch_size=config.micro_batch_size, behaviour_logprobs=behaviour_logprobs)


RANK_SALT = 100_003  # separates the ranks' sampling seeds from the other salts of a step


def local_share(items: list, info: DistInfo) -> list:
    """This rank's consecutive share of a step's items (prompts: whole groups stay together)."""
    if not info.enabled:
        return items
    n = len(items) // info.world_size
    return items[info.rank * n:(info.rank + 1) * n]


def micro_slices(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


@torch.no_grad()
def reference_logprobs(policy, reference, ro: Rollout, temperature: float, micro: int) -> torch.Tensor:
    """Log-probs of the rollout's responses under the reference ``[B, R]``: the separate frozen
    model, or the policy with its LoRA adapter disabled when ``reference`` is None."""
    from rlhfkit.models import reference_context

    out = []
    for s in micro_slices(len(ro), micro):
        args = (ro.prompt_ids[s], ro.prompt_mask[s], ro.response_ids[s], ro.response_mask[s], temperature)
        if reference is not None:
            out.append(response_logprobs(reference, *args))
        else:
            with reference_context(policy) as ref:
                out.append(response_logprobs(ref, *args))
    return torch.cat(out)


def score(source, ro: Rollout) -> torch.Tensor:
    return source(ro.prompts, ro.responses).float().to(ro.logprobs.device)


def make_kl_controller(kind: str, kl_coef: float, target: float, horizon: float):
    """``fixed`` or ``adaptive`` (Ziegler et al. 2019) KL coefficient (core.kl)."""
    if kind == "adaptive":
        return AdaptiveKLController(kl_coef, target, horizon)
    if kind == "fixed":
        return FixedKLController(kl_coef)
    raise ValueError(f"kl_control must be 'fixed' or 'adaptive', got {kind!r}")


def sequence_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence KL estimate ``sum_t (logp - ref_logp)`` (k1) over the response ``[B]``."""
    return torch.where(mask.bool(), kl_k1(logprobs, ref_logprobs), torch.zeros_like(logprobs)).sum(1)


# ---------------------------------------------------------------------------- loss aggregation
def token_weights(mask: torch.Tensor, aggregation: str, max_new_tokens: int, n_sequences: int | None = None,
                  n_tokens: float | None = None) -> torch.Tensor:
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


def build_run_reward(config: OnlineConfig, info: DistInfo):
    """``(reward source, adversary or None)``: the ``reward`` spec, plus the refitted
    discriminator's logit when ``adversarial.discriminator`` is set (``rewards.adversarial``)."""
    from rlhfkit.rewards import build_reward

    base = build_reward(config.reward, batch_size=config.reward_batch_size) if config.reward else None
    if not config.adversarial.enabled:
        return base, None
    from rlhfkit.rewards.adversarial import Adversary, RewardWithAdversary

    from rlhfkit.training.config import ConfigError

    if info.world_size > 1:
        raise ConfigError("field 'adversarial.discriminator': the adversarial refit runs in one process "
                          "(its update is not reduced over ranks); launch without torchrun")
    adversary = Adversary.load(config.adversarial, config.seed, config.max_grad_norm, config.reward_batch_size)
    adversary.model.to(info.device)  # beside the policy (one fused AdamW holds both)
    return RewardWithAdversary(base, adversary), adversary


def adversarial_modules(adversary) -> dict:
    """What a checkpoint holds of the adversarial refit: the discriminator (none when off)."""
    return {} if adversary is None else {"discriminator": adversary.model}


def adversarial_step(adversary, reward, ro: Rollout, step: int, optimizer) -> dict:
    """After the policy's update at ``step``: the discriminator's mean logit on the rollout (the
    reward term it gave) and, when due, its refit on the rollout's responses (metrics)."""
    if adversary is None:
        return {}
    logit = getattr(reward, "last_components", {}).get("adversarial")
    out = {} if logit is None else {"adversarial/reward": float(logit.mean())}
    return {**out, **adversary.update(ro.prompts, ro.responses, step, optimizer)}


def optimizer_and_scheduler(params, config: OnlineConfig, adversary=None):
    """AdamW over ``params`` (and the adversarial discriminator's parameters as a second group with
    its own, constant learning rate), and the run's schedule."""
    optimizer = adamw(params, config)
    if adversary is not None:
        optimizer.add_param_group(adversary.param_group())
    total = config.max_steps * config.ppo_epochs * config.num_minibatches
    # linear decay (detail 11); the discriminator's rate stays constant
    return optimizer, build_scheduler(optimizer, total, config, constant_groups=int(adversary is not None))


def minibatches(n: int, config: OnlineConfig, step: int, epoch: int) -> list[torch.Tensor]:
    """Shuffled minibatch row indices for one epoch over a step's batch, seeded by (seed, step,
    epoch) so resume reproduces them (detail 10: epochs over shuffled minibatches)."""
    g = torch.Generator().manual_seed(step_seed(config.seed, step, salt=1000 + epoch))
    order = torch.randperm(n, generator=g) if (config.ppo_epochs > 1 or config.num_minibatches > 1) else torch.arange(n)
    return list(order.chunk(config.num_minibatches))


def policy_gradient_update(policy, ro: Rollout, advantages, config: OnlineConfig,
                           optimizer, scheduler, step: int, aggregation: str,
                           ref_logprobs: torch.Tensor | None = None, kl_loss_coef: float = 0.0,
                           extra_loss: Callable[[torch.Tensor, int], tuple[torch.Tensor, dict]] | None = None,
                           params: list | None = None, fill_behaviour_logprobs: bool = False,
                           info: DistInfo | None = None) -> dict:
    """Clipped policy-gradient update on one rollout (GRPO / RLOO / REINFORCE).

    ``advantages``: ``[B]`` (one per sequence, broadcast to its tokens) or ``[B, R]``; or, with
    ``fill_behaviour_logprobs``, a function ``(rows, logprobs) -> [len(rows)]`` called with each
    micro-batch's rows and their detached log-probs, for advantages that need the behaviour
    log-probs themselves (RLOO's KL-penalised reward; see ``fused_advantages_ok``). The
    per-token loss is the clipped surrogate (core ``ppo_policy_loss``; with one epoch and one
    minibatch the ratio is 1 and it is plain REINFORCE) plus ``kl_loss_coef * k3(logp, ref)``
    when ``kl_loss_coef > 0`` (GRPO's KL term in the loss). Tokens are weighted by
    ``token_weights(aggregation)`` over each minibatch. ``extra_loss(rows, minibatch_size)``
    adds a term per micro-batch (a learned baseline). ``fill_behaviour_logprobs`` (only with a
    single update, see ``single_update``): the rollout came without behaviour log-probs, and each
    micro-batch's detached log-probs become them (ratio 1), written into ``ro.logprobs``.

    Several processes (``info``): each holds its share of the step's rows and takes the same
    local minibatch positions (the same shuffle seed on every rank); token weights use the
    global minibatch's counts and the gradients are summed over ranks before clipping, so the
    update is the global minibatch's, and every rank makes the same one. Returns mean
    statistics (over all ranks)."""
    if fill_behaviour_logprobs and not single_update(config):
        raise ValueError("behaviour log-probs can come from the update pass only with one epoch and one minibatch")
    n = len(ro)
    from_logprobs = callable(advantages)
    if from_logprobs and not fill_behaviour_logprobs:
        raise ValueError("advantages computed from the update pass need fill_behaviour_logprobs")
    adv_tok = None if from_logprobs else (
        advantages.unsqueeze(1).expand_as(ro.logprobs) if advantages.dim() == 1 else advantages)
    params = params if params is not None else [p for g in optimizer.param_groups for p in g["params"]]
    sums: dict[str, float] = {}
    n_updates = 0
    policy.train()
    for epoch in range(config.ppo_epochs):
        for rows in minibatches(n, config, step, epoch):
            mask = ro.response_mask[rows]
            counts = all_reduce_sum(torch.tensor([float(len(rows)), float(mask.sum())]), info)
            n_seq, n_tok = int(counts[0]), float(counts[1])
            weights = token_weights(mask, aggregation, config.max_new_tokens, n_sequences=n_seq, n_tokens=n_tok)
            for s in micro_slices(len(rows), config.micro_batch_size):
                r = rows[s]
                m, w = ro.response_mask[r], weights[s]
                logp, ent = response_logprobs(policy, ro.prompt_ids[r], ro.prompt_mask[r], ro.response_ids[r], m,
                                              config.temperature, with_entropy=True)
                if fill_behaviour_logprobs:
                    ro.logprobs[r] = logp.detach()
                adv_r = adv_tok[r] if adv_tok is not None else advantages(r, logp.detach()).unsqueeze(1).expand_as(logp)
                # core ppo_policy_loss with normaliser 1 sums max(-A r, -A clip(r)) over the
                # mask; scaling A by the positive token weight scales each term by it.
                loss, st = ppo_policy_loss(logp, ro.logprobs[r], adv_r * w, m, config.clip_eps, normaliser=1.0)
                if kl_loss_coef > 0 and ref_logprobs is not None:
                    kl = kl_k3(logp, ref_logprobs[r])
                    loss = loss + kl_loss_coef * torch.where(m, kl * w, torch.zeros_like(kl)).sum()
                    _acc(sums, "kl_loss_term", float(torch.where(m, kl * w, torch.zeros_like(kl)).sum().detach()))
                if extra_loss is not None:
                    extra, est = extra_loss(r, n_seq)
                    loss = loss + extra
                    for k, v in est.items():
                        _acc(sums, k, float(v))
                loss.backward()
                share = float(m.sum()) / max(n_tok, 1.0)  # token share of the (global) minibatch
                _acc(sums, "loss", float(loss.detach()))
                for k in ("clipfrac", "approx_kl", "ratio_mean"):
                    _acc(sums, k, float(st[k]) * share)
                _acc(sums, "entropy", float(masked_mean(ent, m)) * share if m.any() else 0.0)
            if info is not None and info.enabled:
                all_reduce_gradients(params, info)
            gn = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm) if config.max_grad_norm > 0 else torch.tensor(0.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            _acc(sums, "grad_norm", float(gn))
            n_updates += 1
    policy.eval()
    if info is not None and info.enabled:  # each rank's sums are its share; grad_norm is the same on all
        keys = sorted(k for k in sums if k != "grad_norm")
        total = all_reduce_sum(torch.tensor([sums[k] for k in keys], dtype=torch.float64), info)
        sums.update({k: float(v) for k, v in zip(keys, total)})
    return {k: v / n_updates for k, v in sums.items()}


def fused_advantages_ok(config: OnlineConfig, group_size: int) -> bool:
    """Whether per-group advantages that need the behaviour log-probs (RLOO's KL in the reward)
    can be computed inside the update pass, saving the separate behaviour forward: one update
    per rollout (``single_update``: the update pass's log-probs ARE the behaviour ones) and
    micro-batches of whole groups (rows are not shuffled then, and the batch is a multiple of
    the group)."""
    return single_update(config) and config.micro_batch_size % group_size == 0


def _acc(d: dict, key: str, value: float) -> None:
    d[key] = d.get(key, 0.0) + value


# ---------------------------------------------------------------------------- run bookkeeping
def rollout_metrics(ro: Rollout, scores: torch.Tensor, seconds: float, info: DistInfo | None = None) -> dict:
    """Rollout statistics over the whole step (every rank's rows when ``info`` has several)."""
    lengths, eos = ro.lengths.float(), ro.has_eos.float()
    if info is not None and info.enabled:
        lengths, eos, scores = (all_gather_rows(t, info) for t in (lengths, eos, scores.float()))
        seconds = float(all_reduce_sum(seconds, info)) / info.world_size  # the ranks ran side by side
    return {
        "reward": float(scores.mean()),
        "reward_std": float(scores.std()) if len(scores) > 1 else 0.0,
        "response_length": float(lengths.mean()),
        "eos_rate": float(eos.mean()),
        "tokens_per_s": float(lengths.sum()) / max(seconds, 1e-9),
        "samples_per_s": len(lengths) / max(seconds, 1e-9),
    }


def resume_state(config: OnlineConfig, modules: torch.nn.Module, optimizer, scheduler,
                 info: DistInfo | None = None) -> tuple[int, dict]:
    """``(start_step, trainer_state)`` from the latest checkpoint in ``output_dir`` (if resuming);
    over several processes each rank takes back its own RNG stream (LoRA dropout draws from it)."""
    from rlhfkit.training.checkpoint import load_rank_rng

    if info is not None and info.rank:
        # the models are built (the same on every rank): from here on each rank draws its own stream
        # from the global RNG (LoRA dropout); rank 0 keeps a single process's
        torch.manual_seed(step_seed(config.seed, 0, salt=RANK_SALT * info.rank + 1))
    from rlhfkit.training.loop import check_resume_config

    ckpt = latest_checkpoint(config.output_dir) if config.resume else None
    if ckpt is None:
        return 0, {}
    check_resume_config(ckpt, config)  # another run's weights and schedule must not be continued
    state = load_checkpoint(ckpt, modules, optimizer, scheduler)
    if info is not None and info.enabled:
        load_rank_rng(ckpt, info.rank)
    return int(state["step"]), state


def maybe_checkpoint(config: OnlineConfig, step_done: int, modules, optimizer, scheduler, trainer_state: dict,
                     info: DistInfo | None = None) -> None:
    """Save every ``save_every`` steps (not at the end: the final model is saved instead), then
    the SIGKILL test hook (training/loop.py). Several processes: every rank holds the same
    weights and optimiser state, rank 0 writes them and the others wait for it."""
    if config.save_every and step_done % config.save_every == 0 and step_done < config.max_steps:
        rank_rng = None
        if info is not None and info.enabled:  # every rank's own stream, so resume continues each one
            import torch.distributed as dist

            from rlhfkit.training.checkpoint import rng_state

            rank_rng = [None] * info.world_size
            dist.all_gather_object(rank_rng, rng_state())
        if info is None or info.is_main:
            from rlhfkit.training.loop import resume_fingerprint

            save_checkpoint(config.output_dir, step_done, modules, optimizer, scheduler,
                            {**trainer_state, "config": resume_fingerprint(config)},
                            keep_last=config.keep_checkpoints, rank_rng_states=rank_rng)
        if info is not None:
            barrier(info)
    _kill_for_tests(step_done)


def run_outputs(config: OnlineConfig, info: DistInfo, start: int, resumed: bool, desc: str):
    """``(metrics logger, sample table, progress bar)`` of a run, written by rank 0 only; on resume
    they continue from ``start`` (rows logged after it by the interrupted run are dropped)."""
    from rlhfkit.training.logging import MetricsLogger, progress_bar

    at = start if resumed else None
    return (MetricsLogger(config.output_dir, enabled=info.is_main, tensorboard=config.tensorboard, resume_step=at),
            SampleTable(config.output_dir, config.sample_every, config.num_sample_rows, at, enabled=info.is_main),
            progress_bar(config.max_steps, initial=start, desc=desc, enabled=info.is_main))


def closing_line(name: str, config: OnlineConfig, metrics: dict) -> str:
    """The line a person reads when an online run ends: where the model is and how its last step
    went (the curves are in metrics.jsonl)."""
    parts = [f"{name}: saved {Path(config.output_dir) / 'model'}"]
    shown = [f"{k} {metrics[k]:.4f}" for k in ("reward", "gold", "kl") if isinstance(metrics.get(k), (int, float))]
    if shown:
        parts.append("last step " + ", ".join(shown))
    parts.append(f"curves in {Path(config.output_dir) / 'metrics.jsonl'}")
    return "; ".join(parts)


def finish_run(info: DistInfo, modules, optimizer, extra: dict | None = None, line: str | None = None) -> None:
    """End of a run (``line``, if given, is printed by the main process): the test hook ``RLHFKIT_TEST_RANK_DIGEST=DIR`` makes every rank write a digest
    of its weights, optimiser state and ``extra`` (KL coefficient, normaliser, baseline ...) to
    ``DIR/rank-R.txt``, so a test can check that the ranks ended in the same state; then the
    process group is left."""
    from rlhfkit.training.distributed import cleanup

    folder = os.environ.get("RLHFKIT_TEST_RANK_DIGEST")
    if folder:
        import hashlib

        h = hashlib.sha256()
        for name, t in sorted(modules.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        for group in optimizer.state_dict()["state"].values():
            for k, v in sorted(group.items()):
                h.update(k.encode())
                h.update(v.detach().cpu().contiguous().numpy().tobytes() if torch.is_tensor(v) else repr(v).encode())
        h.update(json.dumps(extra or {}, sort_keys=True, default=repr).encode())
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"rank-{info.rank}.txt").write_text(h.hexdigest(), encoding="utf-8")
    if line and info.is_main:
        print(line, flush=True)
    cleanup(info)


def gathered(t: torch.Tensor, info: DistInfo | None) -> torch.Tensor:
    """Every rank's rows of a per-sequence tensor (for metrics over the whole step)."""
    return all_gather_rows(t, info) if info is not None and info.enabled else t


class SampleTable:
    """Sample generations every N steps, appended to ``samples.jsonl`` and ``samples.md``.
    On resume from step S, rows written after S by the interrupted run are dropped."""

    def __init__(self, output_dir: str | Path, every: int, rows: int, resume_step: int | None = None,
                 enabled: bool = True):
        self.every, self.rows = (every if enabled else 0), rows
        if not enabled:  # a rank other than 0: rank 0 writes the table
            return
        self.jsonl = Path(output_dir) / "samples.jsonl"
        self.md = Path(output_dir) / "samples.md"
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            for p in (self.jsonl, self.md):
                if p.exists():
                    p.unlink()
        elif self.jsonl.exists():
            kept = []
            for line in self.jsonl.read_text(encoding="utf-8").split("\n"):
                try:
                    if json.loads(line)["step"] <= resume_step:
                        kept.append(json.loads(line))
                except (json.JSONDecodeError, KeyError):
                    pass
            self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
            self.md.write_text("", encoding="utf-8")
            for step in sorted({r["step"] for r in kept}):
                self._write_md(step, [r for r in kept if r["step"] == step])

    def _write_md(self, step: int, rows: list[dict]) -> None:
        def cell(x: Any) -> str:
            return str(x).replace("|", "\\|").replace("\n", "⏎")

        cols = [k for k in rows[0] if k != "step"]
        lines = [f"\n## step {step}\n", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(cell(r[c]) if not isinstance(r[c], float) else f"{r[c]:.4f}" for c in cols) + " |"
                  for r in rows]
        with open(self.md, "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")

    def maybe_write(self, step: int, ro: Rollout, columns: dict[str, torch.Tensor]) -> None:
        if not self.every or step % self.every:
            return
        rows = []
        for i in range(min(self.rows, len(ro))):
            row = {"step": step, "prompt": ro.prompts[i], "response": ro.responses[i]}
            row.update({k: float(v[i]) for k, v in columns.items()})
            rows.append(row)
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
        self._write_md(step, rows)


def setup_run(config: OnlineConfig, prompts_per_step: int | None = None) -> DistInfo:
    """Threads, seed, and the process group when launched with several processes (torchrun /
    accelerate launch; gloo, as the online recipes run on the CPU). Data parallel: every rank
    holds the policy, rolls out its consecutive share of each step's prompts (whole groups) from
    its own seed, and the gradients are summed over ranks (``policy_gradient_update``)."""
    from rlhfkit.recipes.common import set_threads
    from rlhfkit.training.config import ConfigError
    from rlhfkit.training.distributed import init_distributed

    set_threads(config.threads)
    torch.manual_seed(config.seed)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        prompts_per_step = prompts_per_step or config.batch_size // config.num_generations
        if config.parallel != "ddp":
            raise ConfigError(f"field 'parallel': online RL recipes replicate the policy on every process (ddp), "
                             f"not {config.parallel!r}")
        if prompts_per_step % world:
            raise ConfigError(f"fields 'batch_size' / 'num_generations': {prompts_per_step} prompts per step do not "
                             f"divide by {world} processes")
        if (config.batch_size // world) % config.num_minibatches:
            raise ConfigError(f"field 'num_minibatches': {config.batch_size // world} sequences per process do not "
                             f"divide into {config.num_minibatches} minibatches")
    return init_distributed("cpu")


def timer() -> float:
    return time.perf_counter()


def out_of_time(config: OnlineConfig, started: float, info: DistInfo | None = None) -> bool:
    """True once ``max_minutes`` (when set) have passed since ``started``: checked after a step is
    logged and checkpointed, so the run always ends on a whole step (on every rank together:
    rank 0's clock decides)."""
    late = config.max_minutes > 0 and timer() - started >= config.max_minutes * 60
    if info is not None and info.enabled:
        late = bool(all_reduce_sum(float(late) if info.is_main else 0.0, info).item())
    return late


def global_masked_whiten(x: torch.Tensor, mask: torch.Tensor, info: DistInfo | None, shift_mean: bool = True,
                         eps: float = 1e-8) -> torch.Tensor:
    """``core.masking.masked_whiten`` with the mean and unbiased variance of every rank's valid
    positions (one process: exactly ``masked_whiten``)."""
    from rlhfkit.core.masking import masked_whiten

    if info is None or not info.enabled:
        return masked_whiten(x, mask, shift_mean=shift_mean, eps=eps)
    m = mask.bool()
    xz = torch.where(m, x, torch.zeros((), dtype=x.dtype))
    n, total = (float(v) for v in all_reduce_sum(torch.stack([m.sum().double(), xz.sum().double()]), info))
    if n < 2:
        raise ValueError(f"whitening needs at least 2 valid elements over all ranks, got {int(n)}")
    mean = total / n
    sq = float(all_reduce_sum(torch.where(m, (x.double() - mean) ** 2, torch.zeros((), dtype=torch.float64)).sum(), info))
    out = (xz - mean) * torch.rsqrt(torch.tensor(sq / (n - 1) + eps, dtype=x.dtype))
    if not shift_mean:
        out = out + mean
    return torch.where(m, out, torch.zeros((), dtype=out.dtype))


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       info: DistInfo | None = None) -> float:
    """``1 - Var[returns - values] / Var[returns]`` over valid tokens (cleanrl's debug metric),
    over every rank's tokens when ``info`` has several."""
    m = mask.bool()
    if info is not None and info.enabled:
        y, d = returns[m].double(), (returns - values)[m].double()
        n, sy, syy, sd, sdd = (float(v) for v in all_reduce_sum(torch.stack(
            [torch.tensor(float(y.numel()), dtype=torch.float64), y.sum(), (y * y).sum(), d.sum(), (d * d).sum()]), info))
        if n < 2:
            return float("nan")
        var_y, var_d = (syy - sy * sy / n) / (n - 1), (sdd - sd * sd / n) / (n - 1)
        return float(1 - var_d / var_y) if var_y > 0 else float("nan")
    if int(m.sum()) < 2:
        return float("nan")
    y, v = returns[m], values[m]
    var_y = y.var()
    return float(1 - (y - v).var() / var_y) if var_y > 0 else float("nan")


def finite(x: float) -> float:
    return x if math.isfinite(x) else float("nan")


def kl_penalised_scores(config, policy, reference, ro: Rollout, scores: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Sequence reward with the KL leash in it (RLOO, REINFORCE): score - beta * KL(pi || ref),
    KL the summed k1 over the response; returns (rewards, columns for the sample table)."""
    columns = {"reward": scores}
    if config.kl_coef <= 0:
        return scores, columns
    ref_lp = reference_logprobs(policy, reference, ro, config.temperature, config.micro_batch_size)
    columns["kl"] = sequence_kl(ro.logprobs, ref_lp, ro.response_mask)
    return scores - config.kl_coef * columns["kl"], columns
