"""Win rate (ties as half, bootstrap intervals), sequence-level KL, and ``rlhfkit eval`` end to end
with tiny models: an offline judge, and people in the feedback app (tasks created, verdicts read
back into a win rate)."""

import json
import math

import pytest
import torch

from rlhfkit.core.kl import sequence_kl
from rlhfkit.eval.winrate import (
    bootstrap_mean,
    generate_responses,
    pair_outcomes,
    win_rate,
)
from rlhfkit.rollout import rollout_logprobs


def test_outcomes_and_win_rate_by_hand():
    o = pair_outcomes([3, 1, 2, 2.05], [1, 2, 2, 2.0], tie_eps=0.1)
    assert o.tolist() == [1.0, 0.0, 0.5, 0.5]
    r = win_rate(o, n_boot=200, seed=0)
    assert r["win_rate"] == pytest.approx(0.5)  # (1 + 0 + 1/2 + 1/2) / 4
    assert (r["wins"], r["ties"], r["losses"], r["n"]) == (1, 2, 1, 4)
    assert 0.0 <= r["ci_low"] <= 0.5 <= r["ci_high"] <= 1.0
    assert win_rate([1.0] * 5, n_boot=50) == {
        "win_rate": 1.0,
        "ci_low": 1.0,
        "ci_high": 1.0,
        "wins": 5,
        "ties": 0,
        "losses": 0,
        "n": 5,
    }
    with pytest.raises(ValueError):
        pair_outcomes([1, 2], [1])


def test_bootstrap_interval_matches_normal_approximation():
    # 400 fair coin flips: the mean's standard error is 0.5 / 20 = 0.025, so the 95% interval is
    # about mean +- 1.96 * 0.025 = +- 0.049
    v = torch.tensor([1.0, 0.0] * 200)
    mean, lo, hi = bootstrap_mean(v, n_boot=2000, seed=1)
    assert mean == 0.5
    assert lo == pytest.approx(0.5 - 0.049, abs=0.008) and hi == pytest.approx(0.5 + 0.049, abs=0.008)
    assert bootstrap_mean(v, n_boot=2000, seed=1) == (mean, lo, hi)  # deterministic
    assert all(math.isnan(x) for x in bootstrap_mean([]))


