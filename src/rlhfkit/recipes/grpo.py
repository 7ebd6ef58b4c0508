"""Group Relative Policy Optimisation (Shao et al. 2024, DeepSeekMath) and Dr. GRPO (Liu et al. 2025).

    rlhfkit grpo --model smollm2-135m --reward vader --num_generations 4 --output_dir outputs/grpo

Per step: P prompts, k samples each (``num_generations``); each sample's advantage is its score
minus its group's mean, divided by the group's std (GRPO) or not (Dr. GRPO); the loss is the
clipped surrogate per token plus ``kl_coef * k3(pi, ref)`` per token (the KL term sits in the
loss, not in the reward), aggregated per sequence then over sequences (GRPO) or summed over
tokens / (k·P·max_new_tokens) (Dr. GRPO: no length or difficulty bias). The loop around the
step (logging, checkpoints, resume) is ``online_driver.run_online``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlhfkit.core.advantages import group_normalised_advantages
from rlhfkit.core.kl import sequence_kl
from rlhfkit.recipes.online_config import OnlineConfig
from rlhfkit.recipes.online_driver import OnlineRun, StatelessAlgorithm, StepOutput, run_online
from rlhfkit.recipes.policy_gradient import policy_gradient_update, single_update
from rlhfkit.training.distributed import all_gather_rows


@dataclass
class GRPOConfig(OnlineConfig):
    output_dir: str = field(default="outputs/grpo", metadata={"help": "checkpoints, metrics.jsonl, samples and model/"})
    num_generations: int = field(default=4, metadata={"help": "samples per prompt (the group), >= 2"})
    kl_coef: float = field(
        default=0.04, metadata={"help": "beta of the k3 KL term in the loss (0 = no reference model)"}
    )
    variant: str = field(
        default="grpo",
        metadata={"help": "grpo (divide by group std) or dr_grpo (no std division, constant token normaliser)"},
    )
    loss_aggregation: str = field(
        default="auto", metadata={"help": "auto (sequence for grpo, constant for dr_grpo), sequence, token or constant"}
    )

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


def group_advantages(scores: torch.Tensor, k: int, variant: str) -> torch.Tensor:
    """``[B] -> [B]``: each row's score normalised within its group, the k adjacent rows of a
    prompt (``core.advantages.group_normalised_advantages``; Dr. GRPO without the std)."""
    return group_normalised_advantages(scores.view(-1, k), scale_by_std=variant == "grpo").reshape(-1)


class GRPO(StatelessAlgorithm):
    """GRPO's step; everything around it is ``online_driver.run_online``'s."""

    name = "grpo"
    progress = {"reward": ".3f"}

    def __init__(self, config: GRPOConfig):
        self.config = config
        self.samples_per_prompt = config.num_generations
        self.need_reference = config.kl_coef > 0

    def step(self, run: OnlineRun, step: int) -> StepOutput:
        c, k = self.config, self.samples_per_prompt
        # 1. rollout: each prompt k times, adjacent rows; with one update per rollout the update
        #    pass supplies the behaviour log-probs (no separate pass)
        ro = run.rollout(step, k, behaviour_logprobs=not single_update(c))
        # 2. score and group-normalised advantages
        scores = run.score(ro)
        advantages = group_advantages(scores, k, c.variant)
        ref_lp = run.reference_logprobs(ro) if c.kl_coef > 0 else None
        # 3. clipped surrogate + beta * k3 KL in the loss
        lr = run.lr()
        upd = policy_gradient_update(
            run.policy,
            ro,
            advantages,
            None if single_update(c) else ro.logprobs,
            c,
            run.optimizer,
            run.scheduler,
            step,
            aggregation_for(c),
            params=run.params,
            ref_logprobs=ref_lp,
            kl_loss_coef=c.kl_coef,
            info=run.info,
        )
        metrics = {**upd.stats.metrics(), "lr": lr}
        columns = {"reward": scores, "advantage": advantages}
        if ref_lp is not None:  # the KL to the reference, of the policy that sampled
            columns["kl"] = sequence_kl(upd.behaviour_logprobs, ref_lp, ro.response_mask)
            metrics["kl"] = float(all_gather_rows(columns["kl"], run.info).mean())
        return StepOutput(ro, scores, metrics, columns)


def run(config: GRPOConfig) -> dict:
    return run_online(config, GRPO(config))
