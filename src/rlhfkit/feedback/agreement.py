"""Inter-annotator agreement, as pure functions on plain Python values.

- :func:`cohen_kappa`: two raters, the same items, nominal categories (Cohen 1960):
  ``kappa = (p_o - p_e) / (1 - p_e)`` with ``p_o`` the observed agreement and ``p_e`` the chance
  agreement from each rater's own category frequencies.
- :func:`krippendorff_alpha`: any number of raters, missing values allowed, nominal / ordinal /
  interval metrics, computed from the coincidence matrix as in K. Krippendorff, "Computing
  Krippendorff's Alpha-Reliability" (2011): ``alpha = 1 - D_o / D_e``.

Undefined values (no variation at all, fewer than two pairable values) are ``nan``.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any, Hashable, Iterable, Sequence

__all__ = ["cohen_kappa", "krippendorff_alpha", "units_from_matrix", "units_from_labels", "pairwise_kappas"]


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's kappa of two equally long sequences of categories (item i rated a[i] and b[i])."""
    if len(a) != len(b):
        raise ValueError(f"the two raters have {len(a)} and {len(b)} ratings; they must rate the same items")
    n = len(a)
    if n == 0:
        return math.nan
    p_o = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    p_e = sum(ca[k] * cb[k] for k in ca) / (n * n)
    if p_e == 1.0:
        return math.nan  # both raters always used the same single category: kappa undefined
    return (p_o - p_e) / (1.0 - p_e)


def units_from_matrix(matrix: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """Reliability data as Krippendorff prints it (rows = raters, columns = units, None = missing)
    -> a list of units, each the list of values it received."""
    n_units = max((len(r) for r in matrix), default=0)
    return [[r[u] for r in matrix if u < len(r) and r[u] is not None] for u in range(n_units)]


def units_from_labels(labels: Iterable[tuple[Hashable, Hashable, Any]]) -> list[list[Any]]:
    """(item, rater, value) triples -> units (one per item), dropping None values."""
    by_item: dict = defaultdict(list)
    for item, _rater, value in labels:
        if value is not None:
            by_item[item].append(value)
    return list(by_item.values())


def krippendorff_alpha(units: Iterable[Iterable[Any]], level: str = "nominal") -> float:
    """Krippendorff's alpha. ``units``: for each unit (item), the values the raters gave it
    (missing ones left out). ``level``: ``nominal``, ``ordinal`` (values must be sortable) or
    ``interval`` (numbers). Units with fewer than two values are not pairable and are ignored."""
    if level not in ("nominal", "ordinal", "interval"):
        raise ValueError(f"level must be nominal, ordinal or interval, got {level!r}")
    # coincidence matrix o[c][k] = sum_u (number of c-k value pairs in u) / (m_u - 1)
    o: dict = defaultdict(float)
    for unit in units:
        vals = [v for v in unit if v is not None]
        m = len(vals)
        if m < 2:
            continue
        counts = Counter(vals)
        for c, nc in counts.items():
            for k, nk in counts.items():
                pairs = nc * (nk - 1) if c == k else nc * nk
                if pairs:
                    o[(c, k)] += pairs / (m - 1)
    n_c: dict = defaultdict(float)
    for (c, _k), v in o.items():
        n_c[c] += v
    n = sum(n_c.values())
    if n < 2:
        return math.nan
    values = sorted(n_c) if level != "nominal" else list(n_c)

    if level == "nominal":

        def delta2(c, k):
            return 0.0 if c == k else 1.0
    elif level == "interval":

        def delta2(c, k):
            return float(c - k) ** 2
    else:
        pos = {v: i for i, v in enumerate(values)}
        cum = [0.0]
        for v in values:
            cum.append(cum[-1] + n_c[v])

        def delta2(c, k):
            i, j = sorted((pos[c], pos[k]))
            # (sum_{g=c..k} n_g - (n_c + n_k) / 2)^2
            return (cum[j + 1] - cum[i] - (n_c[c] + n_c[k]) / 2.0) ** 2

    d_o = sum(v * delta2(c, k) for (c, k), v in o.items()) / n
    d_e = sum(n_c[c] * n_c[k] * delta2(c, k) for c in values for k in values) / (n * (n - 1))
    if d_e == 0:
        return math.nan
    return 1.0 - d_o / d_e


def pairwise_kappas(labels: Iterable[tuple[Hashable, Hashable, Hashable]], min_common: int = 2) -> list[dict]:
    """Cohen's kappa for every pair of raters over the items both rated, from (item, rater,
    category) triples. Pairs with fewer than ``min_common`` shared items are left out."""
    by_rater: dict = defaultdict(dict)
    for item, rater, value in labels:
        if value is not None:
            by_rater[rater][item] = value
    raters = sorted(by_rater, key=str)
    out = []
    for i, r1 in enumerate(raters):
        for r2 in raters[i + 1 :]:
            common = sorted(set(by_rater[r1]) & set(by_rater[r2]), key=str)
            if len(common) < min_common:
                continue
            k = cohen_kappa([by_rater[r1][x] for x in common], [by_rater[r2][x] for x in common])
            out.append({"a": r1, "b": r2, "n": len(common), "kappa": k})
    return out
