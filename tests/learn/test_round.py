"""A learner round over a real SQLite store: promotion, lineage, the defence against an inverted
and a flooding user, the version list and rollback."""

import json

import pytest

from rlhfkit.learn.inputs import held_out, ids_of_ranges
from rlhfkit.learn.run import run
from rlhfkit.models import versions

from .conftest import TEST_KEY, PROMPTS, fill, tiny_config

USERS = {"alice": "honest", "bob": "honest", "carol": "honest", "eve": "inverted", "flo": "flood"}
CAP = 30


@pytest.fixture(scope="module")
def one_round(tmp_path_factory, tiny_base):
    root = tmp_path_factory.mktemp("round")
    db = root / "fb.db"
    ids = fill(str(db), USERS)
    config = tiny_config(root / "learn", db, tiny_base, **{"defence.max_per_user": CAP})
    outcomes = run(config)
    return {"root": root, "db": db, "ids": ids, "config": config, "outcomes": outcomes, "learn": root / "learn"}


def test_a_round_promotes_a_version_whose_lineage_names_its_feedback(one_round):
    """With enough verdicts, ``learn run --once`` runs one round from v0 and promotes v1 (an
    adapter on v0): current.json names it, versions.jsonl logs it with the gate's figures, and
    version.json names the feedback ids that trained it (every verdict but those on held-out
    prompts and those over a user's cap), counts by kind, per-user counts and weights, the gate
    figures and the parent; the watermark is the last id."""
    learn, ids = one_round["learn"], one_round["ids"]
    assert [o["outcome"] for o in one_round["outcomes"]] == ["promoted"]
    assert versions.current_version(learn) == "v1"
    info = versions.version_info(learn, "v1")
    assert info["parent"] == "v0" and info["adapter_on"] == "v0" and info["round"] == 1 and info["method"] == "grpo"
    assert (learn / "versions" / "v1" / "adapter" / "adapter_model.safetensors").is_file()
    assert not (learn / "versions" / "v1" / "model").exists()  # a version is the adapter alone

    from rlhfkit.feedback.enduser import feedback_events

    events = {e.id: e for e in feedback_events(str(one_round["db"]))}
    assert set(events) == {i for v in ids.values() for i in v}
    trained = ids_of_ranges(info["feedback"]["ids"])
    for user, mine in ids.items():
        usable = [i for i in mine if not held_out(events[i].prompt, 0.25, TEST_KEY)]
        got = sorted(i for i in mine if i in trained)
        assert got == sorted(usable)[:CAP], user  # the earliest CAP of the user's usable verdicts
        assert info["feedback"]["per_user"][user]["n"] == len(got)
        assert info["feedback"]["per_user"][user]["cut"] == len(usable) - len(got)
    assert not any(held_out(events[i].prompt, 0.25, TEST_KEY) for i in trained)
    kinds = {"thumbs": 0, "choice": 0}
    for i in trained:
        kinds[events[i].kind] += 1
    assert info["feedback"]["count"] == kinds
    gate = info["gate"]
    assert gate["passed"] and gate["n_prompts"] == sum(held_out(p, 0.25, TEST_KEY) for p in PROMPTS[:12]) >= 2
    assert {"win_rate", "ci_low", "ci_high", "n"} <= set(gate["reward_model"]) and "kl_to_v0" in gate
    log = [json.loads(x) for x in (learn / "versions.jsonl").read_text().splitlines()]
    assert [(x["event"], x["round"], x["version"]) for x in log] == [("promoted", 1, "v1")]
    assert log[0]["gate"]["reward_model"] == gate["reward_model"]
    state = json.loads((learn / "learn_state.json").read_text())
    assert state["watermark"] == max(events) and state["rounds_done"] == 1


