"""Group Relative Policy Optimisation (Shao et al. 2024, DeepSeekMath) and Dr. GRPO (Liu et al. 2025).

    rlhfkit grpo --model smollm2-135m --reward vader --num_generations 4 --output_dir outputs/grpo

Per step: P prompts, k samples each (``num_generations``); each sample's advantage is its score
minus its group's mean, divided by the group's std (GRPO) or not (Dr. GRPO); the loss is the
clipped surrogate per token plus ``kl_coef * k3(pi, ref)`` per token (the KL term sits in the
loss, not in the reward), aggregated per sequence then over sequences (GRPO) or summed over
tokens / (k·P·max_new_tokens) (Dr. GRPO: no length or difficulty bias).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlhfkit.core.advantages import group_normalised_advantages
from rlhfkit.recipes.common import finished_run, save_final
from rlhfkit.recipes.online import (adversarial_modules, adversarial_step, build_run_reward,
                                    closing_line, finish_run, gathered, generate, load_models, load_prompts, local_share,
                                    make_generator, maybe_checkpoint, OnlineConfig, optimizer_and_scheduler,
                                    out_of_time, policy_gradient_update, prompts_for_step, reference_logprobs,
                                    repeat_each, resume_state, rollout_metrics, run_outputs, score, sequence_kl,
                                    setup_run, single_update, timer)
from rlhfkit.rewards import build_reward
from rlhfkit.training.distributed import cleanup


@dataclass
class GRPOConfig(OnlineConfig):
    output_dir: str = field(default="outputs/grpo", metadata={"help": "checkpoints, metrics.jsonl, samples and model/"})
    num_generations: int = field(default=4, metadata={"help": "samples per prompt (the group), >= 2"})
    kl_coef: float = field(default=0.04, metadata={"help": "beta of the k3 KL term in the loss (0 = no reference model)"})
    variant: str = field(default="grpo", metadata={"help": "grpo (divide by group std) or dr_grpo (no std division, constant token normaliser)"})
    loss_aggregation: str = field(default="auto", metadata={"help": "auto (sequence for grpo, constant for dr_grpo), sequence, token or constant"})

    def validate(self) -> None:
        super().validate()
        if self.num_generations < 2:
            raise ValueError("GRPO needs num_generations >= 2")
        if self.variant not in ("grpo", "dr_grpo"):
            raise ValueError(f"variant must be grpo or dr_grpo, got {self.variant!r}")


def aggregation_for(config: GRPOConfig) -> str:
    if config.loss_aggregation != "auto":
        return config.loss_aggregation
    return "constant" if config.variant == "dr_grpo" else "sequence"


def advantages_for(scores: torch.Tensor, k: int, variant: str) -> torch.Tensor:
    """``[B] -> [B]``: group-normalised over each prompt's k adjacent samples."""
    return group_normalised_advantages(scores.view(-1, k), scale_by_std=variant == "grpo").reshape(-1)


def run(config: GRPOConfig) -> dict:
    info = setup_run(config)
    if (done := finished_run(config, "grpo", info)) is not None:
        cleanup(info)
        return done
    k = config.num_generations
    prompts = load_prompts(config)
    reward, adversary = build_run_reward(config, info)
    gold = build_reward(config.gold_reward, batch_size=config.reward_batch_size) if config.gold_reward else None
    policy, tokenizer, reference = load_models(config, need_reference=config.kl_coef > 0)
    generator = make_generator(config, tokenizer, policy)
    optimizer, scheduler = optimizer_and_scheduler(policy.parameters(), config, adversary)
    modules = torch.nn.ModuleDict({"policy": policy, **adversarial_modules(adversary)})  # what a checkpoint holds
    start, state = resume_state(config, modules, optimizer, scheduler, info)
    logger, table, bar = run_outputs(config, info, start, bool(state), "grpo")
    metrics: dict = {}
    started = timer()
    for step in range(start, config.max_steps):
        t0 = timer()
        # 1. rollout: each prompt k times, adjacent rows (over several processes, each its share of the prompts)
        step_prompts = local_share(prompts_for_step(prompts, step, config.batch_size // k, config.seed), info)
        # with one update per rollout the update pass supplies the behaviour log-probs (no extra pass)
        ro = generate(config, generator, policy, tokenizer, repeat_each(step_prompts, k), step,
                      behaviour_logprobs=not single_update(config), rank=info.rank)
        # 2. score and group-normalised advantages
        scores = score(reward, ro)
        advantages = advantages_for(scores, k, config.variant)
        ref_lp = (reference_logprobs(policy, reference, ro, config.temperature, config.micro_batch_size)
                  if config.kl_coef > 0 else None)
        # 3. clipped surrogate + beta * k3 KL in the loss
        lr_of_step = scheduler.get_last_lr()[0]  # this step's first update (the scheduler steps per update)
        stats = policy_gradient_update(policy, ro, advantages, config, optimizer, scheduler, step,
                                       aggregation_for(config), ref_logprobs=ref_lp, kl_loss_coef=config.kl_coef,
                                       fill_behaviour_logprobs=single_update(config), info=info)
        # 4. log, sample table, checkpoint
        metrics = {**rollout_metrics(ro, scores, timer() - t0, info), **stats, "lr": lr_of_step}
        metrics.update(adversarial_step(adversary, reward, ro, step, optimizer))
        columns = {"reward": scores, "advantage": advantages}
        if ref_lp is not None:
            seq_kl = sequence_kl(ro.logprobs, ref_lp, ro.response_mask)
            metrics["kl"] = float(gathered(seq_kl, info).mean())
            columns["kl"] = seq_kl
        if gold is not None:
            gold_scores = score(gold, ro)
            metrics["gold"] = float(gathered(gold_scores, info).mean())
            columns["gold"] = gold_scores
        logger.log(step + 1, metrics)
        table.maybe_write(step + 1, ro, columns)
        bar.update(1)
        bar.set_postfix(reward=f"{metrics['reward']:.3f}")
        maybe_checkpoint(config, step + 1, modules, optimizer, scheduler, {}, info)
        if out_of_time(config, started, info):
            break
    bar.close()
    logger.close()
    save_final(policy, tokenizer, config, metrics, info)
    if adversary is not None and info.is_main:
        adversary.save(config.output_dir)
    finish_run(info, modules, optimizer, None, line=closing_line("grpo", config, metrics))
    return metrics
