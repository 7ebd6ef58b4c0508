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
    1.38416 = 0.27754 (< 1/2: inverted, weight 0). At q = 3/4 the three likelihoods of k of n,
    times 4^n, are 3^k (honest), 2^n (random), 3^(n-k) (inverted): 7 of 10 -> 2187 / (2187 +
    1024 + 27) = 0.67542 (trusted); 10 of 10 -> 59049 / 60074 = 0.98294; 5 of 10 -> 243 / (243 +
    1024 + 243) = 0.16093 (down-weighted); 3 of 10 -> 27 / (27 + 1024 + 2187) = 0.00834 (its
    Wilson upper bound 0.6032 is above 1/2: not marked inverted). Fewer than 3 judged, or a
    consensus at chance (q = 1/2): 1, unchecked."""
    assert defence.wilson_upper(0, 10) == pytest.approx(0.38416 / 1.38416, abs=1e-5)
    assert defence.user_weight(0, 10, 0.75, 3) == (0.0, "inverted")
    assert defence.user_weight(7, 10, 0.75, 3) == (pytest.approx(2187 / 3238), "trusted")
    assert defence.user_weight(10, 10, 0.75, 3) == (pytest.approx(59049 / 60074), "trusted")
    assert defence.user_weight(5, 10, 0.75, 3) == (pytest.approx(243 / 1510), "down-weighted")
    assert defence.wilson_upper(3, 10) == pytest.approx(0.6032, abs=1e-4)
    assert defence.user_weight(3, 10, 0.75, 3) == (pytest.approx(27 / 3238), "down-weighted")
    assert defence.user_weight(0, 2, 0.75, 3) == (1.0, "unchecked")
    assert defence.user_weight(0, 10, 0.5, 3) == (1.0, "unchecked")
    assert defence.user_weight(2000, 2000, 0.75, 3) == (pytest.approx(1.0), "trusted")  # no underflow
    assert defence.user_weight(900, 2000, 0.75, 3) == (0.0, "inverted")


def test_a_flood_of_coin_flips_is_found_out_and_an_unlucky_honest_user_is_not_zeroed():
    """At q = 0.65: a user with 25 of 50 agreeing (a flood of random verdicts) has likelihoods
    honest = inverted = (0.65 x 0.35)^25 and random 0.5^50; honest / random = (0.91)^25 = 0.0946,
    so w = 0.0946 / (1 + 2 x 0.0946) = 0.0796. An honest user with 5 of 10 (unlucky) under the same
    consensus: (0.91)^5 = 0.6240, w = 0.6240 / (1 + 2 x 0.6240) = 0.2776: part of a weight, not 0."""
    assert defence.user_weight(25, 50, 0.65, 3)[0] == pytest.approx(0.0796, abs=1e-4)
    assert defence.user_weight(5, 10, 0.65, 3)[0] == pytest.approx(0.2776, abs=1e-4)


def test_a_users_weight_rests_on_their_checked_verdicts_of_every_round():
    """2 of 2 agreeing now at q = 3/4, 3 of 3 in an earlier round at q = 0.6: honest 0.75^2 x
    0.6^3 = 0.1215, random 0.5^5 = 0.03125, inverted 0.25^2 x 0.4^3 = 0.004 -> w = 0.1215 /
    0.15675 = 0.77512 (alone, 2 checked verdicts < 3: unchecked). A round without a consensus
    (q = 1/2) weighs a user by their history alone: 4 of 5 at q = 0.7 -> 0.7^4 x 0.3 = 0.07203,
    0.5^5 = 0.03125, 0.3^4 x 0.7 = 0.00567 -> 0.66113; 0 of 5 -> Wilson upper bound 0.4345 < 1/2:
    inverted. min_judged counts all rounds: 1 + 2 of 3 at q = 3/4 -> 27 / (27 + 8 + 1) = 0.75.
    A round whose consensus was at chance adds nothing."""
    assert defence.user_weight(2, 2, 0.75, 3) == (1.0, "unchecked")
    assert defence.user_weight(2, 2, 0.75, 3, [(3, 3, 0.6)]) == (pytest.approx(0.1215 / 0.15675), "trusted")
    assert defence.user_weight(0, 0, 0.5, 3, [(4, 5, 0.7)]) == (pytest.approx(0.07203 / 0.10895, abs=1e-5), "trusted")
    assert defence.wilson_upper(0, 5) == pytest.approx(0.4345, abs=1e-4)
    assert defence.user_weight(0, 0, 0.5, 3, [(0, 5, 0.7)]) == (0.0, "inverted")
    assert defence.user_weight(1, 1, 0.75, 3, [(2, 2, 0.75)]) == (pytest.approx(0.75), "trusted")
    assert defence.user_weight(1, 1, 0.75, 3, [(0, 9, 0.5)]) == (1.0, "unchecked")
    assert defence.user_weight(0, 0, 0.5, 0) == (1.0, "unchecked")  # no evidence at all: 1, not 1/3
    # through user_weights and defend: the history's counts are shown beside the round's
    events = [ev(1, "u1"), ev(2, "u1"), ev(3, "u2"), ev(4, "u2")]
    per_user, _ = defence.user_weights(
        events, {1: True, 2: True, 3: True, 4: True}, 0.75, 3, 0.75, {"u1": [(3, 3, 0.6)]}
    )
    assert per_user["u1"]["weight"] == pytest.approx(0.77512, abs=1e-5)
    assert (per_user["u1"]["judged_before"], per_user["u1"]["agreed_before"]) == (3, 3)
    assert per_user["u2"]["status"] == "unchecked" and "judged_before" not in per_user["u2"]
    apart = [ev(i, u, prompt=f"p{i}") for i, u in ((1, "u1"), (2, "u1"), (3, "u2"))]  # nothing shared
    out = defence.defend(apart, 0, 0.75, 3, 0.6, None, history={"u1": [(0, 5, 0.7)]})
    assert out["consensus"] == "none" and out["per_user"]["u1"]["status"] == "inverted"


def test_weights_judge_users_against_the_consensus_own_agreement():
    """A weak reward-model consensus agrees with 13 of 20 verdicts: q = min(0.75, 0.65) = 0.65; u1 agrees 8 of
    10: likelihoods 0.65^8 0.35^2 = 0.0039033, 0.5^10 = 0.0009766, 0.35^8 0.65^2 = 0.0000951 ->
    w = 0.78459. A consensus above the cap uses the cap: 0.85 -> q = 0.75."""
    events = [ev(i, "u1") for i in range(10)] + [ev(10 + i, "u2") for i in range(10)]
    agrees = {i: i < 8 for i in range(10)} | {10 + i: i < 5 for i in range(10)}
    per_user, q = defence.user_weights(events, agrees, 0.75, 3, consensus_agreement=0.65)
    assert q == pytest.approx(0.65)
    h, r, i = 0.65**8 * 0.35**2, 0.5**10, 0.35**8 * 0.65**2
    assert per_user["u1"]["weight"] == pytest.approx(h / (h + r + i), abs=1e-6) == pytest.approx(0.78459, abs=1e-5)
    assert per_user["u1"]["agreement"] == 0.8 and per_user["u2"]["weight"] == pytest.approx(0.2776, abs=1e-4)
    assert defence.user_weights(events, agrees, 0.75, 3, consensus_agreement=0.85)[1] == 0.75
    # the users' majority has no accuracy of its own (its pooled agreement counts only what it
    # could judge, here every verdict of one inverted user): the cap
    assert defence.user_weights(events, agrees, 0.75, 3)[1] == 0.75


def test_a_reply_scored_at_the_median_is_no_evidence():
    """Three thumbs scored 0, 1, 2: the median is 1; the reply scored 1 is neither above nor below.
    Likewise a choice or an edit whose two replies score the same."""
    events = [ev(1, "a"), ev(2, "a", value=False), ev(3, "a")]
    assert defence.rm_agreements(events, {1: [0.0], 2: [1.0], 3: [2.0]}) == {1: False, 3: True}
    tie = [ev(4, "b", "choice", 0, responses=("x", "y")), ev(5, "b", "edit", "z", responses=("served",))]
    assert defence.rm_agreements(tie, {4: [0.5, 0.5], 5: [0.2, 0.2]}) == {}  # equal scores: no evidence


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


def test_cross_fitted_consensus_checks_each_fold_against_its_own_model():
    """Five users judge only their own replies: four up on their long reply and down on their
    short one, u5 the other way round. The fold models score a reply by its length, fold 1's
    model 100 lower (another model, another scale): each fold's verdicts are judged at that
    fold's median, so every honest verdict agrees (a median over both folds would put all of
    fold 1's replies below it). Pooled 8 of 10 = 0.8 >= 0.6: the cross-fit is the consensus;
    q = min(0.75, 0.8) = 0.75; likelihoods x 4^2: honest 2 of 2 -> 9 / (9 + 4 + 1) = 9/14, u5 0 of
    2 -> 1/14 (two verdicts are weak evidence; its Wilson bound 0.658 is above 1/2). The previous model, when it agrees
    with the round, is used first and no fold model is trained; a cross-fit without evidence
    leaves the majority on the reply three users judged."""
    users = ["u1", "u2", "u3", "u4", "u5"]
    events = []
    for n, u in enumerate(users):
        up, down = f"a long and helpful reply for {u}", f"no {u}"
        if u == "u5":
            up, down = down, up
        events += [ev(10 * n + 1, u, value=True, responses=(up,)), ev(10 * n + 2, u, value=False, responses=(down,))]
    calls = []

    def by_length(kept, fold_of):
        calls.append(fold_of)
        return {
            k: {e["id"]: [len(e["responses"][0]) - 100.0 * k] for e in kept if fold_of[e["end_user"]] == k}
            for k in set(fold_of.values())
        }

    out = defence.defend(events, 0, 0.75, 1, 0.6, None, crossfit_fn=by_length, folds=2)
    assert out["consensus"] == "crossfit" and out["crossfit_agreement"] == 0.8
    assert calls == [defence.crossfit_folds(users, 2)] and set(calls[0].values()) == {0, 1}
    assert {u: (v["agreed"], v["judged"], v["weight"], v["fold"]) for u, v in out["per_user"].items()} == {
        **{u: (2, 2, round(9 / 14, 6), calls[0][u]) for u in users[:4]},
        "u5": (0, 2, round(1 / 14, 6), calls[0]["u5"]),
    }
    assert out["per_user"]["u5"]["agreement"] == 0.0 and out["honest_agreement"] == 0.75

    truth = {e["id"]: [len(e["responses"][0])] for e in events}
    calls.clear()
    out = defence.defend(events, 0, 0.75, 1, 0.6, lambda es: truth, crossfit_fn=by_length, folds=2)
    assert out["consensus"] == "reward_model" and calls == [] and out["crossfit_agreement"] is None

    shared = [ev(91, "u1", responses=("same",)), ev(92, "u2", responses=("same",)), ev(93, "u3", responses=("same",))]
    shared[2]["value"] = False
    out = defence.defend(events + shared, 0, 0.75, 1, 0.6, None, crossfit_fn=lambda es, f: {}, folds=2)
    assert out["consensus"] == "majority" and out["per_user"]["u3"]["agreed"] == 0
    out = defence.defend(events, 0, 0.75, 1, 0.6, None, crossfit_fn=by_length, folds=0)
    assert out["consensus"] == "none"


def test_prompts_only_weight_zero_users_sent_are_left_out():
    """A prompt stays while one of its senders weighs more than 0 (or is unknown, counted 1)."""
    senders = {"p1": ["a"], "p2": ["a", "b"], "p3": ["c"], "p4": []}
    kept = defence.usable_prompts(["p1", "p2", "p3", "p4", "p5"], senders, {"a": 0.0, "b": 0.5})
    assert kept == ["p2", "p3", "p4", "p5"]


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


def test_held_out_prompts_are_drawn_with_the_folders_secret_key(tmp_path, monkeypatch):
    """A user who could compute which prompts the gate is judged on could send exactly those: the
    draw is an HMAC under a random key kept in the learner's folder (mode 0600, made once, the
    same on every later call), so two folders split the same prompts differently and the plain
    SHA-256 of a prompt says nothing about its fate."""
    import hashlib
    import os
    import secrets
    import stat

    from rlhfkit.learn import inputs

    monkeypatch.setattr(inputs, "new_key_hex", lambda: secrets.token_hex(32))  # the tests' fixed key off
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    key_a = inputs.holdout_key(a)
    assert len(key_a) == 32 and inputs.holdout_key(a) == key_a
    assert stat.S_IMODE(os.stat(a / "holdout.key").st_mode) == 0o600 and not list(a.glob(".holdout.key.*"))
    key_b = inputs.holdout_key(b)
    assert key_b != key_a
    prompts = [f"prompt {i}" for i in range(400)]
    split_a = [inputs.held_out(p, 0.25, key_a) for p in prompts]
    split_b = [inputs.held_out(p, 0.25, key_b) for p in prompts]
    plain = [int.from_bytes(hashlib.sha256(p.encode()).digest()[:8], "big") / 2.0**64 < 0.25 for p in prompts]
    assert 60 < sum(split_a) < 140 and split_a != split_b and split_a != plain
    assert inputs.prompt_rank("x", key_a) == hmac_sha256(key_a, b"x")


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    import hmac

    return hmac.new(key, msg, "sha256").digest()


def test_history_starts_at_the_latest_rebuild_and_skips_rounds_without_a_consensus(tmp_path):
    """A rebuild round (after a forget) judged every stored verdict, so its tallies replace the
    rounds before it; a round without a consensus (q None) leaves no tally."""
    import json

    from rlhfkit.learn.inputs import judged_before

    def round_files(n, q, per_user, rebuild=False):
        d = tmp_path / "rounds" / f"round-{n}"
        (d / "defence").mkdir(parents=True)
        (d / "defence" / "defence.json").write_text(json.dumps({"honest_agreement": q, "per_user": per_user}))
        (d / "round.json").write_text(json.dumps({"round": n, "rebuild": rebuild}))

    def tally(agreed, judged):
        return {"n": judged, "judged": judged, "agreed": agreed, "weight": 1.0}

    round_files(1, 0.7, {"u1": tally(3, 3)})
    round_files(2, 0.65, {"u1": tally(4, 5), "u2": tally(0, 0)}, rebuild=True)
    round_files(3, None, {"u1": tally(0, 4)})
    round_files(4, 0.6, {"u2": tally(1, 2)})
    assert judged_before(tmp_path, 2) == {"u1": [[3, 3, 0.7]]}
    assert judged_before(tmp_path, 5) == {"u1": [[4, 5, 0.65]], "u2": [[1, 2, 0.6]]}
    assert judged_before(tmp_path, 4) == {"u1": [[4, 5, 0.65]]}
