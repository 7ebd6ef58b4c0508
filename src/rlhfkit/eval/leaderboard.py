"""A Bradley-Terry leaderboard with bootstrap 95% intervals: the Chatbot Arena method.

Pure functions (numpy only, no I/O). A *battle* is ``(model_a, model_b, outcome)`` with outcome
1 (a won), 0 (b won) or 0.5 (tie). The Bradley-Terry model says

    P(a beats b) = sigmoid(beta_a - beta_b) = 1 / (1 + base ** ((R_b - R_a) / scale)),

with ratings on an Elo-like scale ``R = init + scale / ln(base) * beta`` (scale 400, base 10,
init 1000, as in the Chatbot Arena notebook, Chiang et al. 2024). ``fit_bradley_terry`` is that
notebook's logistic regression (features +1 for a, -1 for b, a tiny L2 penalty ``l2`` standing in
for sklearn's ``C=1e6``), solved here by Newton's method on the K x K win-count matrix (the
log-likelihood depends on the battles only through those counts). Ties count half a win for
each side (the notebook duplicates a tie as one win each, which has the same maximiser).

``bootstrap_bradley_terry`` resamples the battles with replacement ``n_boot`` times (drawn as one
multinomial over the distinct (a, b, outcome) cells, which is the same distribution as resampling
rows) and refits: the 2.5 / 97.5 percentiles of each model's rating are its 95% interval. Battles
that come in clusters carry a fourth element, the cluster (``(a, b, outcome, prompt)``): the
K(K-1)/2 battles that judge scores make of one prompt, or several people's verdicts on one item,
are not independent, so then whole clusters are resampled (a cluster bootstrap; resampling their
battles one by one gives intervals too narrow).

Ratings are anchored so that their mean is ``init`` or, with ``anchor=NAME``, so that that model
sits at ``init`` (e.g. the reference policy at 1000).
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "Battle",
    "normalise_battles",
    "win_matrix",
    "fit_bradley_terry",
    "bootstrap_bradley_terry",
    "leaderboard",
    "format_leaderboard",
    "battles_from_scores",
    "battle_clusters",
    "expected_win_probability",
    "SCALE",
    "BASE",
    "INIT",
]

SCALE, BASE, INIT = 400.0, 10.0, 1000.0
Battle = tuple  # (model_a: str, model_b: str, outcome: float in {1, 0.5, 0})

_OUTCOMES = {"a": 1.0, "model_a": 1.0, "b": 0.0, "model_b": 0.0, "tie": 0.5, "tie (bothbad)": 0.5}


def _outcome(v) -> float:
    if isinstance(v, str):
        if v.lower() not in _OUTCOMES:
            raise ValueError(f"outcome must be 'a', 'b', 'tie' or 1 / 0.5 / 0, got {v!r}")
        return _OUTCOMES[v.lower()]
    y = float(v)
    if y not in (0.0, 0.5, 1.0):
        raise ValueError(f"outcome must be 1 (a won), 0 (b won) or 0.5 (tie), got {v!r}")
    return y


def normalise_battles(battles: Iterable[Sequence]) -> list[tuple[str, str, float]]:
    """``[(a, b, outcome)]`` with outcome as a float (a fourth element, the cluster, is dropped);
    rejects self-battles and bad outcomes."""
    out = []
    for i, bt in enumerate(battles):
        if len(bt) not in (3, 4):
            raise ValueError(f"battle {i}: expected (model_a, model_b, outcome[, cluster]), got {bt!r}")
        a, b, y = bt[:3]
        if a == b:
            raise ValueError(f"battle {i}: a model cannot battle itself ({a!r})")
        out.append((str(a), str(b), _outcome(y)))
    return out


def expected_win_probability(r_a: float, r_b: float, scale: float = SCALE, base: float = BASE) -> float:
    """P(a beats b) for ratings ``r_a``, ``r_b`` on the Elo-like scale."""
    return 1.0 / (1.0 + base ** ((r_b - r_a) / scale))


def win_matrix(battles: Sequence[tuple[str, str, float]], models: Sequence[str]) -> np.ndarray:
    """``W[i, j]`` = wins of model i over model j (a tie adds 1/2 to both)."""
    idx = {m: k for k, m in enumerate(models)}
    W = np.zeros((len(models), len(models)))
    for a, b, y in battles:
        W[idx[a], idx[b]] += y
        W[idx[b], idx[a]] += 1.0 - y
    return W


def _models_of(battles, models) -> list[str]:
    if models is not None:
        return list(models)
    seen: dict[str, None] = {}
    for a, b, _ in battles:
        seen.setdefault(a)
        seen.setdefault(b)
    return list(seen)


def _fit_beta(W: np.ndarray, l2: float, max_iter: int = 100, tol: float = 1e-10) -> np.ndarray:
    """Maximiser of sum_ij W_ij log sigmoid(b_i - b_j) - l2/2 |b|^2 (Newton, backtracking)."""
    K = W.shape[0]
    N = W + W.T  # battles between i and j
    b = np.zeros(K)

    def loss(beta):
        d = beta[:, None] - beta[None, :]
        return float(np.sum(W * np.logaddexp(0.0, -d)) + 0.5 * l2 * beta @ beta)

    f = loss(b)
    for _ in range(max_iter):
        d = b[:, None] - b[None, :]
        p = 1.0 / (1.0 + np.exp(-d))  # p_ij = P(i beats j)
        g = np.sum(N * p - W, axis=1) + l2 * b
        if np.max(np.abs(g)) < tol:
            break
        v = N * p * (1.0 - p)
        H = -v
        np.fill_diagonal(H, v.sum(axis=1) - np.diag(v) + l2)
        step = np.linalg.solve(H, g)
        t = 1.0
        while True:
            nb = b - t * step
            nf = loss(nb)
            if nf <= f + 1e-12 or t < 1e-8:
                break
            t *= 0.5
        b, f_old, f = nb, f, nf
        if abs(f_old - f) < tol * max(1.0, abs(f)) and np.max(np.abs(t * step)) < 1e-9:
            break
    return b


def _to_ratings(
    beta: np.ndarray, models: Sequence[str], anchor: str | None, scale: float, base: float, init: float
) -> np.ndarray:
    r = scale / math.log(base) * beta
    if anchor is not None:
        if anchor not in models:
            raise ValueError(f"anchor {anchor!r} is not one of the models {list(models)}")
        r = r - r[list(models).index(anchor)]
    else:
        r = r - r.mean()
    return init + r


def fit_bradley_terry(
    battles: Iterable[Sequence],
    models: Sequence[str] | None = None,
    *,
    scale: float = SCALE,
    base: float = BASE,
    init: float = INIT,
    anchor: str | None = None,
    l2: float = 1e-6,
) -> dict[str, float]:
    """Bradley-Terry ratings ``{model: rating}`` (maximum likelihood with an ``l2`` ridge that only
    matters when a model won or lost everything) on the Elo-like scale (see the module doc)."""
    battles = normalise_battles(battles)
    models = _models_of(battles, models)
    if len(models) < 2:
        raise ValueError("a leaderboard needs battles between at least two models")
    beta = _fit_beta(win_matrix(battles, models), l2)
    return dict(zip(models, _to_ratings(beta, models, anchor, scale, base, init).tolist()))


def battle_clusters(battles: Sequence[Sequence]) -> list | None:
    """The fourth elements when every battle has one (its cluster), else None."""
    return [bt[3] for bt in battles] if battles and all(len(bt) == 4 for bt in battles) else None


def bootstrap_bradley_terry(
    battles: Iterable[Sequence],
    models: Sequence[str] | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    scale: float = SCALE,
    base: float = BASE,
    init: float = INIT,
    anchor: str | None = None,
    l2: float = 1e-6,
) -> dict:
    """The fit on all battles plus percentile intervals from ``n_boot`` resamples of the battles
    (of whole clusters when the battles carry one):
    ``{"models", "rating": {m: r}, "ci_low": {m: lo}, "ci_high": {m: hi}, "samples": array
    [n_boot, K], "n_battles", "n_clusters"}``. Deterministic given ``seed``."""
    raw = list(battles)
    clusters = battle_clusters(raw)
    battles = normalise_battles(raw)
    models = _models_of(battles, models)
    kw = dict(scale=scale, base=base, init=init, anchor=anchor)
    rating = fit_bradley_terry(battles, models, l2=l2, **kw)
    idx = {m: k for k, m in enumerate(models)}
    if clusters is not None:
        return _cluster_bootstrap(battles, clusters, models, idx, rating, n_boot, seed, confidence, l2, kw)
    cells: dict[tuple[int, int, float], int] = {}
    for a, b, y in battles:
        key = (idx[a], idx[b], y)
        cells[key] = cells.get(key, 0) + 1
    keys = list(cells)
    counts = np.array([cells[k] for k in keys], dtype=float)
    n = int(counts.sum())
    rng = np.random.default_rng(seed)
    K = len(models)
    samples = np.empty((n_boot, K))
    for s in range(n_boot):
        draw = rng.multinomial(n, counts / n)
        W = np.zeros((K, K))
        for (i, j, y), c in zip(keys, draw):
            if c:
                W[i, j] += c * y
                W[j, i] += c * (1.0 - y)
        samples[s] = _to_ratings(_fit_beta(W, l2), models, anchor, scale, base, init)
    alpha = (1.0 - confidence) / 2
    lo = np.quantile(samples, alpha, axis=0) if n_boot else np.full(K, np.nan)
    hi = np.quantile(samples, 1 - alpha, axis=0) if n_boot else np.full(K, np.nan)
    return {
        "models": models,
        "rating": rating,
        "ci_low": dict(zip(models, lo.tolist())),
        "ci_high": dict(zip(models, hi.tolist())),
        "samples": samples,
        "n_battles": n,
        "n_clusters": None,
    }


def _cluster_bootstrap(battles, clusters, models, idx, rating, n_boot, seed, confidence, l2, kw) -> dict:
    """Resample whole clusters with replacement: the sample's win matrix is the sum of its
    clusters' win matrices, each counted as often as it was drawn."""
    K = len(models)
    names = {c: i for i, c in enumerate(dict.fromkeys(clusters))}
    per = np.zeros((len(names), K, K))
    for (a, b, y), c in zip(battles, clusters):
        per[names[c], idx[a], idx[b]] += y
        per[names[c], idx[b], idx[a]] += 1.0 - y
    C = len(names)
    rng = np.random.default_rng(seed)
    samples = np.empty((n_boot, K))
    for s in range(n_boot):
        draw = np.bincount(rng.integers(0, C, C), minlength=C).astype(float)
        W = np.tensordot(draw, per, axes=1)
        samples[s] = _to_ratings(_fit_beta(W, l2), models, kw["anchor"], kw["scale"], kw["base"], kw["init"])
    alpha = (1.0 - confidence) / 2
    lo = np.quantile(samples, alpha, axis=0) if n_boot else np.full(K, np.nan)
    hi = np.quantile(samples, 1 - alpha, axis=0) if n_boot else np.full(K, np.nan)
    return {
        "models": models,
        "rating": rating,
        "ci_low": dict(zip(models, lo.tolist())),
        "ci_high": dict(zip(models, hi.tolist())),
        "samples": samples,
        "n_battles": len(battles),
        "n_clusters": C,
    }


