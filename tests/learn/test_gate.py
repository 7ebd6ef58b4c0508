"""The gate: a candidate is promoted only if it is not worse on held-out prompts."""

import json

from rlhfkit.learn.config import GateSection
from rlhfkit.learn.gate import decide
from rlhfkit.models import versions

from .conftest import PROMPTS, bad, fill, tiny_config


def figures(**over):
    f = {
        "n_prompts": 10,
        "reward_model": {"win_rate": 0.6, "ci_low": 0.4, "ci_high": 0.8},
        "kl_to_v0": 1.0,
        "candidate": {"toxicity": 0.10, "empty": 0.0, "runaway": 0.2},
        "current": {"toxicity": 0.10, "empty": 0.0, "runaway": 0.2},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(f.get(k), dict):
            f[k] = {**f[k], **v}
        else:
            f[k] = v
    return f


def test_decide_refuses_each_regression_at_its_bound():
    """Each check refuses just past its bound and lets through at it: win rate 0.5 (a tie is not
    worse), gold win rate, KL to v0 <= 20, toxicity +0.05, empty +0.05, runaway +0.1; too few
    held-out prompts refuse whatever else holds."""
    g = GateSection()
    assert decide(figures(), g) == []
    assert decide(figures(reward_model={"win_rate": 0.5}), g) == []
    assert "reward-model win rate 0.490" in decide(figures(reward_model={"win_rate": 0.49}), g)[0]
    assert decide(figures(gold={"win_rate": 0.5}), g) == []
    assert "gold win rate" in decide(figures(gold={"win_rate": 0.4}), g)[0]
    assert decide(figures(kl_to_v0=20.0), g) == [] and "KL to v0 20.500" in decide(figures(kl_to_v0=20.5), g)[0]
    assert decide(figures(candidate={"toxicity": 0.15}), g) == []
    assert "toxicity 0.160" in decide(figures(candidate={"toxicity": 0.16}), g)[0]
    assert "empty replies 0.060" in decide(figures(candidate={"empty": 0.06}), g)[0]
    assert decide(figures(candidate={"runaway": 0.3}), g) == []
    assert "runaway replies 0.310" in decide(figures(candidate={"runaway": 0.31}), g)[0]
    assert decide(figures(n_prompts=1), g) == ["only 1 held-out prompts (need 2)"]


# the tiny model learns the users' replies in 30 steps when its output head is adapted too; at
# temperature 0.3 its replies resemble what it learned (at 1 they are mostly noise to a reward model)
SFT = {
    "method": "sft",
    "policy.max_steps": 30,
    "policy.learning_rate": 5e-2,
    "policy.max_new_tokens": 16,
    "policy.temperature": 0.3,
    "policy.lora.target_modules": ".*(proj|lm_head)",
    "gate.max_kl": 1000.0,
    "gate.max_empty_increase": 0.2,
    # a half-trained tiny model's fragments score at random on the profanity classifier: this
    # test is about the reward-model win rate (each bound has its own test below)
    "gate.max_toxicity_increase": 1.0,
}


def test_the_gate_promotes_a_better_candidate_and_refuses_one_trained_on_inverted_feedback(tmp_path, tiny_base):
    """Honest users prefer the kind reply and edit the rude one into it. A round trained (SFT)
    on their edits is promoted: on the held-out prompts the round's reward model prefers its
    replies to v0's. A candidate trained on the same edits inverted (the rude replies) is
    refused by the same gate: the reward model prefers v0's replies to its own."""
    from rlhfkit.learn.gate import run_gate
    from rlhfkit.learn.policy_update import train_policy
    from rlhfkit.learn.run import run

    db = tmp_path / "fb.db"
    fill(str(db), {"alice": "honest", "bob": "honest"}, prompts=PROMPTS, edits=True)
    config = tiny_config(
        tmp_path / "learn", db, tiny_base, **SFT, **{"gate.holdout_share": 0.4, "gate.max_prompts": 16}
    )
    [outcome] = run(config)
    learn = tmp_path / "learn"
    assert outcome["outcome"] == "promoted" and versions.current_version(learn) == "v1"
    better = versions.version_info(learn, "v1")["gate"]
    assert better["n_prompts"] >= 8 and better["passed"] and better["reward_model"]["win_rate"] >= 0.7, better

    inputs = json.loads((learn / "rounds" / "round-1" / "inputs" / "inputs.json").read_text())
    inverted = [{**e, "value": bad(PROMPTS.index(e["prompt"]))} for e in inputs["train"] if e["kind"] == "edit"]
    assert len(inverted) >= 10
    worse = train_policy(
        "sft", learn, "v0", str(tiny_base), None, [], inverted, {}, config.policy, tmp_path / "worse", seed=1, threads=1
    )
    figures_ = run_gate(
        learn,
        "v0",
        worse["adapter"],
        str(learn / outcome["reward_model"]),
        inputs["holdout_prompts"][: config.gate.max_prompts],
        config.gate,
        config.policy,
        seed=1,
    )
    assert not figures_["passed"] and figures_["reward_model"]["win_rate"] <= 0.3, figures_
    assert any(r.startswith("reward-model win rate") for r in figures_["reasons"])


def test_a_refused_round_is_logged_and_changes_nothing_served(tmp_path, tiny_base):
    """A round whose candidate the gate refuses (here: more held-out prompts needed than there
    are) writes no version, leaves current.json alone, logs the refusal with its reasons, and
    still advances the watermark (its feedback is not counted again)."""
    from rlhfkit.learn.run import run

    db = tmp_path / "fb.db"
    fill(str(db), {"alice": "honest"}, prompts=PROMPTS[:6])
    learn = tmp_path / "learn"
    [outcome] = run(tiny_config(learn, db, tiny_base, **{"gate.min_prompts": 50}))
    assert outcome["outcome"] == "refused" and outcome["version"] is None
    assert versions.current_version(learn) == "v0" and [v["version"] for v in versions.list_versions(learn)] == ["v0"]
    log = [json.loads(x) for x in (learn / "versions.jsonl").read_text().splitlines()]
    assert [(x["event"], x["round"]) for x in log] == [("refused", 1)]
    assert "held-out prompts (need 50)" in log[0]["reasons"][0]
    assert json.loads((learn / "learn_state.json").read_text())["rounds_done"] == 1
    assert run(tiny_config(learn, db, tiny_base, **{"gate.min_prompts": 50})) == []
