"""REINFORCE Leave-One-Out (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics").

    rlhfkit rloo --model smollm2-135m --reward vader --num_generations 4 --output_dir outputs/rloo

Per step: P prompts, k samples each. The sequence reward is the score minus
``kl_coef * sum_t (logp - ref_logp)`` (KL in the reward, as TRL's RLOOTrainer); each sample's
baseline is the mean reward of the other k - 1 samples of its prompt. The loss is the clipped
surrogate (plain REINFORCE with one epoch), per-sequence token means averaged over sequences.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlhfkit.core.advantages import rloo_advantages
from rlhfkit.recipes.common import finished_run, save_final
from rlhfkit.recipes.online import (adversarial_modules, adversarial_step, build_run_reward,
                                    closing_line, finish_run, fused_advantages_ok, gathered, generate, kl_penalised_scores,
                                    load_models, load_prompts, local_share, make_generator, maybe_checkpoint,
                                    OnlineConfig, optimizer_and_scheduler, out_of_time, policy_gradient_update,
                                    prompts_for_step, reference_logprobs, repeat_each, resume_state, rollout_metrics,
                                    run_outputs, score, sequence_kl, setup_run, timer)
from rlhfkit.rewards import build_reward
from rlhfkit.training.distributed import DistInfo, cleanup


@dataclass
class RLOOConfig(OnlineConfig):
    output_dir: str = field(default="outputs/rloo", metadata={"help": "checkpoints, metrics.jsonl, samples and model/"})
    num_generations: int = field(default=4, metadata={"help": "samples per prompt, >= 2"})
    kl_coef: float = field(default=0.05, metadata={"help": "beta: sequence reward = score - beta * KL(pi || ref) (0 = no reference)"})
    normalize_advantages: bool = field(default=False, metadata={"help": "whiten the advantages over the batch"})
    loss_aggregation: str = field(default="sequence", metadata={"help": "sequence, token or constant (see recipes/online.token_weights)"})

    def validate(self) -> None:
        super().validate()
        if self.num_generations < 2:
            raise ValueError("RLOO needs num_generations >= 2")


def advantages_for(rewards: torch.Tensor, k: int, normalize: bool = False, info: DistInfo | None = None) -> torch.Tensor:
    """``[B] -> [B]``: leave-one-out over each prompt's k adjacent samples (optionally whitened
    with the mean and std of the whole step, every rank's rows when ``info`` has several)."""
    adv = rloo_advantages(rewards.view(-1, k)).reshape(-1)
    if normalize:
        whole = gathered(adv, info)
        adv = (adv - whole.mean()) / (whole.std() + 1e-8)
    return adv


def run(config: RLOOConfig) -> dict:
    info = setup_run(config)
    if (done := finished_run(config, "rloo", info)) is not None:
        cleanup(info)
        return done
    k = config.num_generations
    prompts = load_prompts(config)
    reward, adversary = build_run_reward(config, info)
    gold = build_reward(config.gold_reward, batch_size=config.reward_batch_size) if config.gold_reward else None
    policy, tokenizer, reference = load_models(config, need_reference=config.kl_coef > 0)
    generator = make_generator(config, tokenizer, policy)
    optimizer, scheduler = optimizer_and_scheduler(policy.parameters(), config, adversary)
    modules = torch.nn.ModuleDict({"policy": policy, **adversarial_modules(adversary)})
    start, state = resume_state(config, modules, optimizer, scheduler, info)
    logger, table, bar = run_outputs(config, info, start, bool(state), "rloo")
    metrics: dict = {}
    started = timer()
    for step in range(start, config.max_steps):
        lr_of_step = scheduler.get_last_lr()[0]  # this step's first update (the scheduler steps per update)
        t0 = timer()
        step_prompts = local_share(prompts_for_step(prompts, step, config.batch_size // k, config.seed), info)
        # one update on whole groups, no batch whitening: the update pass supplies the behaviour
        # log-probs of the KL penalty (no separate forward pass; TRL makes one)
        fused = fused_advantages_ok(config, k) and not config.normalize_advantages
        ro = generate(config, generator, policy, tokenizer, repeat_each(step_prompts, k), step,
                      behaviour_logprobs=not fused, rank=info.rank)
        scores = score(reward, ro)
        if fused:
            columns = {"reward": scores}
            ref_lp = (reference_logprobs(policy, reference, ro, config.temperature, config.micro_batch_size)
                      if config.kl_coef > 0 else None)
            rewards, kl, advantages = scores.clone(), torch.zeros_like(scores), torch.zeros_like(scores)

            def group_advantages(rows, logp):
                if ref_lp is not None:
                    kl[rows] = sequence_kl(logp, ref_lp[rows], ro.response_mask[rows])
                    rewards[rows] = scores[rows] - config.kl_coef * kl[rows]
                advantages[rows] = advantages_for(rewards[rows], k)
                return advantages[rows]

            stats = policy_gradient_update(policy, ro, group_advantages, config, optimizer, scheduler, step,
                                           config.loss_aggregation, fill_behaviour_logprobs=True, info=info)
            if ref_lp is not None:
                columns["kl"] = kl
        else:
            rewards, columns = kl_penalised_scores(config, policy, reference, ro, scores)  # KL penalty in the sequence reward
            advantages = advantages_for(rewards, k, config.normalize_advantages, info)
            stats = policy_gradient_update(policy, ro, advantages, config, optimizer, scheduler, step,
                                           config.loss_aggregation, info=info)
        columns["advantage"] = advantages
        metrics = {**rollout_metrics(ro, scores, timer() - t0, info), **stats, "lr": lr_of_step,
                   "rlhf_reward": float(gathered(rewards, info).mean())}
        if "kl" in columns:
            metrics["kl"] = float(gathered(columns["kl"], info).mean())
        if gold is not None:
            columns["gold"] = score(gold, ro)
            metrics["gold"] = float(gathered(columns["gold"], info).mean())
        metrics.update(adversarial_step(adversary, reward, ro, step, optimizer))
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
    finish_run(info, modules, optimizer, None, line=closing_line("rloo", config, metrics))
    return metrics
