"""The linear probe that starts reward-model fine-tuning (LP-FT): the freshly initialised scalar
head fitted alone on the frozen backbone's features, so that fine-tuning starts from a head that
already ranks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from rlhfkit.core.losses import binary_feedback_loss, bradley_terry_loss, rating_regression_loss, weighted_sum
from rlhfkit.models import reward_scores
from rlhfkit.models.reward import last_real_index, score_head
from rlhfkit.recipes.reward_data import count_examples
from rlhfkit.core.precision import running_at

if TYPE_CHECKING:
    from rlhfkit.recipes.reward import RewardConfig


@torch.no_grad()
def head_features(model, batches) -> torch.Tensor:
    """The inputs of the scalar head ``[N, d]`` for every row of ``batches`` (collated), in order."""
    seen: list[torch.Tensor] = []
    hook = score_head(model).register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().float()))
    out = []
    try:
        for b in batches:
            seen.clear()
            reward_scores(model, b["input_ids"], b["attention_mask"])
            x = seen[0]
            if x.dim() == 3:  # a causal backbone's head runs on every position; it is read at the last real token
                x = x[torch.arange(x.shape[0]), last_real_index(b["attention_mask"])]
            out.append(x)
    finally:
        hook.remove()
    return torch.cat(out)


def linear_probe(model, train: list[dict], collate, config: "RewardConfig") -> dict:
    """LP-FT (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features and Underperform
    Out-of-Distribution"): fit the freshly initialised head alone on the frozen backbone's
    features with the training objective plus ``linear_probe_l2 * |w|^2`` (full batch, L-BFGS),
    so that fine-tuning starts from a head that already ranks, instead of a random one whose
    large early gradients reshape the backbone's features. Deterministic (no RNG)."""
    head = score_head(model)
    was_training = model.training
    model.eval()
    batches = [collate(train[i : i + 32]) for i in range(0, len(train), 32)]
    with running_at(model, config.precision):  # the backbone's features, as training computes them;
        feats = head_features(model, batches)  # the probe's own fit stays float32
    model.train(was_training)
    weights = None
    if any("weight" in b for b in batches):
        weights = torch.cat(
            [b["weight"] if "weight" in b else torch.ones(count_examples(b), dtype=torch.float64) for b in batches]
        ).float()

    def mean(losses: torch.Tensor) -> torch.Tensor:  # the (weighted) mean, as training takes it
        return losses.mean() if weights is None else weighted_sum(losses, weights) / weights.sum().clamp(min=1e-12)

    if config.objective == "pairwise":
        n = [int(b["tie"].numel()) for b in batches]
        chosen = torch.cat([f[:k] for f, k in zip(feats.split([2 * k for k in n]), n)])
        rejected = torch.cat([f[k:] for f, k in zip(feats.split([2 * k for k in n]), n)])
        margin = torch.cat([b["margin"] for b in batches]).float()
        tie = torch.cat([b["tie"] for b in batches])
    else:
        target = torch.cat([b["target"] for b in batches]).float()
    w = head.weight.detach().float().clone().reshape(-1).requires_grad_(True)
    # a head without a bias (causal backbones' score layer) gets none in the probe either: a fitted
    # bias that could not be copied back would leave the fine-tuning start off by it
    has_bias = head.bias is not None
    b0 = head.bias.detach().float().clone().reshape(-1).requires_grad_(True) if has_bias else torch.zeros(1)

    def objective() -> torch.Tensor:
        if config.objective == "pairwise":
            rc, rr = chosen @ w + b0, rejected @ w + b0
            loss = mean(
                bradley_terry_loss(rc, rr, margin=margin if bool(margin.any()) else None, tie=tie, reduction="none")
            )
        elif config.objective == "regression":
            loss = mean(rating_regression_loss(feats @ w + b0, target, reduction="none"))
        else:
            loss = mean(binary_feedback_loss(feats @ w + b0, target, reduction="none"))
        return loss + config.linear_probe_l2 * (w**2).sum()

    opt = torch.optim.LBFGS(
        [w, b0] if has_bias else [w], lr=1.0, max_iter=config.linear_probe_steps, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    before = float(objective().detach())
    opt.step(closure)
    after = float(objective().detach())
    with torch.no_grad():
        head.weight.copy_(w.view_as(head.weight).to(head.weight.dtype))
        if has_bias:
            head.bias.copy_(b0.view_as(head.bias).to(head.bias.dtype))
    stats = {"probe_loss_before": before, "probe_loss_after": after}
    if config.objective == "pairwise":
        with torch.no_grad():
            decided = ~tie
            stats["probe_train_accuracy"] = float(
                ((chosen @ w > rejected @ w) & decided).sum() / decided.sum().clamp(min=1)
            )
    return stats
