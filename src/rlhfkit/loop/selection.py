"""Which candidate pairs to send to labelers: reward-model-ensemble uncertainty, or random.

An ensemble of M reward models scores N candidate responses: ``scores [M, N]``. For a candidate
pair (a, b) member m predicts ``p_m = sigmoid(r_m(a) - r_m(b))`` (Bradley-Terry). Two
uncertainty measures, higher = more worth a label:

- ``variance`` (default): ``Var_m[p_m]`` (population variance over members), the disagreement
  of the ensemble (query-by-committee, Seung et al. 1992; the "ensemble variance" acquisition of
  Gleave & Irving 2022, "Uncertainty Estimation for Language Reward Models"). It is epistemic
  uncertainty: members that saw different bootstrap resamples disagree where the data is thin.
- ``bald``: ``H(mean_m p_m) - mean_m H(p_m)`` with ``H`` the Bernoulli entropy, the mutual
  information between the label and the ensemble member (BALD, Houlsby et al. 2011, "Bayesian
  Active Learning for Classification and Preference Learning"). Like ``variance`` it is zero when
  all members agree; it is the expected information a label gives about which member is right,
  so the label noise each member already expects (its own entropy) is discounted.
- ``margin``: ``-|mean_m p_m - 0.5|``, closest to a coin flip by the mean (uncertainty sampling,
  Lewis & Gale 1994). It also picks pairs that are genuinely close (aleatoric), which a label
  resolves less.
- ``dts``: double Thompson sampling made deterministic (Dwaracherla et al. 2024, "Efficient
  Exploration for LLMs"): each member stands for a posterior sample and names its favourite
  candidate of the prompt; a pair's score is the share of ordered pairs of distinct members
  whose favourites are exactly its two candidates (the chance that double TS would query it).
  It asks about the top of each prompt's candidates, where best-of-n and the policy's reward
  live, and only where members disagree about the best; pairs no member favours score 0.

``select_pairs`` takes the ``n`` most uncertain pairs greedily, at most ``max_per_group`` per
prompt (a batch of near-duplicates from one prompt teaches less than pairs spread over prompts;
the random baseline obeys the same cap, so only the ranking differs). Ties are broken by a seeded
random order so equal scores never favour low indices.
"""

from __future__ import annotations

import random
from typing import Sequence

import torch

METHODS = ("uncertainty", "random")
MEASURES = ("variance", "bald", "margin", "dts")
ENSEMBLE_MEASURES = ("variance", "bald", "dts")  # these need at least 2 members (disagreement)


def candidate_pairs(groups: Sequence[int], texts: Sequence[str] | None = None) -> list[tuple[int, int]]:
    """All pairs ``(a, b)``, ``a < b``, of candidates in the same group (prompt). ``groups[i]`` is
    candidate i's group; pairs of identical or empty texts are left out (nothing to judge)."""
    by_group: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    pairs = []
    for members in by_group.values():
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                a, b = members[x], members[y]
                if texts is not None and (texts[a] == texts[b] or not texts[a].strip() or not texts[b].strip()):
                    continue
                pairs.append((a, b))
    return pairs


def preference_probs(scores: torch.Tensor, pairs: Sequence[tuple[int, int]]) -> torch.Tensor:
    """``[M, N]`` member scores -> ``[M, P]`` ``sigmoid(r_m(a) - r_m(b))`` per pair."""
    if scores.dim() == 1:
        scores = scores.unsqueeze(0)
    idx = torch.as_tensor(pairs, dtype=torch.long).reshape(-1, 2)
    return torch.sigmoid(scores[:, idx[:, 0]] - scores[:, idx[:, 1]])


def bernoulli_entropy(p: torch.Tensor) -> torch.Tensor:
    """Elementwise ``-p log p - (1 - p) log(1 - p)`` in nats (0 at p = 0 or 1)."""
    return -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p))


