"""The defence's arithmetic and the weighted reward loss, with numbers derived by hand."""

import math

import pytest
import torch

from rlhfkit.learn import defence
from rlhfkit.learn.reward_update import examples_of, weighted_loss


def ev(i, user, kind="thumbs", value=True, prompt="p", responses=("r",), scale=None):
    return {
        "id": i,
        "end_user": user,
        "kind": kind,
        "value": value,
        "prompt": prompt,
        "responses": list(responses),
        "scale": scale,
    }


def test_wilson_upper_bound_and_user_weights():
    """Wilson upper bound of 0/10 at 95%: (0 + z²/20 + z·sqrt(z²/400)) / (1 + z²/10) = 0.38416 /
    1.38416 = 0.27754 (< 1/2: inverted, weight 0). Smoothed agreement (k+1)/(n+2): 8/10 -> 0.75
    -> weight 1; 7/10 -> 2/3 -> (2/3 - 1/2) / (3/4 - 1/2) = 2/3; 5/10 -> 1/2 -> 0 (not inverted:
    its upper bound is above 1/2); fewer than 3 judged: 1, unchecked."""
    assert defence.wilson_upper(0, 10) == pytest.approx(0.38416 / 1.38416, abs=1e-5)
    assert defence.user_weight(0, 10, 0.75, 3) == (0.0, "inverted")
    assert defence.user_weight(8, 10, 0.75, 3) == (1.0, "trusted")
    w, status = defence.user_weight(7, 10, 0.75, 3)
    assert w == pytest.approx(2 / 3) and status == "down-weighted"
    assert defence.user_weight(5, 10, 0.75, 3) == (0.0, "down-weighted")
    assert defence.user_weight(0, 2, 0.75, 3) == (1.0, "unchecked")


def test_cap_keeps_each_users_earliest_verdicts_and_counts_the_rest():
    events = [ev(i, "a") for i in (5, 1, 3, 2, 4)] + [ev(6, "b")]
    kept, cut = defence.cap_per_user(events, 2)
    assert [e["id"] for e in kept] == [1, 2, 6] and cut == {"a": 3}
    assert defence.cap_per_user(events, 0)[1] == {}


def test_leave_one_user_out_majority():
    """Reply X: u1 up, u2 up, u3 down. u3's verdict meets the others' majority (up, up) and
    disagrees; u1's others are split (up, down): no evidence; likewise u2. A choice between the
    same two replies (in either order) is one item: u1, u2 and u5 pick A, u3 picks B: each A
    meets a majority A among the other three (2 to 1), B meets A, A, A. A reply one user judged
    (u4's) is no evidence."""
    events = [
        ev(1, "u1"),
        ev(2, "u2"),
        ev(3, "u3", value=False),
        ev(4, "u1", "choice", 0, responses=("A", "B")),
        ev(5, "u2", "choice", 1, responses=("B", "A")),
        ev(6, "u3", "choice", 0, responses=("B", "A")),
        ev(7, "u4", responses=("alone",)),
        ev(8, "u5", "choice", 0, responses=("A", "B")),
    ]
    assert defence.majority_agreements(events) == {3: False, 4: True, 5: True, 6: False, 8: True}


def test_reward_model_consensus_and_when_it_is_trusted():
    """Thumbs agree when the score is above the median of the round's single-reply scores (here
    0.5); a choice or an edit when the picked / written reply scores higher. With a reward model
    agreeing with 3 of 4 verdicts (0.75 >= 0.6) it is the consensus; below 0.6 the majority is."""
    events = [
        ev(1, "a", value=True),
        ev(2, "a", value=False),
        ev(3, "b", "choice", 1, responses=("x", "y")),
        ev(4, "b", "edit", "better", responses=("served",)),
    ]
    scores = {1: [1.0], 2: [0.0], 3: [0.2, 0.1], 4: [0.0, 0.3]}
    assert defence.rm_agreements(events, scores) == {1: True, 2: True, 3: False, 4: True}
    out = defence.defend(events, 0, 0.75, 1, 0.6, lambda es: scores)
    assert out["consensus"] == "reward_model" and out["consensus_agreement"] == 0.75
    assert out["per_user"]["a"]["agreed"] == 2 and out["per_user"]["b"]["agreed"] == 1
    out = defence.defend(events, 0, 0.75, 1, 0.8, lambda es: scores)
    assert out["consensus"] == "none" and all(u["weight"] == 1.0 for u in out["per_user"].values())


def test_weighted_reward_loss_by_hand():
    """A pair with scores (2, 0) at weight 0.5 and a thumbs-up scored 0 at weight 2:
    0.5 * log(1 + e^-2) + 2 * log 2 = 0.063464 + 1.386294 = 1.449758."""
    batch = {
        "n_pairs": 1,
        "pair_w": torch.tensor([0.5]),
        "single_w": torch.tensor([2.0]),
        "target": torch.tensor([1.0]),
    }
    loss, stats = weighted_loss(torch.tensor([2.0, 0.0, 0.0]), batch)
    assert float(loss) == pytest.approx(0.5 * math.log1p(math.exp(-2)) + 2 * math.log(2), abs=1e-6)
    assert float(loss) == pytest.approx(1.449758, abs=1e-6) and stats["pair_accuracy"] == 1.0


def test_examples_carry_their_users_weight_and_weight_zero_users_are_left_out():
    """A choice and an edit become pairs, thumbs and ratings soft labels ((4 - 1) / 4 = 0.75 on
    1-5), each at its user's weight (times thumbs_weight 0.5 for thumbs); user z at weight 0
    gives no example."""
    events = [
        ev(1, "a", "choice", 1, responses=("x", "y")),
        ev(2, "b", "edit", "better", responses=("served",)),
        ev(3, "a", "thumbs", False),
        ev(4, "b", "rating", 4, scale=[1, 5]),
        ev(5, "z", "thumbs", True),
    ]
    out = examples_of(events, {"a": 0.5, "b": 1.0, "z": 0.0}, thumbs_weight=0.5, rating_weight=1.0)
    assert [(x["id"], x.get("chosen"), x.get("rejected"), x.get("target"), x["w"]) for x in out] == [
        (1, "y", "x", None, 0.5),
        (2, "better", "served", None, 1.0),
        (3, None, None, 0.0, 0.25),
        (4, None, None, 0.75, 1.0),
    ]
