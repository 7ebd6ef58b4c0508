"""REINFORCE with a baseline (Williams 1992), for language models.

    rlhfkit reinforce --model smollm2-135m --reward vader --baseline running --output_dir outputs/reinforce

Sequence reward ``R = score - kl_coef * sum_t (logp - ref_logp)``; advantage ``R - b`` with the
baseline b either
- ``running``: one scalar updated after each step, ``b <- b + alpha * (mean(R) - b)``
  (the batch mean of R, so the update does not depend on row order), or
- ``learned``: a value model reading the prompt (its value at the last prompt token),
  trained alongside the policy with ``0.5 * vf_coef * (V(x) - R)^2``, or
- ``none``.
The policy loss is the clipped surrogate (plain REINFORCE with one epoch, one minibatch). The
loop around the step is ``online_driver.run_online``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlhfkit.core.reward_shaping import kl_penalised_rewards
from rlhfkit.models import make_value_model, token_values
from rlhfkit.recipes.online_config import OnlineConfig
from rlhfkit.recipes.online_driver import OnlineRun, StepOutput, run_online
from rlhfkit.recipes.policy_gradient import policy_gradient_update
from rlhfkit.training.distributed import DistInfo, all_gather_rows
from rlhfkit.core.precision import autocast_forward


@dataclass
class ReinforceConfig(OnlineConfig):
    output_dir: str = field(
        default="outputs/reinforce", metadata={"help": "checkpoints, metrics.jsonl, samples and model/"}
    )
    baseline: str = field(
        default="running",
        metadata={"help": "running (scalar moving average), learned (value model on the prompt) or none"},
    )
    baseline_alpha: float = field(default=0.1, metadata={"help": "running baseline step size alpha"})
    vf_coef: float = field(default=0.1, metadata={"help": "learned baseline: value loss coefficient"})
    loss_aggregation: str = field(
        default="sequence", metadata={"help": "sequence, token or constant (see core.losses.token_weights)"}
    )

    def validate(self) -> None:
        super().validate()
        if self.baseline not in ("running", "learned", "none"):
            raise ValueError(f"baseline must be running, learned or none, got {self.baseline!r}")


def running_baseline_step(
    b: float, returns: torch.Tensor, alpha: float, info: DistInfo | None = None
) -> tuple[torch.Tensor, float]:
    """``(advantages = R - b, new b = b + alpha * (mean R - b))``; the mean over the whole step
    (every rank's rows when ``info`` has several), so every rank keeps the same baseline."""
    return returns - b, b + alpha * (float(all_gather_rows(returns, info).mean()) - b)


def prompt_values(value_model, ro, rows) -> torch.Tensor:
    """``[b]``: the value model at the last prompt column (prompts are left padded, so column
    ``P - 1`` is always the last real prompt token)."""
    return token_values(value_model, ro.prompt_ids[rows], ro.prompt_mask[rows])[:, -1]


class Reinforce:
    """REINFORCE's step and baseline; everything around it is ``online_driver.run_online``'s."""

    name = "reinforce"
    progress = {"reward": ".3f"}

    def __init__(self, config: ReinforceConfig):
        self.config = config
        self.samples_per_prompt = config.num_generations
        self.need_reference = config.kl_coef > 0
        self.b = 0.0  # the running baseline
        self.value_model = None  # the learned one

    def trained_modules(self, tokenizer) -> dict:
        if self.config.baseline != "learned":
            return {}
        self.value_model = make_value_model(self.config.model, zero_init=True, tokenizer=tokenizer)
        autocast_forward(self.value_model, self.config.precision)
        return {"value": self.value_model}

    def start(self, run: OnlineRun, trainer_state: dict) -> None:
        self.b = float(trainer_state.get("baseline", 0.0))

    def checkpoint_state(self) -> dict:
        return {"baseline": self.b}

    def step(self, run: OnlineRun, step: int) -> StepOutput:
        c, info = self.config, run.info
        ro = run.rollout(step, self.samples_per_prompt)
        scores = run.score(ro)
        returns, kl = scores, None
        if c.kl_coef > 0:  # the KL penalty in the sequence reward
            returns, kl = kl_penalised_rewards(
                scores, ro.logprobs, run.reference_logprobs(ro), ro.response_mask, c.kl_coef
            )
        value_loss = None
        if c.baseline == "running":
            advantages, self.b = running_baseline_step(self.b, returns, c.baseline_alpha, info)
        elif c.baseline == "learned":
            with torch.no_grad():
                advantages = returns - prompt_values(self.value_model, ro, torch.arange(len(ro)))

            def value_loss(rows, n_minibatch):
                v = prompt_values(self.value_model, ro, rows)
                loss = c.vf_coef * 0.5 * ((v - returns[rows]) ** 2).sum() / n_minibatch
                return loss, float(loss.detach()) / c.vf_coef
        else:
            advantages = returns
        lr = run.lr()
        upd = policy_gradient_update(
            run.policy,
            ro,
            advantages,
            ro.logprobs,
            c,
            run.optimizer,
            run.scheduler,
            step,
            c.loss_aggregation,
            params=run.params,
            value_loss=value_loss,
            info=info,
        )
        metrics = {
            **upd.stats.metrics(),
            "lr": lr,
            "rlhf_reward": float(all_gather_rows(returns, info).mean()),
            "baseline": self.b,
        }
        columns = {"reward": scores}
        if kl is not None:
            metrics["kl"] = float(all_gather_rows(kl, info).mean())
            columns["kl"] = kl
        columns["advantage"] = advantages
        return StepOutput(ro, scores, metrics, columns)


def run(config: ReinforceConfig) -> dict:
    return run_online(config, Reinforce(config))
