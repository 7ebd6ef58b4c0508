"""A first round where every user judges only replies to their own prompts (as in a deployment):
no previous reward model and no reply two users judged, so only the cross-fitted consensus can
check anyone; and what users at weight 0 may no longer choose."""

import json

import pytest

from rlhfkit.learn import defence
from rlhfkit.learn.inputs import held_out
from rlhfkit.learn.round import add_stage_end_callback
from rlhfkit.learn.run import run
from rlhfkit.models import versions

from .conftest import TEST_KEY, fill, tiny_config

PROMPTS = [f"Question number {i}: what do you think about topic {i}?" for i in range(60)]
HONEST = ["ann", "ben", "cat", "dan", "eli", "fay", "gus", "hal"]
INVERTED = ["ivy", "zed"]
PER_USER = 6


def own_prompts(user: str) -> tuple[list[str], int]:
    """The user's own prompts (nobody else sends them) and the number of the first."""
    k = (HONEST + INVERTED).index(user) * PER_USER
    return PROMPTS[k : k + PER_USER], k


@pytest.fixture(scope="module")
def first_round(tmp_path_factory, tiny_base):
    root = tmp_path_factory.mktemp("adversaries")
    db = root / "fb.db"
    for user in HONEST + INVERTED:
        prompts, start = own_prompts(user)
        fill(str(db), {user: "inverted" if user in INVERTED else "honest"}, prompts=prompts, start=start)
    seen: dict = {}

    def look(stage: str) -> None:  # the recipes' data files are pruned when the round ends
        rdir = root / "learn" / "rounds" / "round-1"
        if stage == "policy":
            rows = (rdir / "policy" / "prompts.jsonl").read_text(encoding="utf-8").splitlines()
            seen["train_prompts"] = [json.loads(r)["prompt"] for r in rows]

    remove = add_stage_end_callback(look)
    try:
        config = tiny_config(root / "learn", db, tiny_base, **{"reward.epochs": 3, "gate.max_prompts": 64})
        outcomes = run(config)
    finally:
        remove()
    defence_json = json.loads((root / "learn" / "rounds" / "round-1" / "defence" / "defence.json").read_text())
    gate = json.loads((root / "learn" / "rounds" / "round-1" / "gate" / "gate.json").read_text())
    return {"outcomes": outcomes, "defence": defence_json, "gate": gate, "seen": seen, "root": root}


def test_the_users_folds_are_fixed_by_their_ids_and_even():
    """Users are ordered by the SHA-256 of their id and dealt round-robin: the same folds in any
    order of the input, fold sizes differing by at most one, and each inverted user of this
    population in another fold (so each fold model learns mostly from honest users)."""
    users = HONEST + INVERTED
    folds = defence.crossfit_folds(users, 2)
    assert folds == defence.crossfit_folds(list(reversed(users)) * 2, 2)
    sizes = [sum(1 for f in folds.values() if f == k) for k in (0, 1)]
    assert sizes == [5, 5]
    assert folds["ivy"] != folds["zed"]


def test_round_one_weighs_inverted_users_zero_without_shared_replies(first_round):
    """Round 1, no overlap: each user's verdicts are checked against a reward model trained on the
    other fold's users. The inverted users (every verdict the opposite of the rule good > bad)
    get weight 0, status inverted; the honest users a weight above 0. The lineage records the
    consensus used, the cross-fitted models' pooled agreement, each user's fold, agreement and
    weight."""
    d = first_round["defence"]
    assert d["consensus"] == "crossfit" and d["consensus_agreement"] is None
    assert d["crossfit_agreement"] >= 0.6
    for user in INVERTED:
        u = d["per_user"][user]
        assert (u["weight"], u["status"]) == (0.0, "inverted"), (user, u)
        assert u["judged"] > 0 and u["agreement"] < 0.5
    for user in HONEST:
        u = d["per_user"][user]
        assert u["weight"] > 0 and u["status"] in ("trusted", "down-weighted"), (user, u)
    folds = defence.crossfit_folds(HONEST + INVERTED, 2)
    assert {u: v["fold"] for u, v in d["per_user"].items()} == folds
    [outcome] = first_round["outcomes"]
    assert outcome["outcome"] == "promoted"
    fb = versions.version_info(first_round["root"] / "learn", outcome["version"])["feedback"]
    assert fb["consensus"] == "crossfit" and fb["per_user"] == d["per_user"]
    assert fb["crossfit_agreement"] == d["crossfit_agreement"]


def test_prompts_of_users_at_weight_zero_are_neither_trained_on_nor_gated_on(first_round):
    """GRPO's prompt file holds every training prompt of the honest users and none of the
    inverted users' (only they sent them, and they weigh 0); the gate sampled exactly the honest
    users' held-out prompts (max_prompts 64 is above their number). The counts are in the
    lineage."""
    honest = [p for u in HONEST for p in own_prompts(u)[0]]
    inverted = [p for u in INVERTED for p in own_prompts(u)[0]]
    assert any(held_out(p, 0.25, TEST_KEY) for p in inverted) and not all(held_out(p, 0.25, TEST_KEY) for p in inverted)
    train = first_round["seen"]["train_prompts"]
    assert sorted(train) == sorted(p for p in honest if not held_out(p, 0.25, TEST_KEY))
    assert first_round["gate"]["n_prompts"] == sum(held_out(p, 0.25, TEST_KEY) for p in honest)
    [outcome] = first_round["outcomes"]
    prompts = versions.version_info(first_round["root"] / "learn", outcome["version"])["prompts"]
    assert prompts == {"train": len(train), "holdout": first_round["gate"]["n_prompts"], "left_out": len(inverted)}


def test_a_users_latest_weight_is_that_of_the_last_round_that_weighed_them(tmp_path):
    """Round 1 weighed ivy 0, round 2 weighed her 1 and ann 0.5: before round 3 ivy counts 1 and
    ann 0.5; before round 2 ivy still counts 0 (a round's own defence and later ones are not read)."""
    from rlhfkit.learn.inputs import latest_weights

    for n, per_user in ((1, {"ivy": {"weight": 0.0}}), (2, {"ivy": {"weight": 1.0}, "ann": {"weight": 0.5}})):
        d = tmp_path / "rounds" / f"round-{n}" / "defence"
        d.mkdir(parents=True)
        (d / "defence.json").write_text(json.dumps({"per_user": per_user}))
    assert latest_weights(tmp_path, 3) == {"ivy": 1.0, "ann": 0.5}
    assert latest_weights(tmp_path, 2) == {"ivy": 0.0}
