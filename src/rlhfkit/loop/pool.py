"""The policy-free check of the selection itself, and the label-efficiency arithmetic.

``pool_curve``: a fixed pool of candidate pairs (no policy, no RL noise), a gold judge plus
Gaussian label noise as the labeler, and a cheap reward-model ensemble (linear Bradley-Terry on
hashed unigram + bigram counts, one member per bootstrap resample, L2-regularised, fitted by
full-batch Adam). Starting from ``start`` randomly chosen labels, each step adds ``step`` pairs
chosen by ``selection.select_pairs`` (uncertainty under the current ensemble, or random) and
records member 0's accuracy on held-out pairs ordered by the gold judge (no noise) and, when
``bon_candidates`` are given, the gold score of best-of-n with that reward model: on every
held-out prompt the candidate it scores highest, its gold score averaged over prompts (the
gold score of a policy that samples n and returns the reward model's favourite, the quantity
the issue's "reaches the gold score of random selection" is about, measured without RL noise).
The same seed gives both selections the same first labels and the same label noise per pair.

``labels_to_reach(curve, target)``: labels at which a gold-vs-labels curve first reaches
``target``, linearly interpolated between the two rounds around the crossing (None if never).
"""

from __future__ import annotations

import random
import zlib
from typing import Sequence

import torch

from rlhfkit.loop.selection import select_pairs


def bow_features(texts: Sequence[str], dim: int = 4096) -> torch.Tensor:
    """``[N, dim]`` hashed counts of lower-cased unigrams and bigrams (crc32: stable across runs)."""
    x = torch.zeros(len(texts), dim)
    for i, t in enumerate(texts):
        w = t.lower().split()
        for tok in w + [a + " " + b for a, b in zip(w, w[1:])]:
            x[i, zlib.crc32(tok.encode()) % dim] += 1.0
    return x


def fit_bow_ensemble(
    feats: torch.Tensor,
    pairs: Sequence[tuple[int, int]],
    size: int,
    seed: int,
    l2: float = 1e-2,
    steps: int = 150,
    lr: float = 0.1,
    prior_std: float = 0.0,
) -> torch.Tensor:
    """``[M, dim]`` weights; ``pairs`` are (chosen, rejected) candidate indices. Member 0 on all
    pairs, the others on bootstrap resamples (as ``loop/ensemble.py``).

    ``prior_std > 0``: anchored ensembling (Pearce et al. 2020, "Uncertainty in Neural Networks:
    Approximately Bayesian Ensembling"): member m > 0 starts at, and is L2-pulled towards, its own
    anchor ``w0 ~ N(0, prior_std^2)`` instead of 0. Without it every member's weight of a feature
    no label has touched is exactly 0, so the committee agrees on exactly the pairs it knows
    least about; with it, unseen features keep the members apart. Member 0 stays anchored at 0,
    so the ensemble's best single guess is unchanged."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.as_tensor(pairs, dtype=torch.long).reshape(-1, 2)
    diff = feats[idx[:, 0]] - feats[idx[:, 1]]
    ws = []
    for m in range(size):
        d = diff if m == 0 else diff[torch.randint(len(diff), (len(diff),), generator=g)]
        anchor = (
            torch.randn(feats.shape[1], generator=g) * prior_std
            if m > 0 and prior_std > 0
            else torch.zeros(feats.shape[1])
        )
        w = anchor.clone().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            loss = torch.nn.functional.softplus(-(d @ w)).mean() + l2 * ((w - anchor) ** 2).sum()
            loss.backward()
            opt.step()
        ws.append(w.detach())
    return torch.stack(ws)


def pool_curve(
    texts: Sequence[str],
    groups: Sequence[int],
    gold: Sequence[float],
    pool_pairs: Sequence[tuple[int, int]],
    heldout_pairs: Sequence[tuple[int, int]],
    method: str,
    start: int,
    step: int,
    n_steps: int,
    ensemble_size: int = 4,
    noise: float = 0.3,
    seed: int = 0,
    measure: str = "variance",
    prior_std: float = 0.0,
    max_per_group: int = 0,
    bon_candidates: Sequence[int] = (),
) -> list[dict]:
    """``[{"labels": n, "accuracy": a[, "bon_gold": g]}, ...]`` after ``start``, ``start + step``,
    ... labels.
    ``max_per_group``: at most this many pairs of one prompt per round (0 = no cap; both
    selections obey it, see ``select_pairs``).
    ``heldout_pairs`` are (better, worse) by gold; the accuracy is member 0's (all labels, no
    anchor), the ensemble's other members only rank the pairs to label."""
    feats = bow_features(texts)
    rng = random.Random(seed)
    # each pool pair's noisy verdict is fixed in advance: both selections see the same labeler
    verdict = [gold[a] + rng.gauss(0, noise) >= gold[b] + rng.gauss(0, noise) for a, b in pool_pairs]
    labelled: list[int] = select_pairs(pool_pairs, start, "random", seed=seed, groups=groups, max_per_group=0)
    curve = []
    hi = torch.as_tensor(heldout_pairs, dtype=torch.long).reshape(-1, 2)
    by_prompt: dict[int, list[int]] = {}
    for i in bon_candidates:
        by_prompt.setdefault(groups[i], []).append(i)
    bon_groups = list(by_prompt.values())
    for s in range(n_steps + 1):
        chosen = [pool_pairs[i] if verdict[i] else pool_pairs[i][::-1] for i in labelled]
        w = fit_bow_ensemble(feats, chosen, ensemble_size, seed=seed * 1000 + s, prior_std=prior_std)
        scores = w @ feats.T  # [M, N]
        best = scores[0]
        acc = float((best[hi[:, 0]] > best[hi[:, 1]]).float().mean())
        point = {"labels": len(labelled), "accuracy": acc}
        if bon_groups:
            point["bon_gold"] = best_of_n_gold(best, gold, bon_groups)
        curve.append(point)
        if s == n_steps:
            break
        taken = set(labelled)
        rest = [i for i in range(len(pool_pairs)) if i not in taken]
        pick = select_pairs(
            [pool_pairs[i] for i in rest],
            step,
            method,
            seed=seed * 1000 + s,
            scores=scores,
            groups=groups,
            measure=measure,
            max_per_group=max_per_group,
        )
        labelled += [rest[i] for i in pick]
    return curve


def best_of_n_gold(scores: torch.Tensor, gold: Sequence[float], groups: Sequence[Sequence[int]]) -> float:
    """Mean over ``groups`` (each a prompt's candidate indices) of the gold score of the candidate
    with the highest ``scores`` (``[N]``); a tie in score goes to the first candidate listed."""
    picks = [g[int(torch.argmax(scores[torch.as_tensor(g)]))] for g in groups]
    return sum(gold[i] for i in picks) / len(picks)


def labels_to_reach(curve: Sequence[dict], target: float, key: str = "gold") -> float | None:
    """Labels at which ``curve`` (points with ``labels`` and ``key``, in label order) first
    reaches ``target``: linear interpolation between the last point below and the first at or
    above it; the first point itself if it already does; None if no point does."""
    prev = None
    for p in curve:
        if p[key] >= target:
            if prev is None or p[key] == prev[key]:
                return float(p["labels"])
            f = (target - prev[key]) / (p[key] - prev[key])
            return float(prev["labels"] + f * (p["labels"] - prev["labels"]))
        prev = p
    return None
