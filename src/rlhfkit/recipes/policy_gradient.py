"""The clipped policy-gradient update of GRPO, RLOO and REINFORCE, and the batch schedule every
online update (PPO's too) walks: epochs over shuffled minibatches, micro-batches within each.

``policy_gradient_update`` trains the policy on one rollout and returns what it computed
(``UpdateResult``: typed statistics, the behaviour log-probs its ratios were taken against and
the advantages it used); it never writes into the rollout. With one update per rollout
(``single_update``) the log-probs of the update's own forward pass, taken before the step, are
the behaviour log-probs: the rollout then needs no separate behaviour pass (TRL's GRPO with
``num_iterations=1``), and advantages that depend on those log-probs (RLOO's KL in the reward) are
a pure function ``(rows, logprobs) -> advantages`` evaluated per micro-batch of whole groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import torch

from rlhfkit.core.kl import kl_k3
from rlhfkit.core.losses import ppo_policy_loss, token_weights
from rlhfkit.core.masking import masked_mean
from rlhfkit.recipes.online_config import OnlineConfig
from rlhfkit.rollout import Rollout, response_logprobs, step_seed
from rlhfkit.training.distributed import DistInfo, all_reduce_gradients, all_reduce_sum

# advantages per row [B] or token [B, R]; or a function of (rows, the update pass's detached
# log-probs of those rows) giving one advantage per row, for advantages that need them
Advantages = Union[torch.Tensor, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
# a learned baseline's loss on (rows, minibatch size): (its weighted loss, its value loss to log)
ValueLoss = Callable[[torch.Tensor, int], "tuple[torch.Tensor, float]"]


# ---------------------------------------------------------------------------- batch schedule
def single_update(config: OnlineConfig) -> bool:
    """One optimiser step per rollout: the log-probs of the update's own forward pass, taken
    before the step, are the behaviour log-probs, so no separate pass is needed for them."""
    return config.ppo_epochs == 1 and config.num_minibatches == 1


def fused_advantages_ok(config: OnlineConfig, group_size: int) -> bool:
    """Whether per-group advantages that need the behaviour log-probs (RLOO's KL in the reward)
    can be computed inside the update pass, saving the separate behaviour forward: one update
    per rollout (``single_update``: the update pass's log-probs ARE the behaviour ones) and
    micro-batches of whole groups (rows are not shuffled then, and the batch is a multiple of
    the group)."""
    return single_update(config) and config.micro_batch_size % group_size == 0


def minibatches(n: int, config: OnlineConfig, step: int, epoch: int) -> list[torch.Tensor]:
    """Shuffled minibatch row indices for one epoch over a step's batch, seeded by (seed, step,
    epoch) so resume reproduces them (epochs over shuffled minibatches: docs/PPO_CHECKLIST.md #10
    (clipped losses over minibatches))."""
    g = torch.Generator().manual_seed(step_seed(config.seed, step, salt=1000 + epoch))
    order = torch.randperm(n, generator=g) if (config.ppo_epochs > 1 or config.num_minibatches > 1) else torch.arange(n)
    return list(order.chunk(config.num_minibatches))


def micro_slices(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


# ---------------------------------------------------------------------------- the update
@dataclass(frozen=True)
class PolicyGradientStats:
    """Means over an update's optimiser steps (and over all ranks) of what it measured."""

    loss: float
    clipfrac: float
    approx_kl: float
    ratio_mean: float
    entropy: float
    grad_norm: float
    kl_loss_term: float | None = None  # the k3 KL term of the loss (GRPO), when in it
    value_loss: float | None = None  # a learned baseline's (REINFORCE), when trained alongside

    def metrics(self) -> dict[str, float]:
        """The logged statistics, in the order metrics.jsonl has always shown them."""
        optional = {"kl_loss_term": self.kl_loss_term, "value_loss": self.value_loss}
        return {
            **{k: v for k, v in optional.items() if v is not None},
            "loss": self.loss,
            "clipfrac": self.clipfrac,
            "approx_kl": self.approx_kl,
            "ratio_mean": self.ratio_mean,
            "entropy": self.entropy,
            "grad_norm": self.grad_norm,
        }


@dataclass(frozen=True)
class UpdateResult:
    stats: PolicyGradientStats
    behaviour_logprobs: torch.Tensor  # [B, R]: those given, or the update pass's (before its step)
    advantages: torch.Tensor  # [B] or [B, R]: those given, or the function's values [B]


def _add(sums: dict, key: str, value: float) -> None:
    sums[key] = sums.get(key, 0.0) + value


def mean_over_updates(sums: dict[str, float], n_updates: int, info: DistInfo | None) -> dict[str, float]:
    """Each statistic's sum over this rank's share of the minibatches, summed over ranks (the
    gradient norm is the same on every rank: taken once), divided by the optimiser steps."""
    if info is not None and info.enabled:
        keys = sorted(k for k in sums if k != "grad_norm")
        total = all_reduce_sum(torch.tensor([sums[k] for k in keys], dtype=torch.float64), info)
        sums = {**sums, **{k: float(v) for k, v in zip(keys, total)}}
    return {k: v / n_updates for k, v in sums.items()}


# the loss of one micro-batch (its rows of the step, its slice of the minibatch): (loss, statistics to add up)
MicroLoss = Callable[[torch.Tensor, slice], "tuple[torch.Tensor, dict[str, float]]"]


def train_epochs(
    config: OnlineConfig,
    n: int,
    step: int,
    minibatch_loss: Callable[[torch.Tensor], MicroLoss],
    params: list,
    optimizer,
    scheduler,
    info: DistInfo | None,
) -> dict[str, float]:
    """``ppo_epochs`` passes over a step's ``n`` rows in shuffled minibatches (``minibatches``), one
    optimiser step each: ``minibatch_loss(rows)`` gives the loss of each micro-batch of the
    minibatch's rows (``micro_batch_size`` at a time, gradients accumulated), normalised by the
    whole minibatch's counts; the gradients are summed over ranks, clipped to ``max_grad_norm``,
    and the schedule steps once per update. Returns each statistic's mean over the updates and
    ranks, with ``grad_norm``."""
    sums: dict[str, float] = {}
    n_updates = 0
    for epoch in range(config.ppo_epochs):
        for rows in minibatches(n, config, step, epoch):
            micro_loss = minibatch_loss(rows)
            for s in micro_slices(len(rows), config.micro_batch_size):
                loss, stats = micro_loss(rows[s], s)
                loss.backward()
                for k, v in stats.items():
                    _add(sums, k, v)
            if info is not None and info.enabled:  # the ranks' shares of the loss add up to the minibatch's
                all_reduce_gradients(params, info)
            gn = (
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                if config.max_grad_norm > 0
                else torch.tensor(0.0)
            )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            _add(sums, "grad_norm", float(gn))
            n_updates += 1
    return mean_over_updates(sums, n_updates, info)


def policy_gradient_update(
    policy,
    ro: Rollout,
    advantages: Advantages,
    behaviour_logprobs: torch.Tensor | None,
    config: OnlineConfig,
    optimizer,
    scheduler,
    step: int,
    aggregation: str,
    *,
    params: list,
    ref_logprobs: torch.Tensor | None = None,
    kl_loss_coef: float = 0.0,
    value_loss: ValueLoss | None = None,
    info: DistInfo | None = None,
) -> UpdateResult:
    """Clipped policy-gradient update on one rollout (GRPO / RLOO / REINFORCE).

    The per-token loss is the clipped surrogate (core ``ppo_policy_loss``; with one epoch and one
    minibatch the ratio is 1 and it is plain REINFORCE) plus ``kl_loss_coef * k3(logp, ref)`` when
    ``kl_loss_coef > 0`` (GRPO's KL term in the loss), tokens weighted by
    ``core.losses.token_weights(aggregation)`` over each minibatch; ``value_loss(rows,
    minibatch_size)`` adds a learned baseline's term per micro-batch. ``behaviour_logprobs``:
    ``[B, R]``, or None to take each micro-batch's detached log-probs from the update pass
    itself (only with ``single_update``); ``advantages`` may then be a function of them (see
    ``Advantages``). ``params``: the trained parameters (their gradients are clipped, and
    summed over ranks).

    Several processes (``info``): each holds its share of the step's rows and takes the same
    local minibatch positions (the same shuffle seed on every rank); token weights use the
    global minibatch's counts and the gradients are summed over ranks before clipping, so the
    update is the global minibatch's, and every rank makes the same one."""
    from_update_pass = behaviour_logprobs is None
    if from_update_pass and not single_update(config):
        raise ValueError("behaviour log-probs can come from the update pass only with one epoch and one minibatch")
    if callable(advantages) and not from_update_pass:
        raise ValueError("advantages computed from the update pass need the behaviour log-probs from it too")
    behaviour = torch.zeros_like(ro.logprobs) if from_update_pass else behaviour_logprobs
    adv_tok = (
        None
        if callable(advantages)
        else (advantages.unsqueeze(1).expand_as(ro.logprobs) if advantages.dim() == 1 else advantages)
    )
    pieces = []  # (rows, values) of an advantage function

    def minibatch_loss(rows: torch.Tensor) -> MicroLoss:
        counts = all_reduce_sum(torch.tensor([float(len(rows)), float(ro.response_mask[rows].sum())]), info)
        n_seq, n_tok = int(counts[0]), float(counts[1])
        weights = token_weights(
            ro.response_mask[rows], aggregation, config.max_new_tokens, n_sequences=n_seq, n_tokens=n_tok
        )

        def micro_loss(r: torch.Tensor, s: slice):
            m, w = ro.response_mask[r], weights[s]
            logp, ent = response_logprobs(
                policy,
                ro.prompt_ids[r],
                ro.prompt_mask[r],
                ro.response_ids[r],
                m,
                config.temperature,
                with_entropy=True,
            )
            if from_update_pass:
                behaviour[r] = logp.detach()
            if adv_tok is not None:
                adv_r = adv_tok[r]
            else:
                pieces.append((r, advantages(r, logp.detach())))
                adv_r = pieces[-1][1].unsqueeze(1).expand_as(logp)
            # core ppo_policy_loss with normaliser 1 sums max(-A r, -A clip(r)) over the mask;
            # scaling A by the positive token weight scales each term by it.
            loss, st = ppo_policy_loss(logp, behaviour[r], adv_r * w, m, config.clip_eps, normaliser=1.0)
            stats = {}
            if kl_loss_coef > 0 and ref_logprobs is not None:
                kl = torch.where(m, kl_k3(logp, ref_logprobs[r]) * w, torch.zeros_like(logp)).sum()
                loss = loss + kl_loss_coef * kl
                stats["kl_loss_term"] = float(kl.detach())
            if value_loss is not None:
                extra, logged = value_loss(r, n_seq)
                loss = loss + extra
                stats["value_loss"] = float(logged)
            share = float(m.sum()) / max(n_tok, 1.0)  # token share of the (global) minibatch
            stats["loss"] = float(loss.detach())
            stats.update({k: float(st[k]) * share for k in ("clipfrac", "approx_kl", "ratio_mean")})
            stats["entropy"] = float(masked_mean(ent, m)) * share if m.any() else 0.0
            return loss, stats

        return micro_loss

    policy.train()
    stats = PolicyGradientStats(
        **train_epochs(config, len(ro), step, minibatch_loss, params, optimizer, scheduler, info)
    )
    policy.eval()
    return UpdateResult(stats, behaviour, advantages if adv_tok is not None else _by_row(pieces, len(ro)))


def _by_row(parts: list, n: int) -> torch.Tensor:
    """``[n]`` from ``(rows, values)`` pieces that cover every row."""
    out = parts[0][1].new_zeros(n)
    for rows, values in parts:
        out[rows] = values
    return out
