"""PPO for language models (Ziegler et al. 2019; Ouyang et al. 2022), with every item of the
PPO checklist, docs/PPO_CHECKLIST.md (after "The N Implementation Details of RLHF with PPO", 2023).

    rlhfkit ppo --model smollm2-135m --reward rm:outputs/rm/model --output_dir outputs/ppo

Roles: policy (trained), reference (frozen copy, or the policy with its LoRA adapter off),
value model (backbone of the policy, zero-initialised head, or a given sequence classifier),
reward (any rewards/ source: a reward model, a function, judges).
Per step (the loop around it is ``online_driver.run_online``'s): roll out -> score (missing-EOS
penalty, normalisation) -> per-token KL penalty with the score on the last token -> GAE -> whitened
advantages -> ppo_epochs over shuffled minibatches of clipped policy + value loss -> KL controller.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from rlhfkit.core import (
    apply_missing_eos_penalty,
    gae,
    kl_controller,
    masked_mean,
    per_token_rewards,
    ppo_policy_loss,
    ppo_value_loss,
)
from rlhfkit.recipes.online_driver import OnlineRun, StepOutput, run_online
from rlhfkit.recipes.ppo_config import PPOConfig, load_value_model
from rlhfkit.recipes.policy_gradient import micro_slices, train_epochs
from rlhfkit.rewards import RunningNormaliser
from rlhfkit.rollout import Rollout, response_logprobs, response_values
from rlhfkit.training.distributed import DistInfo, all_gather_rows, all_reduce_sum
from rlhfkit.training.stats import explained_variance, global_masked_whiten


@dataclass(frozen=True)
class PPOStats:
    """Means over an update's optimiser steps (and over all ranks) of what it measured."""

    pg_loss: float
    value_loss: float
    clipfrac: float
    approx_kl: float
    approx_kl_k3: float
    ratio_mean: float
    vf_clipfrac: float
    entropy: float
    grad_norm: float


@dataclass(frozen=True)
class PPOUpdate:
    stats: PPOStats
    kl: torch.Tensor  # [B, R] the per-token KL estimate in the reward
    old_values: torch.Tensor  # [B, R]
    returns: torch.Tensor  # [B, R]


def ppo_update(
    config: PPOConfig,
    modules: torch.nn.ModuleDict,
    ro: Rollout,
    scores: torch.Tensor,
    ref_logprobs: torch.Tensor,
    kl_coef: float,
    optimizer,
    scheduler,
    params: list,
    step: int,
    info: DistInfo,
) -> PPOUpdate:
    """Steps 3-5 on a rollout (this rank's share of it): old values, per-token rewards, GAE, advantages
    whitened over every rank's valid tokens, then ``train_epochs`` of the clipped policy + value loss
    (normalised by the whole minibatch's tokens, gradients summed over ranks)."""
    policy, value_model = modules["policy"], modules["value"]
    mask, mb = ro.response_mask, config.micro_batch_size
    with torch.no_grad():  # 3. old values
        old_values = torch.cat(
            [response_values(value_model, ro, torch.arange(len(ro))[s]) for s in micro_slices(len(ro), mb)]
        )
    # 4. per-token -beta*KL, score on the last, GAE: docs/PPO_CHECKLIST.md #7 (per-token KL penalty), #9 (GAE)
    rewards, kl = per_token_rewards(scores, ro.logprobs, ref_logprobs, mask, kl_coef, config.kl_estimator)
    if config.whiten_rewards:
        rewards = global_masked_whiten(rewards, mask, info, shift_mean=False)
    advantages, returns = gae(rewards, old_values, mask, config.gamma, config.lam)
    advantages = global_masked_whiten(advantages, mask, info, shift_mean=True)  # over valid tokens only

    # 5. ppo_epochs, shuffled minibatches, micro-batches: docs/PPO_CHECKLIST.md #10 (clipped losses over minibatches)
    def minibatch_loss(rows: torch.Tensor):
        n_tokens = all_reduce_sum(mask[rows].sum(), info).clamp(min=1).float()  # every rank's share of it

        def micro_loss(r: torch.Tensor, s: slice):
            m = mask[r]
            logp, ent = response_logprobs(
                policy,
                ro.prompt_ids[r],
                ro.prompt_mask[r],
                ro.response_ids[r],
                m,
                config.temperature,
                with_entropy=True,
            )
            values = response_values(value_model, ro, r)
            pg_loss, pst = ppo_policy_loss(logp, ro.logprobs[r], advantages[r], m, config.clip_eps, n_tokens)
            vf_loss, vst = ppo_value_loss(values, old_values[r], returns[r], m, config.cliprange_value, n_tokens)
            share = float(m.sum()) / float(n_tokens)
            stats = {"pg_loss": float(pg_loss.detach()), "value_loss": float(vf_loss.detach())}
            for key, val in (*pst.items(), *vst.items(), ("entropy", masked_mean(ent, m) if m.any() else 0.0)):
                stats[key] = float(val) * share
            return pg_loss + config.vf_coef * vf_loss, stats

        return micro_loss

    modules.train()
    stats = PPOStats(**train_epochs(config, len(ro), step, minibatch_loss, params, optimizer, scheduler, info))
    modules.eval()
    return PPOUpdate(stats, kl, old_values, returns)


