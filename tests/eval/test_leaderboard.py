"""Bradley-Terry leaderboard: fits derived by hand, and intervals on synthetic battles drawn from
known ratings (order recovered, intervals cover the truth, intervals shrink with more battles)."""

import math

import numpy as np
import pytest

from rlhfkit.eval.leaderboard import (
    battles_from_scores,
    bootstrap_bradley_terry,
    expected_win_probability,
    fit_bradley_terry,
    format_leaderboard,
    leaderboard,
)

ELO = 400 / math.log(10)  # rating points per unit of the logit


def test_two_models_by_hand():
    # A beats B 3 times out of 4. The likelihood 3 log s(d) + log s(-d) is maximal where
    # s(d) = 3/4, i.e. d = ln 3 logits = 400 log10(3) = 190.85 rating points; the mean is 1000.
    battles = [("A", "B", 1)] * 3 + [("A", "B", 0)]
    r = fit_bradley_terry(battles)
    assert r["A"] - r["B"] == pytest.approx(400 * math.log10(3), abs=1e-3)
    assert (r["A"] + r["B"]) / 2 == pytest.approx(1000, abs=1e-6)
    # the same battles written from B's side, and a tie as half a win each:
    # A 1 win + 2 ties vs B 0 wins -> A has 2 wins of 3, s(d) = 2/3, d = 400 log10(2)
    assert fit_bradley_terry([("B", "A", "b")] * 3 + [("B", "A", "a")])["A"] == pytest.approx(r["A"], abs=1e-3)
    r2 = fit_bradley_terry([("A", "B", 1), ("A", "B", 0.5), ("B", "A", "tie")])
    assert r2["A"] - r2["B"] == pytest.approx(400 * math.log10(2), abs=1e-3)


def test_three_models_by_hand():
    # Strengths 4 : 2 : 1 give P(A>B) = 2/3, P(B>C) = 2/3, P(A>C) = 4/5. With counts equal to
    # those probabilities (2-1, 2-1, 4-1) every score equation sum_j n_ij s(b_i - b_j) = W_i holds
    # at b = (ln 4, ln 2, 0), the unique maximiser: ratings 120.41 points apart (400 log10 2).
    battles = (
        [("A", "B", 1)] * 2
        + [("A", "B", 0)]
        + [("B", "C", 1)] * 2
        + [("B", "C", 0)]
        + [("A", "C", 1)] * 4
        + [("A", "C", 0)]
    )
    r = fit_bradley_terry(battles, anchor="C")
    step = 400 * math.log10(2)
    assert r["C"] == pytest.approx(1000)
    assert r["B"] == pytest.approx(1000 + step, abs=1e-3)
    assert r["A"] == pytest.approx(1000 + 2 * step, abs=1e-3)
    assert expected_win_probability(r["A"], r["C"]) == pytest.approx(0.8, abs=1e-6)


def test_undefeated_model_stays_finite():
    r = fit_bradley_terry([("A", "B", 1)] * 5)
    assert all(math.isfinite(v) for v in r.values()) and r["A"] > r["B"] + 1000


def synthetic(true: dict, n: int, seed: int):
    rng = np.random.default_rng(seed)
    names = list(true)
    out = []
    for _ in range(n):
        i, j = rng.choice(len(names), 2, replace=False)
        a, b = names[i], names[j]
        out.append((a, b, float(rng.random() < expected_win_probability(true[a], true[b]))))
    return out


TRUE = {"m0": 850.0, "m1": 950.0, "m2": 1000.0, "m3": 1080.0, "m4": 1120.0}  # mean 1000


def test_synthetic_order_coverage_and_shrinking():
    small = bootstrap_bradley_terry(synthetic(TRUE, 600, 1), n_boot=300, seed=0)
    big = bootstrap_bradley_terry(synthetic(TRUE, 6000, 2), n_boot=300, seed=0)
    for res in (small, big):
        # the fitted order is the true order
        assert sorted(TRUE, key=lambda m: res["rating"][m]) == list(TRUE)
        covered = sum(res["ci_low"][m] <= TRUE[m] <= res["ci_high"][m] for m in TRUE)
        assert covered >= 4, res
    width = lambda res: np.mean([res["ci_high"][m] - res["ci_low"][m] for m in TRUE])  # noqa: E731
    # 10x the battles: intervals about sqrt(10) ~ 3.2x narrower
    assert width(big) < width(small) / 2.2
    assert 40 < width(small) < 200


def test_coverage_over_repeats():
    # about 95% of intervals should hold the truth; demand >= 80% over 4 runs x 5 models
    hits = 0
    for s in range(4):
        res = bootstrap_bradley_terry(synthetic(TRUE, 800, 10 + s), n_boot=200, seed=s)
        hits += sum(res["ci_low"][m] <= TRUE[m] <= res["ci_high"][m] for m in TRUE)
    assert hits >= 16


def test_leaderboard_rows_and_scores():
    scores = {"good": [3, 2, 5, 1], "mid": [2, 2, 1, 1], "bad": [1, 0, 0, 1]}
    battles = battles_from_scores(scores)
    assert len(battles) == 12 and ("good", "mid", 0.5, 1) in battles  # prompt 1: 2 vs 2, a tie
    rows = leaderboard(battles, n_boot=50, seed=0, anchor="bad")
    assert [r["model"] for r in rows] == ["good", "mid", "bad"]
    assert rows[-1]["rating"] == pytest.approx(1000)
    assert all(r["ci_low"] <= r["rating"] <= r["ci_high"] for r in rows)
    assert rows[0]["battles"] == 8 and rows[0]["win_rate"] == pytest.approx(
        (2 + 2 * 0.5 + 3 + 0.5) / 8
    )  # vs mid 2W 2T, vs bad 3W 1T
    assert "good" in format_leaderboard(rows)
    with pytest.raises(ValueError):
        fit_bradley_terry([("a", "a", 1)])
    with pytest.raises(ValueError):
        fit_bradley_terry([("a", "b", 0.3)])


def test_battles_of_one_prompt_are_resampled_together():
    """Identical models judged on 40 prompts: every pair meets once per prompt, so a prompt's
    K(K-1)/2 battles share each model's response and are not independent. Resampling whole
    prompts (the battles carry their prompt) keeps the 95% intervals near 95% coverage of the
    truth (all ratings 1000); resampling battles one by one makes them narrower and misses more.
    30 seeded repetitions x 4 models."""
    import numpy as np

    miss = {"prompts": 0, "battles": 0}
    width = {"prompts": 0.0, "battles": 0.0}
    for rep in range(30):
        rng = np.random.default_rng(rep)
        difficulty = rng.normal(0, 1, 40)
        scores = {m: (difficulty + rng.normal(0, 1, 40)).tolist() for m in "abcd"}
        battles = battles_from_scores(scores)
        for kind, bt in (("prompts", battles), ("battles", [b[:3] for b in battles])):
            res = bootstrap_bradley_terry(bt, n_boot=200, seed=rep)
            assert res["n_clusters"] == (40 if kind == "prompts" else None)
            for m in "abcd":
                miss[kind] += not res["ci_low"][m] <= 1000 <= res["ci_high"][m]
                width[kind] += res["ci_high"][m] - res["ci_low"][m]
    assert miss["prompts"] <= 12 < miss["battles"]  # at most 10% of 120 (8 seen) vs 21 seen
    assert width["prompts"] > 1.15 * width["battles"]