def test_sequence_kl_by_hand():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]])
    ref = torch.tensor([[-1.5, -2.0, -1.0], [-1.0, -1.0, -9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    # row 0: 0.5 + 0 (third token masked); row 1: 0.5 + 0.5 + 8.5
    assert sequence_kl(logp, ref, mask).tolist() == pytest.approx([0.5, 9.5])
    # k3 = e^{log r} - 1 - log r, log r = ref - logp: row 0 e^-0.5 - 0.5 = 0.10653 (+ 0);
    # row 1: 2 x 0.10653 + (e^-8.5 + 7.5 = 7.50020)
    assert sequence_kl(logp, ref, mask, "k3").tolist() == pytest.approx([0.106531, 7.713265], abs=1e-5)
    # a sample the reference likes more: k1 is negative there, k3 is not (log r = 1: e - 2)
    one = (torch.tensor([[-2.0]]), torch.tensor([[-1.0]]), torch.tensor([[1]]))
    assert sequence_kl(*one).item() == pytest.approx(-1.0)
    assert sequence_kl(*one, estimator="k3").item() == pytest.approx(0.718282, abs=1e-6)
    with pytest.raises(ValueError, match="k1 or k3"):
        sequence_kl(*one, estimator="k2")


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """A policy and a reference (two random tiny Llamas sharing one tokenizer) and a prompt file."""
    from rlhfkit.models import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer()
    root = tmp_path_factory.mktemp("eval_models")
    dirs = {}
    for name, seed in (("policy", 0), ("reference", 1)):
        d = root / name
        tiny_causal_lm(tok, hidden_size=32, num_layers=2, num_heads=2, seed=seed).save_pretrained(d)
        tok.save_pretrained(d)
        dirs[name] = str(d)
    prompts = [
        "The cat likes",
        "A small dog found",
        "My friend wrote",
        "The teacher opened",
        "Our team cleaned",
        "The old man watched",
        "A young girl bought",
        "The robot answered",
        "Every student shared",
        "The farmer fixed",
        "She explained",
        "He visited",
        "They painted",
        "Good morning,",
        "Thank you for",
        "The answer is",
        "Please write",
    ]
    pf = root / "prompts.jsonl"
    pf.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    held = root / "train_prompts.jsonl"  # excluded from evaluation
    held.write_text(json.dumps({"prompt": "Please write"}) + "\n")
    dirs["prompts"], dirs["train_prompts"] = str(pf), str(held)
    return dirs


def test_kl_of_a_model_to_itself_is_zero(tiny_dirs):
    from rlhfkit.models import load_policy
    from rlhfkit.rollout import SamplingConfig

    policy, tok = load_policy(tiny_dirs["policy"])
    ref, _ = load_policy(tiny_dirs["reference"])
    (ro,) = generate_responses(
        policy, tok, ["The cat likes", "Hello"], SamplingConfig(max_new_tokens=6, temperature=0.8), seed=3, batch_size=4
    )
    same = sequence_kl(ro.logprobs, rollout_logprobs(policy, ro, 0.8), ro.response_mask)
    assert same.abs().max().item() < 1e-4
    other = sequence_kl(ro.logprobs, rollout_logprobs(ref, ro, 0.8), ro.response_mask)
    assert other.abs().max().item() > 1e-3


def test_eval_with_offline_judges(tiny_dirs, tmp_path):
    from rlhfkit.eval.cli_eval import EvalConfig, run
    from rlhfkit.rewards import build_reward

    out = tmp_path / "eval"
    c = EvalConfig(
        policy=tiny_dirs["policy"],
        reference=tiny_dirs["reference"],
        prompts=tiny_dirs["prompts"],
        exclude_prompts=tiny_dirs["train_prompts"],
        max_prompts=0,
        judge="length",
        gold="vader",
        max_new_tokens=8,
        batch_size=8,
        n_boot=200,
        output=str(out),
    )
    res = run(c)
    assert res["prompts"] == 16  # 17 prompts minus the held-out training prompt
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert "Please write" not in {s["prompt"] for s in samples}
    # the win rate is recomputed by hand from the stored responses and the judge
    prompts = [s["prompt"] for s in samples]
    length = build_reward("length")
    pl, rl = length(prompts, [s["policy"] for s in samples]), length(prompts, [s["reference"] for s in samples])
    expect = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(pl.tolist(), rl.tolist())) / 16
    wr = res["win_rate"]
    assert wr["win_rate"] == pytest.approx(expect) and wr["ci_low"] <= expect <= wr["ci_high"]
    assert wr["wins"] + wr["ties"] + wr["losses"] == 16
    gold = res["gold"]
    assert gold["judge"] == "vader"
    assert gold["policy"]["mean"] == pytest.approx(sum(s["gold_policy"] for s in samples) / 16)
    assert gold["gain"]["mean"] == pytest.approx(gold["policy"]["mean"] - gold["reference"]["mean"])
    assert res["kl"]["mean"] == pytest.approx(sum(s["kl"] for s in samples) / 16)
    assert res["kl_k3"]["mean"] >= 0 and res["kl_k3"]["ci_low"] >= 0  # k3 is never negative
    assert json.loads((out / "eval.json").read_text())["win_rate"]["n"] == 16

    # policy == reference: KL 0 exactly up to float noise
    same = run(
        EvalConfig(
            policy=tiny_dirs["policy"],
            reference=tiny_dirs["policy"],
            prompts=tiny_dirs["prompts"],
            max_prompts=4,
            judge="length",
            max_new_tokens=4,
            n_boot=50,
        )
    )
    assert abs(same["kl"]["mean"]) < 1e-4


def test_eval_shows_a_bar_over_its_scoring_passes(tiny_dirs, monkeypatch, capsys):
    """After sampling, the scoring (the reference's log-probs chunk by chunk, then the judge and
    the gold judge over each model's replies) is counted on a bar: 4 prompts in chunks of 2 are
    2 KL passes + 2 judge passes + 2 gold passes."""
    from rlhfkit.eval.cli_eval import EvalConfig, run

    monkeypatch.delenv("RLHFKIT_NO_PROGRESS", raising=False)
    run(
        EvalConfig(
            policy=tiny_dirs["policy"],
            reference=tiny_dirs["reference"],
            prompts=tiny_dirs["prompts"],
            max_prompts=4,
            judge="length",
            gold="vader",
            max_new_tokens=4,
            batch_size=2,
            n_boot=20,
        )
    )
    err = capsys.readouterr().err
    assert "eval: scoring" in err and "6/6" in err.split("eval: scoring")[-1]


def test_people_judge_round_trip(tiny_dirs, tmp_path):
    """judge=people makes pairwise tasks (order randomised by the app); simulated people who
    always prefer the policy's response give win rate 1 (ties where both texts are equal)."""
    from rlhfkit.eval.cli_eval import EvalConfig, LeaderboardConfig, run, run_leaderboard
    from rlhfkit.feedback import db
    from rlhfkit.feedback.auth import create_user
    from rlhfkit.feedback.queue import next_task, submit_label

    fdb = str(tmp_path / "fb.db")
    out = tmp_path / "people"
    res = run(
        EvalConfig(
            policy=tiny_dirs["policy"],
            reference=tiny_dirs["reference"],
            prompts=tiny_dirs["prompts"],
            max_prompts=16,
            judge="people",
            db=fdb,
            project="cmp",
            max_new_tokens=6,
            n_boot=100,
            output=str(out),
        )
    )
    assert res["people"]["items"] == 16 and "win_rate" not in res
    policy_text = {
        json.loads(x)["prompt"]: json.loads(x)["policy"] for x in (out / "samples.jsonl").read_text().splitlines()
    }

    store = db.Store(fdb)
    uid = store.write(lambda c: create_user(c, "alice", "password-123", "labeler"))
    seen_positions, ties = set(), 0
    while True:
        task = store.write(lambda c: next_task(c, uid))
        if task is None:
            break
        texts = [r["text"] for r in task["responses"]]
        want = policy_text[task["prompt"]] or "(empty response)"
        if texts[0] == texts[1]:
            choice, ties = "tie", ties + 1
        else:
            choice = task["responses"][texts.index(want)]["key"]
            seen_positions.add(choice)
        store.write(lambda c: submit_label(c, uid, task["task_id"], {"choice": choice}))
    store.close()
    assert seen_positions == {"A", "B"}  # the policy's response was shown on both sides

    got = run(EvalConfig(collect="cmp", db=fdb, n_boot=100))["people"]
    assert got["n"] == 16 and got["ties"] == ties and got["losses"] == 0
    assert got["win_rate"] == pytest.approx((16 - ties + 0.5 * ties) / 16)
    # the same human verdicts as a two-model leaderboard
    rows = run_leaderboard(LeaderboardConfig(project="cmp", db=fdb, n_boot=50, anchor="reference"))
    assert [r["model"] for r in rows] == ["policy", "reference"] and rows[1]["rating"] == pytest.approx(1000)


def test_cli_eval_leaderboard_and_errors(tiny_dirs, tmp_path, capsys):
    from rlhfkit.cli import main

    out = tmp_path / "lb"
    rc = main(
        [
            "eval",
            "leaderboard",
            "--models",
            f"a={tiny_dirs['policy']},{tiny_dirs['reference']}",
            "--prompts",
            tiny_dirs["prompts"],
            "--max_prompts",
            "6",
            "--judge",
            "length",
            "--max_new_tokens",
            "5",
            "--n_boot",
            "50",
            "--anchor",
            "a",
            "--output",
            str(out),
        ]
    )
    assert rc == 0
    board = json.loads((out / "leaderboard.json").read_text())
    assert board["battles"] == 6 and {r["model"] for r in board["rows"]} == {"a", "reference"}
    assert "Bradley-Terry leaderboard" in capsys.readouterr().out
    # a missing project is a clean command-line error, not a traceback
    from rlhfkit.feedback.db import Store

    Store(str(tmp_path / "x.db")).close()  # an empty store
    assert main(["eval", "--collect", "nope", "--db", str(tmp_path / "x.db")]) == 2
    assert "no feedback project named 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["eval", "--collect", "cmp"], ["eval", "leaderboard", "--project", "cmp"]])
def test_reading_verdicts_from_a_missing_sqlite_file_is_refused_and_creates_nothing(tmp_path, capsys, argv):
    from rlhfkit.cli import main

    missing = tmp_path / "x" / "none.db"
    assert main(argv + ["--db", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"field 'db': no feedback store at {missing} (the SQLite file does not exist)" in err
    assert not missing.parent.exists()


def test_gold_summary_counts_a_win_by_the_judges_direction():
    """Three prompts, policy scores [0.1, 0.2, 0.3] against reference [0.5, 0.6, 0.1]: the policy
    scores higher on one prompt, lower on two. Higher-is-better (vader): win rate 1/3; toxicity
    (lower is better): 2/3. The gain is policy - reference either way: (-0.4 - 0.4 + 0.2) / 3."""
    from rlhfkit.eval.cli_eval import gold_summary

    pol, ref = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.5, 0.6, 0.1])
    vader = gold_summary("vader", pol, ref, n_boot=50, seed=0)
    tox = gold_summary("toxicity", pol, ref, n_boot=50, seed=0)
    assert (vader["win_rate"]["wins"], vader["win_rate"]["losses"]) == (1, 2) and not vader["lower_is_better"]
    assert (tox["win_rate"]["wins"], tox["win_rate"]["losses"]) == (2, 1) and tox["lower_is_better"]
    assert tox["win_rate"]["win_rate"] == pytest.approx(2 / 3)
    assert vader["gain"]["mean"] == pytest.approx(tox["gain"]["mean"]) == pytest.approx(-0.2)
    assert gold_summary("-toxicity", -pol, -ref, n_boot=50, seed=0)["win_rate"]["wins"] == 2  # negated: higher wins


def test_bootstrap_resamples_whole_clusters():
    """20 labels on 2 items, 10 people each agreeing within an item (all wins on one, all losses
    on the other): the resampled mean is 0, 1/2 or 1 (items drawn twice, once each, or the other
    twice), so the 95% interval spans [0, 1]; taken as 20 independent labels it would be narrow."""
    from rlhfkit.eval.winrate import bootstrap_mean

    values = [1.0] * 10 + [0.0] * 10
    mean, lo, hi = bootstrap_mean(values, n_boot=2000, seed=0, clusters=["x"] * 10 + ["y"] * 10)
    assert (mean, lo, hi) == (0.5, 0.0, 1.0)
    _, lo_iid, hi_iid = bootstrap_mean(values, n_boot=2000, seed=0)
    assert 0.2 < lo_iid and hi_iid < 0.8
    assert win_rate(values, n_boot=200, clusters=["x"] * 10 + ["y"] * 10)["wins"] == 10
    with pytest.raises(ValueError, match="cluster ids"):
        bootstrap_mean(values, clusters=["x"])