class PPO:
    """PPO's step, KL controller and reward normaliser (``online_driver.run_online`` runs them)."""

    name = "ppo"
    samples_per_prompt = 1
    need_reference = True
    progress = {"reward": ".3f", "kl": ".2f"}

    def __init__(self, config: PPOConfig):
        self.config = config
        self.kl_ctl = kl_controller(config.kl_control, config.kl_coef, config.kl_target, config.kl_horizon)
        self.normaliser = RunningNormaliser()

    def trained_modules(self, tokenizer) -> dict:
        return {"value": load_value_model(self.config, tokenizer)}

    def start(self, run: OnlineRun, trainer_state: dict) -> None:
        c = self.config
        if trainer_state:
            self.kl_ctl.load_state_dict(trainer_state["kl_controller"])
            self.normaliser.load_state_dict(trainer_state["reward_normaliser"])
        elif c.reward_norm == "reference":  # docs/PPO_CHECKLIST.md #6 (reward normalisation)
            scores = [
                all_gather_rows(run.score(run.rollout(b, order_seed=c.seed + 1, salt=7)), run.info)
                for b in range(c.reward_norm_batches)
            ]  # on every rank's responses: the same fit on all
            self.normaliser = RunningNormaliser().fit(torch.cat(scores))

    def checkpoint_state(self) -> dict:
        return {"kl_controller": self.kl_ctl.state_dict(), "reward_normaliser": self.normaliser.state_dict()}

    def step(self, run: OnlineRun, step: int) -> StepOutput:
        c, info = self.config, run.info
        # 1. rollout (left-padded prompts, responses cut after EOS, behaviour log-probs)
        ro = run.rollout(step)
        # 2. score: missing-EOS penalty, then normalisation (docs/PPO_CHECKLIST.md #6 (reward normalisation))
        raw_scores = scores = run.score(ro)
        if c.missing_eos_penalty:
            scores = apply_missing_eos_penalty(scores, ro.has_eos, c.missing_eos_penalty)
        if c.reward_norm == "reference":
            scores = self.normaliser.normalise(scores, update=False)
        elif c.reward_norm == "running":  # the statistics take in the whole step's scores first
            self.normaliser.update(all_gather_rows(scores, info))
            scores = self.normaliser.normalise(scores, update=False)
        # 3-5. reference log-probs, values, per-token rewards, GAE, whitened advantages, the update
        ref_lp = run.reference_logprobs(ro)
        lr = run.lr()
        upd = ppo_update(
            c, run.modules, ro, scores, ref_lp, self.kl_ctl.value, run.optimizer, run.scheduler, run.params, step, info
        )
        # 6. KL controller, metrics (docs/PPO_CHECKLIST.md #12 (debug metrics)), samples
        seq_kl = upd.kl.sum(1)
        all_kl = all_gather_rows(seq_kl, info)
        kl_coef_used = self.kl_ctl.value
        non_score = all_gather_rows((-kl_coef_used * upd.kl).sum(1), info)
        self.kl_ctl.update(all_kl.mean(), len(all_kl))
        metrics = {
            **asdict(upd.stats),
            "kl": float(all_kl.mean()),
            "kl_coef": kl_coef_used,
            "non_score_reward": float(non_score.mean()),
            "score_normalised": float(all_gather_rows(scores, info).mean()),
            "explained_variance": explained_variance(upd.old_values, upd.returns, ro.response_mask, info),
            "lr": lr,
        }
        return StepOutput(ro, raw_scores, metrics, {"reward": raw_scores, "kl": seq_kl})


def run(config: PPOConfig) -> dict:
    return run_online(config, PPO(config))
