"""Reward-model metrics on preference pairs, ratings and thumbs: the numbers `reward eval` reports
and `reward train` reports on its held-out split, from one place so the two cannot disagree.

Ratings (a reward model trained by regression): ``mse`` of the score against the rating mapped to
[0, 1] (the regression target), and ``spearman``, the rank correlation (ties at their average
rank). Thumbs (trained as a classifier, the score a logit): ``accuracy`` (up predicted where the
score is above 0; a score of exactly 0 counts 1/2), ``auc`` (the probability that an up-voted
response outscores a down-voted one, equal scores 1/2: the Mann-Whitney form of ROC AUC) and
``loss`` (mean binary cross entropy).

Pair metrics (overall and per subset):
- accuracy: fraction of decided pairs with r_chosen > r_rejected (an exact score tie counts 1/2);
- a binary view for precision / recall / F1: each pair is shown in a fixed-seed random order
  (first, second) and the positive class is "first is better", predicted when
  r_first > r_second; without the random order every label would be positive;
- expected calibration error (10 equal-width bins) of p = sigmoid(r_first - r_second) against
  that label (Guo et al. 2017), which is the calibration of sigmoid(r_chosen - r_rejected); its
  bins (``reliability_bins``) are the points of the reports' reliability diagram;
- mean margin r_chosen - r_rejected; for tied pairs, the mean |r_a - r_b| (lower = agrees);
- loss: the mean Bradley-Terry loss -log sigmoid(r_chosen - r_rejected) (smoother than accuracy
  on a small validation set, so the better criterion for choosing a checkpoint).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 10) -> float:
    """sum_b (n_b / N) |mean(label_b) - mean(p_b)| over equal-width bins of p in [0, 1]."""
    probs, labels = probs.double(), labels.double()
    bins = torch.clamp((probs * n_bins).long(), max=n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.double().mean().item() * abs(labels[sel].mean().item() - probs[sel].mean().item())
    return ece


def reliability_bins(probs: Sequence[float], labels: Sequence[float], n_bins: int = 10) -> list[dict]:
    """Equal-width bins of predicted probability: ``{"lo", "hi", "n", "p_mean", "acc"}`` per bin
    (``p_mean`` / ``acc`` are None for an empty bin): the points of a reliability diagram, whose
    weighted gaps ``sum n_b |acc_b - p_b| / N`` are the ECE (Guo et al. 2017)."""
    out = []
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        sel = [(p, y) for p, y in zip(probs, labels) if min(int(p * n_bins), n_bins - 1) == b]
        n = len(sel)
        out.append(
            {
                "lo": lo,
                "hi": hi,
                "n": n,
                "p_mean": sum(p for p, _ in sel) / n if n else None,
                "acc": sum(y for _, y in sel) / n if n else None,
            }
        )
    return out


def pair_metrics(
    chosen: torch.Tensor, rejected: torch.Tensor, flip: torch.Tensor, tie: torch.Tensor | None = None
) -> dict:
    """Metrics from per-pair scores. `flip[i]` True shows pair i as (rejected, chosen)."""
    tie = torch.zeros_like(flip) if tie is None else tie
    decided = ~tie
    out: dict = {"pairs": int(decided.sum()), "ties": int(tie.sum())}
    if out["ties"]:
        out["tie_mean_abs_diff"] = (chosen[tie] - rejected[tie]).abs().mean().item()
    if out["pairs"] == 0:
        return out
    c, r, f = chosen[decided].double(), rejected[decided].double(), flip[decided]
    diff = c - r
    out["accuracy"] = ((diff > 0).double() + 0.5 * (diff == 0).double()).mean().item()
    out["mean_margin"] = diff.mean().item()
    out["loss"] = -torch.nn.functional.logsigmoid(diff).mean().item()
    first = torch.where(f, r, c)
    second = torch.where(f, c, r)
    label = (~f).long()  # 1 when the first shown response is the chosen one
    p_first = torch.sigmoid(first - second)
    pred = (p_first > 0.5).long()
    tp = int(((pred == 1) & (label == 1)).sum())
    fp = int(((pred == 1) & (label == 0)).sum())
    fn = int(((pred == 0) & (label == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    out["precision"] = precision
    out["recall"] = recall
    out["f1"] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    out["ece"] = expected_calibration_error(p_first, label.double())
    return out


def mean_squared_error(predicted: list[float], target: list[float]) -> float:
    """``mean_i (predicted_i - target_i)^2``."""
    if len(predicted) != len(target) or not predicted:
        raise ValueError("mean_squared_error needs two non-empty lists of the same length")
    return sum((p - t) ** 2 for p, t in zip(predicted, target)) / len(predicted)


def average_ranks(values: list[float]) -> list[float]:
    """1-based ranks of ``values``, tied values sharing the mean of the ranks they span
    (``[10, 20, 20, 30]`` -> ``[1, 2.5, 2.5, 4]``)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def pearson(x: list[float], y: list[float]) -> float:
    """Pearson correlation; NaN when either side is constant (no correlation is defined)."""
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation: Pearson's correlation of the average ranks (so ties are
    handled, as in scipy.stats.spearmanr); NaN when either side is constant."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError("spearman needs two lists of the same length, at least 2")
    return pearson(average_ranks(x), average_ranks(y))


