"""The selection function on hand-made ensemble scores (expected picks derived by hand), the
label-efficiency interpolation, and the policy-free pool check on a synthetic task."""

import math
import random

import pytest
import torch

from rlhfkit.loop.pool import labels_to_reach, pool_curve
from rlhfkit.loop.selection import candidate_pairs, pair_uncertainty, preference_probs, select_pairs


def sig(x):
    return 1 / (1 + math.exp(-x))


# 3 members x 6 candidates; prompts: {0, 1}, {2, 3}, {4, 5}
SCORES = torch.tensor(
    [
        [0.0, 0.0, 2.0, -2.0, 0.5, 0.0],
        [0.0, 0.0, -2.0, 2.0, 0.5, 0.0],
        [0.0, 0.0, 0.0, 0.0, 0.5, 0.0],
    ]
)
GROUPS = [0, 0, 1, 1, 2, 2]
PAIRS = [(0, 1), (2, 3), (4, 5)]


def test_preference_probs_and_uncertainty_by_hand():
    p = preference_probs(SCORES, PAIRS)
    assert p[:, 0].tolist() == pytest.approx([0.5, 0.5, 0.5])  # all agree: a coin flip
    assert p[:, 1].tolist() == pytest.approx([sig(4), sig(-4), 0.5])  # members disagree strongly
    assert p[:, 2].tolist() == pytest.approx([sig(0.5)] * 3)  # all agree: a mild preference
    var = pair_uncertainty(SCORES, PAIRS, "variance")
    m = (sig(4) + sig(-4) + 0.5) / 3  # = 0.5
    assert var.tolist() == pytest.approx([0.0, ((sig(4) - m) ** 2 + (sig(-4) - m) ** 2) / 3, 0.0])
    margin = pair_uncertainty(SCORES, PAIRS, "margin")
    assert margin.tolist() == pytest.approx([0.0, 0.0, -(sig(0.5) - 0.5)])


def test_bald_by_hand():
    """BALD = H(mean p) - mean H(p): zero where the members agree (pairs 0 and 2, however close to a
    coin flip), and for pair 1 H(1/2) = ln 2 minus the members' mean entropy."""

    def h(p):
        return -(p * math.log(p) + (1 - p) * math.log(1 - p))

    bald = pair_uncertainty(SCORES, PAIRS, "bald")
    expect_1 = math.log(2) - (h(sig(4)) + h(sig(-4)) + h(0.5)) / 3
    assert bald.tolist() == pytest.approx([0.0, expect_1, 0.0], abs=1e-12)


def test_double_thompson_sampling_by_hand():
    """Each member names its favourite candidate of a prompt; a pair scores the share of ordered
    pairs of distinct members whose favourites are its two candidates (3 members: 6 ordered pairs)."""
    scores = torch.tensor([[3.0, 1.0, 0.0, 1.0, 0.0], [0.0, 2.0, 1.0, 1.0, 0.0], [0.0, 5.0, 1.0, 1.0, 0.0]])
    groups = [0, 0, 0, 1, 1]  # prompt 0: candidates 0-2, favourites 0, 1, 1; prompt 1: all favour 3
    pairs = candidate_pairs(groups)
    assert pairs == [(0, 1), (0, 2), (1, 2), (3, 4)]
    # (0, 1) is named by member pairs (0,1), (0,2), (1,0), (2,0): 4 of 6; prompt 1's members agree
    assert pair_uncertainty(scores, pairs, "dts", groups).tolist() == pytest.approx([4 / 6, 0.0, 0.0, 0.0])
    assert select_pairs(pairs, 1, "uncertainty", seed=0, scores=scores, groups=groups, measure="dts") == [0]
    with pytest.raises(ValueError, match="groups"):
        pair_uncertainty(scores, pairs, "dts")