def leaderboard(battles: Iterable[Sequence], models: Sequence[str] | None = None, **kw) -> list[dict]:
    """Rows ``{"rank", "model", "rating", "ci_low", "ci_high", "battles", "win_rate"}`` best first.
    ``rank`` is 1 + the number of models whose lower bound is above this model's upper bound
    (the Arena's rank with overlapping intervals shared). ``kw`` go to ``bootstrap_bradley_terry``."""
    raw = list(battles)
    battles = normalise_battles(raw)
    res = bootstrap_bradley_terry(raw, models, **kw)
    ms = res["models"]
    W = win_matrix(battles, ms)
    played = (W + W.T).sum(axis=1)
    rows = []
    for k, m in enumerate(ms):
        rows.append(
            {
                "model": m,
                "rating": res["rating"][m],
                "ci_low": res["ci_low"][m],
                "ci_high": res["ci_high"][m],
                "battles": int(round(played[k])),
                "win_rate": float(W[k].sum() / played[k]) if played[k] else float("nan"),
            }
        )
    for r in rows:
        r["rank"] = 1 + sum(1 for o in rows if o["ci_low"] > r["ci_high"])
    rows.sort(key=lambda r: -r["rating"])
    return rows


def format_leaderboard(rows: Sequence[Mapping]) -> str:
    lines = [f"{'rank':>4}  {'model':<32}{'rating':>9}{'95% CI':>20}{'battles':>9}{'win rate':>10}"]
    for r in rows:
        ci = f"[{r['ci_low']:.0f}, {r['ci_high']:.0f}]"
        lines.append(
            f"{r['rank']:>4}  {str(r['model'])[:32]:<32}{r['rating']:>9.1f}{ci:>20}"
            f"{r['battles']:>9}{r['win_rate']:>10.3f}"
        )
    return "\n".join(lines)


def battles_from_scores(
    scores: Mapping[str, Sequence[float]], tie_eps: float = 0.0
) -> list[tuple[str, str, float, int]]:
    """Battles from per-prompt judge scores: ``scores[model][i]`` is the score of that model's
    response to prompt i; every pair of models meets once per prompt; ``|diff| <= tie_eps`` is a
    tie. Returns ``[(a, b, outcome, i)]``: a prompt's battles are one cluster for the bootstrap."""
    names = list(scores)
    n = {len(v) for v in scores.values()}
    if len(n) > 1:
        raise ValueError("every model needs one score per prompt")
    out = []
    for i in range(n.pop() if n else 0):
        for x in range(len(names)):
            for y in range(x + 1, len(names)):
                d = float(scores[names[x]][i]) - float(scores[names[y]][i])
                out.append((names[x], names[y], 0.5 if abs(d) <= tie_eps else (1.0 if d > 0 else 0.0), i))
    return out
