"""REINFORCE Leave-One-Out (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics").

    rlhfkit rloo --model smollm2-135m --reward vader --num_generations 4 --output_dir outputs/rloo

Per step: P prompts, k samples each. The sequence reward is the score minus
``kl_coef * sum_t (logp - ref_logp)`` (KL in the reward, as TRL's RLOOTrainer); each sample's
baseline is the mean reward of the other k - 1 samples of its prompt. The loss is the clipped
surrogate (plain REINFORCE with one epoch), per-sequence token means averaged over sequences.
With one update on micro-batches of whole groups (and no batch whitening) the KL penalty takes
the behaviour log-probs from the update's own pass, a separate forward pass saved (TRL makes
one). The loop around the step is ``online_driver.run_online``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlhfkit.core.advantages import rloo_advantages
from rlhfkit.core.reward_shaping import kl_penalised_rewards
from rlhfkit.recipes.online_config import OnlineConfig
from rlhfkit.recipes.online_driver import OnlineRun, StatelessAlgorithm, StepOutput, run_online
from rlhfkit.recipes.policy_gradient import fused_advantages_ok, policy_gradient_update
from rlhfkit.training.distributed import all_gather_rows
from rlhfkit.training.stats import global_whiten


@dataclass
class RLOOConfig(OnlineConfig):
    output_dir: str = field(default="outputs/rloo", metadata={"help": "checkpoints, metrics.jsonl, samples and model/"})
    num_generations: int = field(default=4, metadata={"help": "samples per prompt, >= 2"})
    kl_coef: float = field(
        default=0.05, metadata={"help": "beta: sequence reward = score - beta * KL(pi || ref) (0 = no reference)"}
    )
    normalize_advantages: bool = field(default=False, metadata={"help": "whiten the advantages over the batch"})
    loss_aggregation: str = field(
        default="sequence", metadata={"help": "sequence, token or constant (see core.losses.token_weights)"}
    )

    def validate(self) -> None:
        super().validate()
        if self.num_generations < 2:
            raise ValueError("RLOO needs num_generations >= 2")


def leave_one_out(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """``[B] -> [B]``: each row's reward minus the mean of the other k - 1 rows of its group, the
    k adjacent rows of a prompt (``core.advantages.rloo_advantages``)."""
    return rloo_advantages(rewards.view(-1, k)).reshape(-1)


class RLOO(StatelessAlgorithm):
    """RLOO's step; everything around it is ``online_driver.run_online``'s."""

    name = "rloo"
    progress = {"reward": ".3f"}

    def __init__(self, config: RLOOConfig):
        self.config = config
        self.samples_per_prompt = config.num_generations
        self.need_reference = config.kl_coef > 0

    def rewards(self, scores, logprobs, ref_lp, mask) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(score - beta * KL, KL)`` per row; the scores themselves without a reference."""
        if ref_lp is None:
            return scores, None
        return kl_penalised_rewards(scores, logprobs, ref_lp, mask, self.config.kl_coef)

    def step(self, run: OnlineRun, step: int) -> StepOutput:
        c, k, info = self.config, self.samples_per_prompt, run.info
        fused = fused_advantages_ok(c, k) and not c.normalize_advantages
        ro = run.rollout(step, k, behaviour_logprobs=not fused)
        scores = run.score(ro)
        ref_lp = run.reference_logprobs(ro) if c.kl_coef > 0 else None
        mask = ro.response_mask
        if fused:  # each micro-batch of whole groups: its KL-penalised rewards from the update pass

            def advantages(rows, logprobs):
                refs = None if ref_lp is None else ref_lp[rows]
                return leave_one_out(self.rewards(scores[rows], logprobs, refs, mask[rows])[0], k)

            behaviour = None
        else:
            advantages = leave_one_out(self.rewards(scores, ro.logprobs, ref_lp, mask)[0], k)
            if c.normalize_advantages:  # over the whole step: every rank's rows
                advantages = global_whiten(advantages, info)
            behaviour = ro.logprobs
        lr = run.lr()
        upd = policy_gradient_update(
            run.policy,
            ro,
            advantages,
            behaviour,
            c,
            run.optimizer,
            run.scheduler,
            step,
            c.loss_aggregation,
            params=run.params,
            info=info,
        )
        rewards, kl = self.rewards(scores, upd.behaviour_logprobs, ref_lp, mask)
        metrics = {**upd.stats.metrics(), "lr": lr, "rlhf_reward": float(all_gather_rows(rewards, info).mean())}
        columns = {"reward": scores}
        if kl is not None:
            metrics["kl"] = float(all_gather_rows(kl, info).mean())
            columns["kl"] = kl
        columns["advantage"] = upd.advantages
        return StepOutput(ro, scores, metrics, columns)


def run(config: RLOOConfig) -> dict:
    return run_online(config, RLOO(config))