def test_uncertainty_selection_picks_the_highest_disagreement():
    assert select_pairs(PAIRS, 1, "uncertainty", seed=0, scores=SCORES, groups=GROUPS) == [1]
    for seed in range(5):  # the order of the rest is only a tie-break: pair 1 is always first
        assert select_pairs(PAIRS, 3, "uncertainty", seed=seed, scores=SCORES, groups=GROUPS)[0] == 1
    # a bigger hand-made case: member spread grows with the pair index, top 3 = pairs 9, 8, 7
    n = 10
    scores = torch.zeros(4, 2 * n)
    for i in range(n):
        scores[:, 2 * i] = torch.tensor([1.0, -1.0, 0.5, -0.5]) * i * 0.3
    pairs = [(2 * i, 2 * i + 1) for i in range(n)]
    groups = [i // 2 for i in range(2 * n)]
    assert select_pairs(pairs, 3, "uncertainty", seed=1, scores=scores, groups=groups) == [9, 8, 7]
    # the mean-margin measure: pair 0 and 1 have mean 0.5, pair 2 is decided -> never before them
    assert 2 not in select_pairs(PAIRS, 2, "uncertainty", seed=3, scores=SCORES, groups=GROUPS, measure="margin")


def test_the_group_cap_takes_one_pair_per_prompt_before_a_second():
    """With ``max_per_group`` 1 a prompt gives its most uncertain pair, then the other prompts
    theirs, before it gives a second; with 0 the order is the uncertainty's alone; a budget the
    cap cannot fill is spent in ranking order. Variances by hand (two members, p = sigmoid of
    the score difference, population variance = ((p1 - p2) / 2)^2): pair 0 differs by +-6, 0.2475;
    pair 2 by +-3.5, 0.2215; pair 1 by +-2.5, 0.1799; pair 3 (prompt 1) by +-1, 0.0534."""
    scores = torch.tensor([[3.0, -3.0, 0.5, 1.0, 0.0], [-3.0, 3.0, -0.5, -1.0, 0.0]])
    groups = [0, 0, 0, 1, 1]
    pairs = candidate_pairs(groups)
    assert pairs == [(0, 1), (0, 2), (1, 2), (3, 4)]
    assert pair_uncertainty(scores, pairs).tolist() == pytest.approx([0.2475, 0.1799, 0.2215, 0.0534], abs=1e-4)
    for seed in range(5):  # no ties: the seed changes nothing
        assert select_pairs(pairs, 2, "uncertainty", seed=seed, scores=scores, groups=groups) == [0, 3]
        uncapped = select_pairs(pairs, 3, "uncertainty", seed=seed, scores=scores, groups=groups, max_per_group=0)
        assert uncapped == [0, 2, 1]
        assert select_pairs(pairs, 4, "uncertainty", seed=seed, scores=scores, groups=groups) == [0, 3, 2, 1]  # lifted


def test_equal_uncertainty_is_ordered_by_the_seed():
    """Pairs of equal uncertainty come in the seeded random order, not by index: pairs 1 and 2
    both differ by +-3 (0.2048), and over seeds each comes first, each seed always the same."""
    scores = torch.tensor([[3.0, -3.0, 0.0, 1.0, 0.0], [-3.0, 3.0, 0.0, -1.0, 0.0]])
    groups = [0, 0, 0, 1, 1]
    pairs = candidate_pairs(groups)
    picks = {
        seed: select_pairs(pairs, 2, "uncertainty", seed=seed, scores=scores, groups=groups, max_per_group=0)
        for seed in range(20)
    }
    assert {tuple(p) for p in picks.values()} == {(0, 1), (0, 2)}
    assert all(
        select_pairs(pairs, 2, "uncertainty", seed=seed, scores=scores, groups=groups, max_per_group=0) == p
        for seed, p in picks.items()
    )


def test_random_baseline_and_errors():
    scores = torch.tensor([[3.0, -3.0, 0.0, 1.0, 0.0], [-3.0, 3.0, 0.0, -1.0, 0.0]])
    groups = [0, 0, 0, 1, 1]
    pairs = candidate_pairs(groups)
    r1 = select_pairs(pairs, 2, "random", seed=7, groups=groups)
    assert r1 == select_pairs(pairs, 2, "random", seed=7, groups=groups)  # seeded
    assert candidate_pairs([0, 0, 1, 1], ["x", "x", "a", " "]) == []  # identical / empty texts
    with pytest.raises(ValueError):
        select_pairs(pairs, 2, "uncertainty", seed=0, scores=scores[:1], groups=groups)
    with pytest.raises(ValueError):
        select_pairs(pairs, 2, "greedy", seed=0)


def test_labels_to_reach_interpolates():
    curve = [{"labels": 0, "gold": 0.0}, {"labels": 10, "gold": 0.2}, {"labels": 20, "gold": 0.6}]
    assert labels_to_reach(curve, 0.4) == pytest.approx(15.0)  # halfway between 10 and 20
    assert labels_to_reach(curve, 0.2) == pytest.approx(10.0)
    assert labels_to_reach(curve, -1.0) == 0.0
    assert labels_to_reach(curve, 0.7) is None


POS = "good great happy wonderful love fine funny best".split()
NEG = "bad awful sad boring hate dull slow worst".split()
NEU = "the film movie story actor plot scene was is a an and but very really quite it this".split()


def _pool(rng, n_groups, offset=0):
    texts, groups, gold = [], [], []
    for g in range(n_groups):
        for _ in range(4):
            w = [rng.choice(NEU + POS + NEG if rng.random() < 0.5 else NEU) for _ in range(8)]
            texts.append(" ".join(w))
            groups.append(g + offset)
            gold.append((sum(x in POS for x in w) - sum(x in NEG for x in w)) / 3)
    return texts, groups, gold


def test_policy_free_pool_check_runs_and_learns():
    """Fixed pool, gold + noise labeler, cheap ensemble: held-out accuracy vs labels for both
    selections (the full comparison over seeds is benchmarks/active_vs_random.py --pool)."""
    torch.set_num_threads(1)
    rng = random.Random(0)
    t, g, go = _pool(rng, 60)
    ht, hg, hgo = _pool(rng, 40, offset=1000)
    off = len(t)
    held = [
        (a + off, b + off) if hgo[a] > hgo[b] else (b + off, a + off)
        for a, b in candidate_pairs(hg, ht)
        if hgo[a] != hgo[b]
    ]
    curves = {
        m: pool_curve(
            t + ht,
            g + hg,
            go + hgo,
            candidate_pairs(g, t),
            held,
            m,
            start=10,
            step=15,
            n_steps=2,
            ensemble_size=3,
            seed=0,
            bon_candidates=range(off, off + len(ht)),
        )
        for m in ("random", "uncertainty")
    }
    by_prompt = [[off + 4 * k + j for j in range(4)] for k in range(40)]
    chance = sum(hgo) / len(hgo)
    oracle = sum(max(hgo[i - off] for i in grp) for grp in by_prompt) / len(by_prompt)
    for c in curves.values():
        assert [p["labels"] for p in c] == [10, 25, 40]
        assert c[-1]["accuracy"] > 0.6  # better than chance on gold-ordered held-out pairs
        # best-of-4 by the learned reward beats a random pick and cannot beat the gold oracle
        assert chance < c[-1]["bon_gold"] <= oracle + 1e-9
    assert curves["random"][0] == curves["uncertainty"][0]  # the same random start


def test_best_of_n_gold_picks_each_prompts_top_scored_candidate():
    """Two prompts: scores pick candidate 1 (gold 0.5) and candidate 4 (gold -1.0); mean -0.25.
    A score tie goes to the first listed candidate (index 2, gold 0.0)."""
    from rlhfkit.loop.pool import best_of_n_gold

    gold = [1.0, 0.5, 0.0, 2.0, -1.0]
    scores = torch.tensor([0.1, 0.9, 0.3, -0.2, 0.4])
    assert best_of_n_gold(scores, gold, [[0, 1, 2], [3, 4]]) == pytest.approx((0.5 - 1.0) / 2)
    tied = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0])
    assert best_of_n_gold(tied, gold, [[2, 3], [0, 1]]) == pytest.approx((0.0 + 1.0) / 2)


def test_anchored_ensemble_disagrees_about_features_no_label_touched():
    """Without anchors every member's weight of an unseen feature stays exactly 0, so the
    committee has zero variance on a pair that differs only in unseen words; with anchors
    (prior_std > 0) the members keep their random priors there and disagree. Member 0 is
    anchored at 0 either way (the ensemble's best single guess does not change)."""
    from rlhfkit.loop.pool import fit_bow_ensemble

    feats = torch.zeros(4, 8)
    feats[0, 0] = feats[1, 1] = 1.0  # labelled pair: candidate 0 (feature 0) beats 1 (feature 1)
    feats[2, 5] = feats[3, 6] = 1.0  # unlabelled pair: features 5, 6 never seen
    for prior_std, expect_disagreement in ((0.0, False), (0.5, True)):
        w = fit_bow_ensemble(feats, [(0, 1)], size=4, seed=0, prior_std=prior_std)
        u = pair_uncertainty(w @ feats.T, [(2, 3)]).item()
        assert (u > 1e-4) == expect_disagreement, (prior_std, u)
        assert torch.all(w[0, 2:] == 0)  # member 0: no label, no prior -> exactly 0
        assert w[0, 0] > 0 > w[0, 1]  # and it learned the labelled pair
