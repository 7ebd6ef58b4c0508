"""The discriminator-style reward (``rlhfkit reward discriminator``): demonstrations (a fixed
phrase, ``sft_file``) against a randomly initialised tiny policy's responses; the classifier must
tell them apart on held-out prompts, its report must be what its scores say, its logit must work
as an ``rm:`` reward, and a rerun must reuse the samples and the finished classifier."""

import json

import pytest

from rlhfkit.recipes.discriminator import DiscriminatorConfig, load_demonstrations
from rlhfkit.training.config import ConfigError

from .conftest import run_cli, write_jsonl


def test_demonstrations_against_the_policy(tmp_path, sft_file, tiny_policy_dir, tiny_encoder_rm_dir):
    out = tmp_path / "disc"
    args = [
        "reward",
        "discriminator",
        "--data",
        str(sft_file),
        "--policy",
        str(tiny_policy_dir),
        "--output_dir",
        str(out),
        "--samples_per_prompt",
        "2",
        "--max_new_tokens",
        "8",
        "--eval_fraction",
        "0.25",
        "--reward.model",
        str(tiny_encoder_rm_dir),
        "--reward.epochs",
        "4",
        "--reward.learning_rate",
        "2e-3",
        "--reward.max_length",
        "48",
        "--threads",
        "1",
    ]
    r = run_cli(args)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "discriminator.json").read_text())

    train = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    held = [json.loads(x) for x in (out / "heldout.jsonl").read_text().splitlines()]
    # 48 demonstrations, a quarter held out by prompt, two policy responses for each
    assert (report["train_demonstrations"], report["heldout_demonstrations"]) == (36, 12)
    assert sum(x["label"] for x in held) == 12 and sum(not x["label"] for x in held) == 24
    # in training each demonstration comes twice, once per policy response: balanced classes
    assert sum(x["label"] for x in train) == 72 and sum(not x["label"] for x in train) == 72
    assert not {x["prompt"] for x in train} & {x["prompt"] for x in held}

    # the report is what the classifier's scores say, recomputed here from the rm: reward
    from rlhfkit.rewards import build_reward

    s = build_reward(f"rm:{out / 'model'}", max_length=48)(
        [x["prompt"] for x in held], [x["completion"] for x in held]
    ).tolist()
    right_human = sum(v > 0 for v, x in zip(s, held) if x["label"])
    right_policy = sum(v < 0 for v, x in zip(s, held) if not x["label"])
    assert report["accuracy"] == pytest.approx((right_human / 12 + right_policy / 24) / 2)  # balanced
    human = {x["demo"]: v for v, x in zip(s, held) if x["label"]}
    wins = [human[x["demo"]] > v for v, x in zip(s, held) if not x["label"]]
    assert report["demonstration_preferred"] == pytest.approx(sum(wins) / 24)
    # and it learned: a fixed phrase against a random model's tokens is easy to tell apart
    assert report["accuracy"] >= 0.9 and report["demonstration_preferred"] >= 0.9
    assert report["mean_logit_demonstrations"] > 0 > report["mean_logit_policy"]
    assert "held-out balanced accuracy" in r.stdout

    # rerun with the same settings: samples reused, the finished classifier kept
    samples_before = (out / "samples.jsonl").read_text()
    again = run_cli(args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "policy responses reused" in again.stdout
    assert (out / "samples.jsonl").read_text() == samples_before
    assert json.loads((out / "discriminator.json").read_text())["accuracy"] == report["accuracy"]
    assert "trains afresh" not in again.stdout

    # a policy response that came out empty is left out (the store of thumbs holds no empty
    # text), and a changed training file retrains the classifier instead of keeping the old one
    rows = [json.loads(x) for x in samples_before.splitlines()]
    rows[0]["response"] = ""
    (out / "samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    third = run_cli(args)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "1 of 96 policy responses are empty and left out" in third.stdout and "trains afresh" in third.stdout
    report3 = json.loads((out / "discriminator.json").read_text())
    assert report3["empty_policy_responses"] == 1
    n_policy = sum(not json.loads(x)["label"] for x in (out / "train.jsonl").read_text().splitlines())
    n_held = report3["heldout_policy_responses"]
    assert n_policy + n_held == 95


def test_conversations_and_bad_settings_are_refused(tmp_path):
    convo = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"prompt": "a", "completion": "b"},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        ],
    )
    with pytest.raises(ConfigError, match="record 2 is a conversation"):
        load_demonstrations(DiscriminatorConfig(data=str(convo)))
    cfg = DiscriminatorConfig()
    cfg.reward.objective = "pairwise"
    with pytest.raises(ValueError, match="reward.objective"):
        cfg.validate()
    with pytest.raises(ValueError, match="eval_fraction"):
        DiscriminatorConfig(eval_fraction=0).validate()


def test_a_prompt_with_two_demonstrations_stays_on_one_side(tmp_path, tiny_policy_dir, tiny_encoder_rm_dir):
    import random

    from .conftest import sentence

    rng = random.Random(5)
    prompts = [sentence(rng, 4) for _ in range(20)]
    demos = write_jsonl(
        tmp_path / "d.jsonl",
        [{"prompt": p, "completion": f" so it is {w} ."} for p in prompts for w in ("red", "blue")],
    )
    args = [
        "reward",
        "discriminator",
        "--data",
        str(demos),
        "--policy",
        str(tiny_policy_dir),
        "--output_dir",
        str(tmp_path / "disc"),
        "--max_new_tokens",
        "6",
        "--eval_fraction",
        "0.25",
        "--reward.model",
        str(tiny_encoder_rm_dir),
        "--reward.epochs",
        "1",
        "--reward.max_length",
        "48",
        "--threads",
        "1",
    ]
    r = run_cli(args)
    assert r.returncode == 0, r.stderr[-3000:]
    train = [json.loads(x) for x in (tmp_path / "disc" / "train.jsonl").read_text().splitlines()]
    held = [json.loads(x) for x in (tmp_path / "disc" / "heldout.jsonl").read_text().splitlines()]
    assert not {x["prompt"] for x in train} & {x["prompt"] for x in held}
    assert sum(x["label"] for x in held) == 10  # 5 of 20 prompts, both of their demonstrations
    # other classifier settings in the same folder: refused, naming the flag as this command spells it
    again = run_cli(args + ["--reward.learning_rate", "1e-3"])
    assert again.returncode != 0 and "--reward.resume false" in again.stderr