def threshold_accuracy(scores: list[float], labels: list[bool], threshold: float = 0.0) -> float:
    """Share of examples on the right side of ``threshold`` (up above it, down below); a score
    exactly at it counts 1/2."""
    if len(scores) != len(labels) or not scores:
        raise ValueError("threshold_accuracy needs two non-empty lists of the same length")

    def credit(score: float, label: bool) -> float:
        if score == threshold:
            return 0.5
        return 1.0 if (score > threshold) == bool(label) else 0.0

    return sum(credit(s, y) for s, y in zip(scores, labels)) / len(scores)


def roc_auc(scores: list[float], labels: list[bool]) -> float:
    """ROC AUC as the Mann-Whitney statistic: the probability that a positive's score exceeds a
    negative's, ties 1/2, computed from average ranks: ``(R_pos - n_pos (n_pos + 1) / 2) /
    (n_pos n_neg)``. NaN without both classes."""
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    if not n_pos or not n_neg:
        return float("nan")
    ranks = average_ranks(scores)
    r_pos = sum(r for r, y in zip(ranks, labels) if y)
    return (r_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def rating_metrics(scores: list[float], targets: list[float]) -> dict:
    """``{"examples", "mse", "loss", "spearman"}`` of scores against rating targets (``loss`` is the
    MSE again: the name ``best_metric: val_loss`` chooses by, as with pairs)."""
    mse = mean_squared_error(scores, targets)
    out = {"examples": len(scores), "mse": mse, "loss": mse}
    out["spearman"] = spearman(scores, targets) if len(scores) >= 2 else float("nan")
    return out


def thumbs_metrics(scores: list[float], labels: list[bool]) -> dict:
    """``{"examples", "positives", "accuracy", "auc", "loss"}`` of logits against thumbs labels."""
    logits = torch.tensor(scores, dtype=torch.float64)
    target = torch.tensor([float(y) for y in labels], dtype=torch.float64)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target).item()
    return {
        "examples": len(scores),
        "positives": int(sum(bool(y) for y in labels)),
        "accuracy": threshold_accuracy(scores, labels),
        "auc": roc_auc(scores, labels),
        "loss": loss,
    }


@torch.no_grad()
def score_texts(
    model, tokenizer, pairs_of_text: list[tuple[str, str]], max_length: int, batch_size: int
) -> torch.Tensor:
    """Reward of each (prompt, response), in the order given."""
    from rlhfkit.data.tokenize import pad_sequences, tokenize_pair
    from rlhfkit.models import reward_scores

    was_training = model.training
    model.eval()
    seqs = [tokenize_pair(p, r, tokenizer, max_length) for p, r in pairs_of_text]
    # score longest first so padding stays small, then restore the order
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    scores = torch.empty(len(seqs))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = pad_sequences([seqs[i] for i in idx], tokenizer.pad_token_id, side="right")
        device = next(model.parameters()).device
        scores[idx] = reward_scores(model, ids.to(device), mask.to(device)).float().cpu()
    model.train(was_training)
    return scores


def evaluate_pairs(model, tokenizer, pairs: list, max_length: int = 256, batch_size: int = 16, seed: int = 0) -> dict:
    """Score every pair and report metrics overall and per `subset`."""
    texts = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    scores = score_texts(model, tokenizer, texts, max_length, batch_size)
    n = len(pairs)
    chosen, rejected = scores[:n], scores[n:]
    flip = torch.rand(n, generator=torch.Generator().manual_seed(seed)) < 0.5
    tie = torch.tensor([bool(getattr(p, "tie", False)) for p in pairs], dtype=torch.bool)
    report = {"overall": pair_metrics(chosen, rejected, flip, tie), "by_subset": {}}
    subsets = sorted({p.subset for p in pairs if getattr(p, "subset", None)})
    if len(subsets) > 1:
        for name in subsets:
            sel = torch.tensor([getattr(p, "subset", None) == name for p in pairs])
            report["by_subset"][name] = pair_metrics(chosen[sel], rejected[sel], flip[sel], tie[sel])
    return report


def evaluate_ratings(
    model, tokenizer, records: list, targets: list[float], max_length: int = 256, batch_size: int = 16
) -> dict:
    """Score rating records and compare with their ``targets`` (the regression targets)."""
    scores = score_texts(model, tokenizer, [(r.prompt, r.completion) for r in records], max_length, batch_size)
    return rating_metrics(scores.tolist(), list(targets))


def evaluate_thumbs(model, tokenizer, records: list, max_length: int = 256, batch_size: int = 16) -> dict:
    """Score thumbs records and compare with their labels."""
    scores = score_texts(model, tokenizer, [(r.prompt, r.completion) for r in records], max_length, batch_size)
    return thumbs_metrics(scores.tolist(), [bool(r.label) for r in records])
