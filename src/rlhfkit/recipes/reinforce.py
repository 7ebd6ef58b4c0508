"""REINFORCE with a baseline (Williams 1992), for language models.

    rlhfkit reinforce --model smollm2-135m --reward vader --baseline running --output_dir outputs/reinforce

Sequence reward ``R = score - kl_coef * sum_t (logp - ref_logp)``; advantage ``R - b`` with the
baseline b either
- ``running``: one scalar updated after each step, ``b <- b + alpha * (mean(R) - b)``
  (the batch mean of R, so the update does not depend on row order), or
- ``learned``: a value model reading the prompt (its value at the last prompt token),
  trained alongside the policy with ``0.5 * vf_coef * (V(x) - R)^2``, or
- ``none``.
The policy loss is the clipped surrogate (plain REINFORCE with one epoch, one minibatch).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlhfkit.recipes.common import finished_run, save_final
from rlhfkit.recipes.online import (adversarial_modules, adversarial_step, build_run_reward,
                                    closing_line, finish_run, gathered, generate, kl_penalised_scores, load_models, load_prompts,
                                    local_share, make_generator, maybe_checkpoint, OnlineConfig,
                                    optimizer_and_scheduler, out_of_time, policy_gradient_update, prompts_for_step,
                                    repeat_each, resume_state, rollout_metrics, run_outputs, score, setup_run, timer)
from rlhfkit.rewards import build_reward
from rlhfkit.training.distributed import DistInfo, cleanup


@dataclass
class ReinforceConfig(OnlineConfig):
    output_dir: str = field(default="outputs/reinforce", metadata={"help": "checkpoints, metrics.jsonl, samples and model/"})
    baseline: str = field(default="running", metadata={"help": "running (scalar moving average), learned (value model on the prompt) or none"})
    baseline_alpha: float = field(default=0.1, metadata={"help": "running baseline step size alpha"})
    vf_coef: float = field(default=0.1, metadata={"help": "learned baseline: value loss coefficient"})
    loss_aggregation: str = field(default="sequence", metadata={"help": "sequence, token or constant (see recipes/online.token_weights)"})

    def validate(self) -> None:
        super().validate()
        if self.baseline not in ("running", "learned", "none"):
            raise ValueError(f"baseline must be running, learned or none, got {self.baseline!r}")


def running_baseline_step(b: float, returns: torch.Tensor, alpha: float,
                          info: DistInfo | None = None) -> tuple[torch.Tensor, float]:
    """``(advantages = R - b, new b = b + alpha * (mean R - b))``; the mean over the whole step
    (every rank's rows when ``info`` has several), so every rank keeps the same baseline."""
    return returns - b, b + alpha * (float(gathered(returns, info).mean()) - b)


def prompt_values(value_model, ro, rows) -> torch.Tensor:
    """``[b]``: the value model at the last prompt column (prompts are left padded, so column
    ``P - 1`` is always the last real prompt token)."""
    from rlhfkit.models import token_values

    return token_values(value_model, ro.prompt_ids[rows], ro.prompt_mask[rows])[:, -1]


def run(config: ReinforceConfig) -> dict:
    from rlhfkit.models import make_value_model

    info = setup_run(config)
    if (done := finished_run(config, "reinforce", info)) is not None:
        cleanup(info)
        return done
    k = config.num_generations
    prompts = load_prompts(config)
    reward, adversary = build_run_reward(config, info)
    gold = build_reward(config.gold_reward, batch_size=config.reward_batch_size) if config.gold_reward else None
    policy, tokenizer, reference = load_models(config, need_reference=config.kl_coef > 0)
    generator = make_generator(config, tokenizer, policy)
    modules = torch.nn.ModuleDict({"policy": policy})
    if config.baseline == "learned":
        modules["value"] = make_value_model(config.model, zero_init=True, tokenizer=tokenizer)
        from rlhfkit.training.precision import autocast_forward

        autocast_forward(modules["value"], config.precision)
    params = [p for p in modules.parameters() if p.requires_grad]
    optimizer, scheduler = optimizer_and_scheduler(params, config, adversary)
    modules.update(adversarial_modules(adversary))  # in the checkpoints, not in the policy update's params
    start, state = resume_state(config, modules, optimizer, scheduler, info)
    b = float(state.get("baseline", 0.0))
    logger, table, bar = run_outputs(config, info, start, bool(state), "reinforce")
    metrics: dict = {}
    started = timer()
    for step in range(start, config.max_steps):
        t0 = timer()
        step_prompts = local_share(prompts_for_step(prompts, step, config.batch_size // k, config.seed), info)
        ro = generate(config, generator, policy, tokenizer, repeat_each(step_prompts, k), step, rank=info.rank)
        scores = score(reward, ro)
        returns, columns = kl_penalised_scores(config, policy, reference, ro, scores)
        extra_loss = None
        if config.baseline == "running":
            advantages, b = running_baseline_step(b, returns, config.baseline_alpha, info)
        elif config.baseline == "learned":
            value_model = modules["value"]
            with torch.no_grad():
                advantages = returns - prompt_values(value_model, ro, torch.arange(len(ro)))

            def extra_loss(rows, n_minibatch, value_model=value_model, returns=returns):
                v = prompt_values(value_model, ro, rows)
                loss = config.vf_coef * 0.5 * ((v - returns[rows]) ** 2).sum() / n_minibatch
                return loss, {"value_loss": float(loss.detach()) / config.vf_coef}
        else:
            advantages = returns
        columns["advantage"] = advantages
        lr_of_step = scheduler.get_last_lr()[0]  # this step's first update (the scheduler steps per update)
        stats = policy_gradient_update(policy, ro, advantages, config, optimizer, scheduler, step,
                                       config.loss_aggregation, extra_loss=extra_loss, params=params, info=info)
        metrics = {**rollout_metrics(ro, scores, timer() - t0, info), **stats, "lr": lr_of_step,
                   "rlhf_reward": float(gathered(returns, info).mean()), "baseline": b}
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
        maybe_checkpoint(config, step + 1, modules, optimizer, scheduler, {"baseline": b}, info)
        if out_of_time(config, started, info):
            break
    bar.close()
    logger.close()
    save_final(policy, tokenizer, config, metrics, info)
    if adversary is not None and info.is_main:
        adversary.save(config.output_dir)
    finish_run(info, modules, optimizer, {"baseline": b}, line=closing_line("reinforce", config, metrics))
    return metrics
