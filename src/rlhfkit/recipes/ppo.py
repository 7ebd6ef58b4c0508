"""PPO for language models (Ziegler et al. 2019; Ouyang et al. 2022), with every item of the
PPO checklist in docs/DESIGN.md ("The N implementation details of RLHF with PPO", Huang et al.).

    rlhfkit ppo --model smollm2-135m --reward rm:outputs/rm/model --output_dir outputs/ppo

Roles: policy (trained), reference (frozen copy, or the policy with its LoRA adapter off),
value model (backbone of the policy, zero-initialised head, or a given sequence classifier),
reward (any rewards/ source: a reward model, a function, judges).
Per step: roll out -> score (missing-EOS penalty, normalisation) -> per-token KL penalty with
the score on the last token -> GAE -> whitened advantages -> ppo_epochs over shuffled
minibatches of clipped policy + clipped value loss -> KL controller update.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlhfkit.core.advantages import gae
from rlhfkit.core.losses import ppo_policy_loss, ppo_value_loss
from rlhfkit.core.masking import masked_mean
from rlhfkit.core.reward_shaping import apply_missing_eos_penalty, per_token_rewards
from rlhfkit.recipes.common import finished_run, save_final
from rlhfkit.recipes.online import (adversarial_modules, adversarial_step, build_run_reward,
                                    closing_line, RANK_SALT, explained_variance, finish_run, run_outputs, gathered, generate,
                                    global_masked_whiten, load_models, load_prompts, local_share, make_generator,
                                    make_kl_controller, maybe_checkpoint, micro_slices, minibatches, OnlineConfig,
                                    optimizer_and_scheduler, out_of_time, prompts_for_step, reference_logprobs,
                                    resume_state, rollout_metrics, score, setup_run, timer)
from rlhfkit.rewards import RunningNormaliser, build_reward
from rlhfkit.rollout import Rollout, response_logprobs, step_seed
from rlhfkit.training.loop import enable_gradient_checkpointing
from rlhfkit.training.precision import autocast_forward
from rlhfkit.training.distributed import DistInfo, all_reduce_gradients, all_reduce_sum, cleanup


@dataclass
class PPOConfig(OnlineConfig):
    output_dir: str = field(default="outputs/ppo", metadata={"help": "checkpoints, metrics.jsonl, samples and model/"})
    ppo_epochs: int = field(default=4, metadata={"help": "passes over each step's batch (detail 10)"})
    num_minibatches: int = field(default=1, metadata={"help": "optimiser steps per epoch"})
    kl_coef: float = field(default=0.05, metadata={"help": "beta of the per-token KL penalty (initial value when adaptive)"})
    kl_control: str = field(default="fixed", metadata={"help": "fixed or adaptive (Ziegler et al. 2019)"})
    kl_target: float = field(default=6.0, metadata={"help": "adaptive: target KL per sequence (nats)"})
    kl_horizon: float = field(default=10000.0, metadata={"help": "adaptive: horizon in samples"})
    kl_estimator: str = field(default="k1", metadata={"help": "per-token KL in the reward: k1, k2 or k3"})
    gamma: float = field(default=1.0, metadata={"help": "GAE discount (detail 9)"})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda (detail 9)"})
    vf_coef: float = field(default=0.1, metadata={"help": "value loss coefficient"})
    cliprange_value: float = field(default=0.2, metadata={"help": "value clipping epsilon"})
    value_model: str = field(default="", metadata={"help": "empty: the policy's backbone with a zero head (detail 8); or a sequence-classifier folder sharing the policy's tokenizer (e.g. the RM)"})
    reward_norm: str = field(default="reference", metadata={"help": "none, reference (mean/std fitted once on reference responses, detail 6) or running"})
    reward_norm_batches: int = field(default=2, metadata={"help": "reference: batches of reference responses to fit on"})
    whiten_rewards: bool = field(default=False, metadata={"help": "whiten per-token rewards without shifting the mean (detail 6)"})
    missing_eos_penalty: float = field(default=0.0, metadata={"help": "subtract this from the score of responses without EOS (0 = off)"})

    def validate(self) -> None:
        super().validate()
        if self.reward_norm not in ("none", "reference", "running"):
            raise ValueError(f"reward_norm must be none, reference or running, got {self.reward_norm!r}")


def load_value_model(config: PPOConfig, tokenizer):
    from rlhfkit.models import apply_lora, make_value_model

    if config.value_model:
        value = make_value_model(config.value_model, zero_init=False, tokenizer=tokenizer)
    else:
        value = make_value_model(config.model, zero_init=True, tokenizer=tokenizer)
    if config.lora.r:
        value = apply_lora(value, r=config.lora.r, alpha=config.lora.alpha, dropout=config.lora.dropout,
                           target_modules=config.lora.target_modules)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(value)
    return value


def response_values(value_model, ro: Rollout, rows) -> torch.Tensor:
    """Values ``[b, R]``: ``values[:, t]`` is V of the state that predicts response token t
    (the hidden state of the token before it), as TRL ``values[:, context_length - 1:-1]``."""
    from rlhfkit.models import token_values

    P = ro.prompt_ids.shape[1]
    ids = torch.cat([ro.prompt_ids[rows], ro.response_ids[rows]], 1)
    mask = torch.cat([ro.prompt_mask[rows].long(), ro.response_mask[rows].long()], 1)
    return token_values(value_model, ids, mask)[:, P - 1:-1]


def fit_reference_normaliser(config, generator, policy, tokenizer, prompts, reward,
                             info: DistInfo | None = None) -> RunningNormaliser:
    """Mean / std of the reward on responses of the starting policy (the reference unless
    ``ref_model`` names another), detail 6: the scale the run's rewards start from (over several
    processes each samples its share and the fit is on all of them, the same on every rank)."""
    from rlhfkit.rollout import rollout

    info = info or DistInfo()
    scores = []
    for b in range(config.reward_norm_batches):
        batch = local_share(prompts_for_step(prompts, b, config.batch_size, config.seed + 1), info)
        ro = rollout(generator, policy, tokenizer, batch, seed=step_seed(config.seed, b, salt=7 + RANK_SALT * info.rank),
                     max_prompt_length=config.max_prompt_length, chat_template=config.chat_template,
                     logprob_batch_size=config.micro_batch_size)
        scores.append(gathered(score(reward, ro), info))
    return RunningNormaliser().fit(torch.cat(scores))


def ppo_update(config: PPOConfig, modules: torch.nn.ModuleDict, reference, ro: Rollout, scores: torch.Tensor,
               kl_coef: float, optimizer, scheduler, params: list, step: int, info: DistInfo) -> dict:
    """Steps 3-5 of a PPO step on a rollout (over several processes, this rank's share of it):
    reference log-probs and old values, per-token rewards ``-kl_coef * KL`` with the score on the
    last token, GAE, whitened advantages (over every rank's valid tokens), then ``ppo_epochs``
    over shuffled minibatches of the clipped policy + value loss with gradient accumulation, the
    token normaliser of the whole minibatch and gradients summed over ranks. Returns ``{"stats":
    mean statistics over all ranks, "kl": per-token KL [B, R], "old_values", "returns"}``."""
    policy, value_model = modules["policy"], modules["value"]
    mask, mb = ro.response_mask, config.micro_batch_size
    # 3. reference log-probs and old values (no grad)
    ref_lp = reference_logprobs(policy, reference, ro, config.temperature, mb)
    with torch.no_grad():
        old_values = torch.cat([response_values(value_model, ro, torch.arange(len(ro))[s])
                                for s in micro_slices(len(ro), mb)])
    # 4. per-token reward -beta*KL with the score on the last token (detail 7), GAE (detail 9)
    rewards, kl = per_token_rewards(scores, ro.logprobs, ref_lp, mask, kl_coef, config.kl_estimator)
    if config.whiten_rewards:
        rewards = global_masked_whiten(rewards, mask, info, shift_mean=False)
    advantages, returns = gae(rewards, old_values, mask, config.gamma, config.lam)
    advantages = global_masked_whiten(advantages, mask, info, shift_mean=True)  # over valid tokens only
    # 5. ppo_epochs over shuffled minibatches, accumulation over micro-batches (detail 10)
    sums: dict[str, float] = {}
    n_updates = 0
    modules.train()
    for epoch in range(config.ppo_epochs):
        for rows in minibatches(len(ro), config, step, epoch):
            # minibatch-global normaliser (over every rank's share of the minibatch)
            n_tokens = all_reduce_sum(mask[rows].sum(), info).clamp(min=1).float()
            for s in micro_slices(len(rows), mb):
                r = rows[s]
                m = mask[r]
                logp, ent = response_logprobs(policy, ro.prompt_ids[r], ro.prompt_mask[r], ro.response_ids[r], m,
                                              config.temperature, with_entropy=True)
                values = response_values(value_model, ro, r)
                pg_loss, pst = ppo_policy_loss(logp, ro.logprobs[r], advantages[r], m, config.clip_eps, n_tokens)
                vf_loss, vst = ppo_value_loss(values, old_values[r], returns[r], m, config.cliprange_value, n_tokens)
                loss = pg_loss + config.vf_coef * vf_loss
                loss.backward()
                share = float(m.sum()) / float(n_tokens)
                for key, val in (("pg_loss", pg_loss), ("value_loss", vf_loss)):
                    sums[key] = sums.get(key, 0.0) + float(val.detach())
                for key, val in (*pst.items(), *vst.items(), ("entropy", masked_mean(ent, m) if m.any() else 0.0)):
                    sums[key] = sums.get(key, 0.0) + float(val) * share
            all_reduce_gradients(params, info)  # the ranks' shares of the loss add up to the minibatch's
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm) if config.max_grad_norm > 0 else torch.tensor(0.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(grad_norm)
            n_updates += 1
    modules.eval()
    if info.enabled:  # each rank's sums are its share of the minibatches; grad_norm is the same on all
        keys = sorted(k for k in sums if k != "grad_norm")
        total = all_reduce_sum(torch.tensor([sums[k] for k in keys], dtype=torch.float64), info)
        sums.update({k: float(v) for k, v in zip(keys, total)})
    return {"stats": {k: v / n_updates for k, v in sums.items()}, "kl": kl, "old_values": old_values,
            "returns": returns}


def run(config: PPOConfig) -> dict:
    info = setup_run(config, prompts_per_step=config.batch_size)  # one sample per prompt
    if (done := finished_run(config, "ppo", info)) is not None:
        cleanup(info)
        return done
    prompts = load_prompts(config)
    reward, adversary = build_run_reward(config, info)
    gold = build_reward(config.gold_reward, batch_size=config.reward_batch_size) if config.gold_reward else None
    policy, tokenizer, reference = load_models(config, need_reference=True)
    value_model = load_value_model(config, tokenizer)
    autocast_forward(value_model, config.precision)
    generator = make_generator(config, tokenizer, policy)
    modules = torch.nn.ModuleDict({"policy": policy, "value": value_model})
    params = [p for p in modules.parameters() if p.requires_grad]
    optimizer, scheduler = optimizer_and_scheduler(params, config, adversary)
    modules.update(adversarial_modules(adversary))  # in the checkpoints, not in the policy update's params
    kl_ctl = make_kl_controller(config.kl_control, config.kl_coef, config.kl_target, config.kl_horizon)
    normaliser = RunningNormaliser()
    start, state = resume_state(config, modules, optimizer, scheduler, info)
    if state:
        kl_ctl.load_state_dict(state["kl_controller"])
        normaliser.load_state_dict(state["reward_normaliser"])
    elif config.reward_norm == "reference":
        normaliser = fit_reference_normaliser(config, generator, policy, tokenizer, prompts, reward, info)
    logger, table, bar = run_outputs(config, info, start, bool(state), "ppo")
    metrics: dict = {}
    started = timer()
    for step in range(start, config.max_steps):
        t0 = timer()
        # 1. rollout (left-padded prompts, responses cut after EOS, behaviour log-probs)
        ro = generate(config, generator, policy, tokenizer,
                      local_share(prompts_for_step(prompts, step, config.batch_size, config.seed), info), step,
                      rank=info.rank)
        mask = ro.response_mask
        # 2. score: missing-EOS penalty, then normalisation (detail 6)
        raw_scores = score(reward, ro)
        scores = raw_scores
        if config.missing_eos_penalty:
            scores = apply_missing_eos_penalty(scores, ro.has_eos, config.missing_eos_penalty)
        if config.reward_norm == "reference":
            scores = normaliser.normalise(scores, update=False)
        elif config.reward_norm == "running":  # the statistics take in the whole step's scores first
            normaliser.update(gathered(scores, info))
            scores = normaliser.normalise(scores, update=False)
        # 3-5. reference log-probs, values, per-token rewards, GAE, whitened advantages, the update
        lr_of_step = scheduler.get_last_lr()[0]  # this step's first update (the scheduler steps per update)
        upd = ppo_update(config, modules, reference, ro, scores, kl_ctl.value, optimizer, scheduler, params, step, info)
        kl, old_values, returns = upd["kl"], upd["old_values"], upd["returns"]
        # 6. KL controller, metrics (detail 12), samples, checkpoint
        seq_kl = kl.sum(1)
        all_kl = gathered(seq_kl, info)
        kl_coef_used = kl_ctl.value
        non_score = gathered((-kl_coef_used * kl).sum(1), info)
        kl_ctl.update(all_kl.mean(), len(all_kl))
        metrics = {**rollout_metrics(ro, raw_scores, timer() - t0, info), **upd["stats"],
                   "kl": float(all_kl.mean()), "kl_coef": kl_coef_used,
                   "non_score_reward": float(non_score.mean()),
                   "score_normalised": float(gathered(scores, info).mean()),
                   "explained_variance": explained_variance(old_values, returns, mask, info),
                   "lr": lr_of_step}
        columns = {"reward": raw_scores, "kl": seq_kl}
        if gold is not None:
            columns["gold"] = score(gold, ro)
            metrics["gold"] = float(gathered(columns["gold"], info).mean())
        metrics.update(adversarial_step(adversary, reward, ro, step, optimizer))
        logger.log(step + 1, metrics)
        table.maybe_write(step + 1, ro, columns)
        bar.update(1)
        bar.set_postfix(reward=f"{metrics['reward']:.3f}", kl=f"{metrics['kl']:.2f}")
        maybe_checkpoint(config, step + 1, modules, optimizer, scheduler,
                         {"kl_controller": kl_ctl.state_dict(), "reward_normaliser": normaliser.state_dict()}, info)
        if out_of_time(config, started, info):
            break
    bar.close()
    logger.close()
    save_final(policy, tokenizer, config, metrics, info)
    if adversary is not None and info.is_main:
        adversary.save(config.output_dir)
    finish_run(info, modules, optimizer, {"kl_controller": kl_ctl.state_dict(), "reward_normaliser": normaliser.state_dict()}, line=closing_line("ppo", config, metrics))
    return metrics