def double_ts_probs(scores: torch.Tensor, pairs: Sequence[tuple[int, int]], groups: Sequence[int]) -> torch.Tensor:
    """``[P]``: for each pair, the share of ordered pairs (m, m') of distinct members whose
    favourite candidates of the pair's prompt (highest score among the prompt's candidates, the
    lowest index on a tie) are the pair's two candidates, in either order."""
    if scores.dim() == 1 or scores.shape[0] < 2:
        raise ValueError("dts needs an ensemble of at least 2 reward models")
    M = scores.shape[0]
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    votes = [0] * scores.shape[1]  # how many members name each candidate their prompt's favourite
    for idx in members.values():
        for b in scores[:, torch.as_tensor(idx)].argmax(dim=1).tolist():
            votes[idx[b]] += 1
    # ordered pairs (m, m') of distinct members naming a and b: votes[a] * votes[b] each way
    return torch.tensor([2 * votes[a] * votes[b] / (M * (M - 1)) for a, b in pairs], dtype=torch.float64)


def pair_uncertainty(
    scores: torch.Tensor,
    pairs: Sequence[tuple[int, int]],
    measure: str = "variance",
    groups: Sequence[int] | None = None,
) -> torch.Tensor:
    """``[P]`` uncertainty of each pair (higher = label it first); see the module docstring.
    ``groups`` (candidate -> prompt) is needed by ``dts`` only."""
    if measure == "dts":
        if groups is None:
            raise ValueError("dts needs the candidates' prompts (groups)")
        return double_ts_probs(scores.double(), pairs, groups)
    p = preference_probs(scores.double(), pairs)
    if measure == "variance":
        return p.var(dim=0, unbiased=False)
    if measure == "bald":
        return bernoulli_entropy(p.mean(dim=0)) - bernoulli_entropy(p).mean(dim=0)
    if measure == "margin":
        return -(p.mean(dim=0) - 0.5).abs()
    raise ValueError(f"uncertainty measure must be one of {list(MEASURES)}, got {measure!r}")


def select_pairs(
    pairs: Sequence[tuple[int, int]],
    n: int,
    method: str,
    seed: int,
    scores: torch.Tensor | None = None,
    groups: Sequence[int] | None = None,
    measure: str = "variance",
    max_per_group: int = 1,
) -> list[int]:
    """Indices into ``pairs`` of the ``n`` pairs to label, in selection order.

    ``method``: ``uncertainty`` (needs ``scores [M, N]``, M >= 2 for ``variance``) or ``random``.
    ``groups``: candidate -> prompt id, for the ``max_per_group`` cap (0 = no cap); when the cap
    leaves fewer than ``n`` pairs, the cap is lifted for the rest (the budget is always spent)."""
    if method not in METHODS:
        raise ValueError(f"selection must be one of {list(METHODS)}, got {method!r}")
    rng = random.Random(seed)
    order = list(range(len(pairs)))
    rng.shuffle(order)  # random order; also the tie-break of the uncertainty ranking
    if method == "uncertainty":
        if scores is None:
            raise ValueError("uncertainty selection needs the ensemble's scores")
        if measure in ENSEMBLE_MEASURES and (scores.dim() == 1 or scores.shape[0] < 2):
            raise ValueError(f"{measure} needs an ensemble of at least 2 reward models")
        u = pair_uncertainty(scores, pairs, measure, groups).tolist()
        order.sort(key=lambda i: -u[i])  # stable: equal uncertainty keeps the random order
    chosen: list[int] = []
    used: dict[int, int] = {}
    rest: list[int] = []
    for i in order:
        if len(chosen) >= n:
            break
        g = groups[pairs[i][0]] if groups is not None else None
        if max_per_group and g is not None and used.get(g, 0) >= max_per_group:
            rest.append(i)
            continue
        chosen.append(i)
        if g is not None:
            used[g] = used.get(g, 0) + 1
    for i in rest:  # the cap left the budget unspent: fill in ranking order
        if len(chosen) >= n:
            break
        chosen.append(i)
    return chosen