def test_an_inverted_user_weighs_nothing_and_a_flood_is_cut(one_round):
    """Round 1 has no previous reward model: the consensus is cross-fitted (each user's verdicts
    against a reward model trained on the other fold's users). The inverted user disagrees with
    it on every verdict and gets weight 0 (status inverted); the honest users and the flooder
    agree on every verdict and weigh over 0.9 (trusted; e.g. at q = 0.75, 9 of 9 agreeing gives
    3^9 / (3^9 + 2^9 + 1) = 0.975); the flooder's verdicts over the cap are cut and counted."""
    fb = versions.version_info(one_round["learn"], "v1")["feedback"]
    per_user = fb["per_user"]
    assert fb["consensus"] == "crossfit" and fb["crossfit_agreement"] >= 0.6
    assert per_user["eve"]["weight"] == 0.0 and per_user["eve"]["status"] == "inverted"
    assert per_user["eve"]["agreed"] == 0 and per_user["eve"]["judged"] == per_user["eve"]["n"] > 0
    for user in ("alice", "bob", "carol", "flo"):
        assert per_user[user]["weight"] > 0.9 and per_user[user]["status"] == "trusted"
        assert per_user[user]["agreed"] == per_user[user]["judged"] > 0
    assert per_user["flo"]["n"] == CAP and per_user["flo"]["cut"] > 2 * CAP - 10
    assert all(per_user[u]["cut"] == 0 for u in ("alice", "bob", "carol", "eve"))
    assert fb["cut"] == per_user["flo"]["cut"]


def test_the_reward_model_learned_from_the_honest_users(one_round):
    """The round's reward model (trained with the inverted user at weight 0) scores the good
    reply of a training prompt above the bad one for most prompts."""
    from rlhfkit.rewards.sources import RewardModelSource

    from .conftest import bad, good

    state = json.loads((one_round["learn"] / "learn_state.json").read_text())
    rm = RewardModelSource.load(str(one_round["learn"] / state["reward_model"]))
    prompts = [p for p in PROMPTS[:12] if not held_out(p, 0.25, TEST_KEY)]
    k = [PROMPTS.index(p) for p in prompts]
    g = rm(prompts, [good(i) for i in k])
    b = rm(prompts, [bad(i) for i in k])
    assert float((g > b).float().mean()) >= 0.8


def test_nothing_to_do_without_enough_new_feedback(one_round, capsys):
    """A second ``--once`` with no verdict after the watermark runs no round."""
    assert run(one_round["config"]) == []
    assert "0 new verdicts of 4 needed" in capsys.readouterr().out
    assert versions.current_version(one_round["learn"]) == "v1"


def test_versions_lists_and_rollback_makes_an_older_version_current(one_round, tmp_path, capsys):
    """``learn versions`` lists v0 and v1 with their figures; ``learn rollback LEARN_DIR v0``
    makes v0 current and logs it; an unknown version is refused with exit 2 and the file named."""
    import shutil

    from rlhfkit.cli import main

    learn = tmp_path / "learn"
    shutil.copytree(one_round["learn"], learn)
    assert main(["learn", "versions", str(learn)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:2] == ["v0", "-"] and lines[2].split()[:4] == ["*", "v1", "v0", "1"]
    assert main(["learn", "rollback", str(learn), "v0", "--reason", "complaints"]) == 0
    assert versions.current_version(learn) == "v0"
    log = [json.loads(x) for x in (learn / "versions.jsonl").read_text().splitlines()]
    assert (log[-1]["event"], log[-1]["version"], log[-1]["from"], log[-1]["reason"]) == (
        "rollback",
        "v0",
        "v1",
        "complaints",
    )
    capsys.readouterr()
    assert main(["learn", "rollback", str(learn), "v9"]) == 2
    err = capsys.readouterr().err
    assert "versions/v9/version.json" in err and "Traceback" not in err
    assert versions.current_version(learn) == "v0"
    assert main(["learn", "versions", str(learn), "--json", "true"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(r["version"], r["current"]) for r in rows] == [("v0", True), ("v1", False)]
    assert main(["learn", "versions", str(learn)]) == 0
    assert "rollback v1 -> v0 (complaints)" in capsys.readouterr().out


def test_round_two_checks_users_against_the_previous_reward_model(one_round, tmp_path, tiny_base):
    """In round 2 (the learner's folder moved elsewhere) three honest users judge new prompts and
    zed inverts his verdicts on prompts nobody else judged, so no majority can check him: the
    consensus is round 1's reward model (it agrees with most of the round's verdicts), which zed
    disagrees with (weight 0, inverted) and the honest users agree with (over 0.9). The reward
    model is refit from round 1's; v2 is an adapter on v1; the gold judge's figures are in the
    gate's."""
    import shutil

    learn, db = tmp_path / "learn", tmp_path / "fb.db"
    shutil.copytree(one_round["learn"], learn)
    shutil.copy(one_round["db"], db)
    fill(str(db), {"alice": "honest", "bob": "honest", "carol": "honest"}, prompts=PROMPTS[12:18], start=12)
    fill(str(db), {"zed": "inverted"}, prompts=PROMPTS[18:24], start=18)
    [outcome] = run(
        tiny_config(
            learn, db, tiny_base, **{"defence.max_per_user": CAP, "gate.gold": "vader", "gate.min_gold_win_rate": 0.0}
        )
    )
    rdir = learn / "rounds" / "round-2"
    defence = json.loads((rdir / "defence" / "defence.json").read_text())
    assert defence["consensus"] == "reward_model" and defence["consensus_agreement"] >= 0.6
    zed = defence["per_user"]["zed"]
    assert (zed["weight"], zed["status"]) == (0.0, "inverted") and zed["judged"] == zed["n"] > 0
    for user in ("alice", "bob", "carol"):
        assert defence["per_user"][user]["weight"] > 0.9, (user, defence["per_user"][user])
    assert set(defence["per_user"]) == {"alice", "bob", "carol", "zed"}  # round 1's verdicts are not counted again
    reward = json.loads((rdir / "reward" / "stage.json").read_text())
    assert reward["outputs"]["start"] == str(learn / "rounds" / "round-1" / "reward" / "model")
    gate = json.loads((rdir / "gate" / "gate.json").read_text())
    assert {"win_rate", "candidate_mean", "current_mean"} <= set(gate["gold"])
    assert outcome["outcome"] == "promoted" and outcome["version"] == "v2"
    info = versions.version_info(learn, "v2")
    assert (info["parent"], info["adapter_on"], info["round"]) == ("v1", "v1", 2)
    assert info["feedback"]["per_user"]["zed"]["weight"] == 0.0


def test_versions_report_html_shows_rounds_weights_and_versions(one_round, tmp_path, capsys):
    """``learn versions LEARN_DIR --html FILE`` writes one self-contained page (inline SVG, no
    script, no reference of any kind, the same bytes each time): round 1 promoted v1 with its 5 users weighed 4 at 1/2 or more and 1 (the
    inverted eve) at 0, the flooder's cut verdicts, the feedback by kind of versions.jsonl; a
    refusal logged later is shown with its reason and a rollback is counted; the versions table
    has v0 and v1 with the current one marked."""
    import re
    import shutil

    from rlhfkit.cli import main
    from rlhfkit.learn import lineage
    from rlhfkit.learn.report import render_report

    learn = tmp_path / "learn"
    shutil.copytree(one_round["learn"], learn)
    lineage.append_log(
        learn,
        {
            "event": "refused",
            "round": 2,
            "version": None,
            "parent": "v1",
            "gate": {"kl_to_v0": 25.0, "reward_model": {"win_rate": 0.4}},
            "reasons": ["KL to v0 25.000 > 20.0"],
            "feedback_count": {"thumbs": 3},
        },
    )
    lineage.rollback(learn, "v0", "complaints")
    out = tmp_path / "report" / "versions.html"
    assert main(["learn", "versions", str(learn), "--html", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    page = out.read_text()
    assert page.count("<svg") == 1 and "<script" not in page
    # self-contained: no reference of any kind, not even to an id inside the page (url(#...),
    # xlink:href="#..."), which breaks when one SVG's ids meet another's; and the same bytes
    # for the same folder (no random ids, no date in the SVG's metadata)
    assert not re.search(r"<script|<link|<img|src=|href=|url\(|@import", page)
    assert "<dc:date>" not in page and render_report(learn) == page
    per_user = versions.version_info(learn, "v1")["feedback"]["per_user"]
    cut = per_user["flo"]["cut"]
    counts = versions.version_info(learn, "v1")["feedback"]["count"]
    rows = re.findall(r"<tr><td>[^<]*</td><td>(\d+)</td><td class='l'>(.*?)</td>.*?</tr>", page)
    assert [r[0] for r in rows] == ["1", "2"]
    assert "promoted v1" in rows[0][1] and "refused" in rows[1][1]
    assert f"<td>5 (4 / 0 / 1)</td><td>{cut}</td>" in page
    assert ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) in page
    assert "KL to v0 25.000 &gt; 20.0" in page and "1 promoted, 1 refused, 1 rollback(s)" in page
    assert "serving <b>v0</b>" in page
    assert re.search(r"<td>&#9679;</td><td class='l'>v0</td>", page) and "<td></td><td class='l'>v1</td>" in page


@pytest.mark.parametrize("when", ["gate", "version"])
def test_a_rollback_while_a_round_runs_refuses_its_candidate(one_round, tmp_path, tiny_base, when):
    """Round 2 starts from v1 (current); while it runs (after its gate, or after v2 is written
    but before it is current) the operator rolls back to v0. The candidate, trained on v1, is not
    promoted over the rollback: the round is refused with the reason in versions.jsonl and
    round.json, v0 stays current, and the round counts (its feedback is not read again). Refused
    after the gate, no v2 is written; refused at the last step, v2 stays written, not current, and
    `learn rollback v2` refuses it (never served)."""
    import shutil

    from rlhfkit.learn import lineage
    from rlhfkit.learn.round import add_stage_end_callback

    learn, db = tmp_path / "learn", tmp_path / "fb.db"
    shutil.copytree(one_round["learn"], learn)
    shutil.copy(one_round["db"], db)
    fill(str(db), {"alice": "honest", "bob": "honest", "carol": "honest"}, prompts=PROMPTS[12:18], start=12)
    remove = add_stage_end_callback(lambda stage: lineage.rollback(learn, "v0", "v1 hurts") if stage == when else None)
    try:
        [outcome] = run(tiny_config(learn, db, tiny_base, **{"defence.max_per_user": CAP, "gate.min_win_rate": 0.0}))
    finally:
        remove()
    assert outcome["outcome"] == "refused" and outcome["parent"] == "v1" and outcome["candidate"] == "v2"
    [reason] = outcome["reasons"]
    assert "served version changed while the round ran (v1 -> v0" in reason and "not promoted" in reason
    assert versions.current_version(learn) == "v0"
    assert (learn / "versions" / "v2").is_dir() == (when == "version")
    # the refused candidate's folder, gate passed, is no version to roll back to: it was never served
    with pytest.raises(versions.VersionError, match="v2 was never served" if when == "version" else "no such file"):
        lineage.rollback(learn, "v2")
    log = [json.loads(x) for x in (learn / "versions.jsonl").read_text().splitlines()]
    assert [(x["event"], x.get("round"), x["version"]) for x in log] == [
        ("promoted", 1, "v1"),
        ("rollback", None, "v0"),
        ("refused", 2, None),
    ]
    assert log[-1]["reasons"] == [reason] and log[-1]["gate"]["passed"]
    state = json.loads((learn / "learn_state.json").read_text())
    assert state["rounds_done"] == 2 and run(tiny_config(learn, db, tiny_base)) == []


def test_a_candidate_rolled_back_before_its_promotion_was_logged_stays_rolled_back(one_round, tmp_path, tiny_base):
    """A candidate made current and rolled back by the operator before the round logged its
    promotion (the learner killed in between) is not made current again when the round goes on:
    the round is refused with that reason and the operator's version stays current."""
    import shutil

    from rlhfkit.learn import lineage
    from rlhfkit.learn.round import add_stage_end_callback

    learn, db = tmp_path / "learn", tmp_path / "fb.db"
    shutil.copytree(one_round["learn"], learn)
    shutil.copy(one_round["db"], db)
    fill(str(db), {"alice": "honest", "bob": "honest", "carol": "honest"}, prompts=PROMPTS[12:18], start=12)

    def promoted_then_rolled_back(stage):
        if stage == "version":  # what a learner killed after promote, before its log line, leaves
            versions.promote(learn, "v2", expect_current="v1")
            lineage.rollback(learn, "v1", "v2 hurts")

    remove = add_stage_end_callback(promoted_then_rolled_back)
    try:
        [outcome] = run(tiny_config(learn, db, tiny_base, **{"defence.max_per_user": CAP, "gate.min_win_rate": 0.0}))
    finally:
        remove()
    assert outcome["outcome"] == "refused"
    assert outcome["reasons"] == ["v2 was rolled back by an operator after it was made current; not promoted again"]
    assert versions.current_version(learn) == "v1"
    log = [json.loads(x) for x in (learn / "versions.jsonl").read_text().splitlines()]
    assert [(x["event"], x["version"], x.get("from")) for x in log] == [
        ("promoted", "v1", None),
        ("rollback", "v1", "v2"),
        ("refused", None, None),
    ]
