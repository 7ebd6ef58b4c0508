"""Tiny-model runs that must learn, and the command line's help and error behaviour."""

import json

import pytest

from rlhfkit.cli import main
from rlhfkit.recipes.reward import RewardConfig
from rlhfkit.recipes.reward import run as reward_run
from rlhfkit.recipes.sft import SFTConfig
from rlhfkit.recipes.sft import run as sft_run
from rlhfkit.training.config import load_config

from .conftest import run_cli, write_jsonl


def test_sft_lowers_held_out_loss(tmp_path, tiny_policy_dir, sft_file):
    cfg = load_config(
        SFTConfig,
        None,
        [
            "--model",
            str(tiny_policy_dir),
            "--data",
            str(sft_file),
            "--output_dir",
            str(tmp_path),
            "--epochs",
            "10",
            "--batch_size",
            "8",
            "--micro_batch_size",
            "8",
            "--learning_rate",
            "1e-2",
            "--eval_fraction",
            "0.125",
            "--max_length",
            "64",
            "--tensorboard",
            "false",
        ],
    )
    metrics = sft_run(cfg)
    assert metrics["eval_loss"] < 0.5 * metrics["eval_loss_before"], metrics
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "model")  # the output is a HF folder


def test_reward_model_learns_held_out_preference(tmp_path, tiny_encoder_rm_dir, pair_file, capsys):
    cfg = load_config(
        RewardConfig,
        None,
        [
            "--model",
            str(tiny_encoder_rm_dir),
            "--data",
            str(pair_file),
            "--output_dir",
            str(tmp_path / "rm"),
            "--epochs",
            "8",
            "--batch_size",
            "16",
            "--micro_batch_size",
            "16",
            "--learning_rate",
            "3e-3",
            "--eval_fraction",
            "0.25",
            "--max_length",
            "48",
            "--tensorboard",
            "false",
        ],
    )
    metrics = reward_run(cfg)
    assert metrics["eval_accuracy"] >= 0.9, metrics
    # the last line says where the model is and how it did on the held-out quarter (40 of 160 pairs)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == (
        f"reward: saved {tmp_path / 'rm' / 'model'}; held-out accuracy {metrics['eval_accuracy']:.3f} "
        f"on 40 pairs, ECE {metrics['eval_ece']:.3f}"
    ), last
    rows = [json.loads(l) for l in (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_ece" in r for r in rows)
    # the evaluation command reads the saved model back and agrees
    report_path = tmp_path / "report.json"
    assert (
        main(
            [
                "reward",
                "eval",
                "--model",
                str(tmp_path / "rm" / "model"),
                "--data",
                str(pair_file),
                "--max_length",
                "48",
                "--output",
                str(report_path),
            ]
        )
        == 0
    )
    report = json.loads(report_path.read_text())
    assert report["overall"]["pairs"] == 160 and report["overall"]["accuracy"] >= 0.9


def test_reward_validation_split_chooses_and_held_out_is_scored_once(tmp_path, tiny_encoder_rm_dir, pair_file):
    """With validation_fraction, choices (best_metric) look only at a part of the training data;
    the held-out set is scored once, on the chosen weights."""
    out = tmp_path / "rm"
    cfg = load_config(
        RewardConfig,
        None,
        [
            "--model",
            str(tiny_encoder_rm_dir),
            "--data",
            str(pair_file),
            "--output_dir",
            str(out),
            "--epochs",
            "2",
            "--batch_size",
            "16",
            "--micro_batch_size",
            "8",
            "--learning_rate",
            "3e-3",
            "--eval_fraction",
            "0.25",
            "--validation_fraction",
            "0.25",
            "--eval_every",
            "3",
            "--best_metric",
            "val_loss",
            "--max_length",
            "48",
            "--tensorboard",
            "false",
        ],
    )
    metrics = reward_run(cfg)
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r and "best_step" not in r]
    held = [r for r in rows if "eval_accuracy" in r]
    # 160 pairs: 40 held out, 30 validation, 90 training -> 5 steps per epoch, 10 steps;
    # validation after steps 3, 6, 9 and at the end (10)
    assert [s for s, _ in val] == [3, 6, 9, 10]
    best_step, best_loss = min(val, key=lambda sv: sv[1])
    assert metrics["best_step"] == best_step and metrics["best_val_loss"] == pytest.approx(best_loss)
    assert len(held) == 1 and held[0]["eval_pairs"] == 40
    assert metrics["eval_accuracy"] == held[0]["eval_accuracy"]


def test_split_seed_keeps_the_held_out_pairs_across_member_seeds(tmp_path, tiny_encoder_rm_dir, pair_file, monkeypatch):
    """Ensemble members (different seeds) must hold out the same pairs: --split_seed fixes the split."""
    import rlhfkit.recipes.reward as reward_recipe

    seen = []
    real = reward_recipe.evaluate_pairs

    def spy(model, tokenizer, pairs, *a, **kw):
        seen.append([(p.prompt, p.chosen) for p in pairs])
        return real(model, tokenizer, pairs, *a, **kw)

    monkeypatch.setattr(reward_recipe, "evaluate_pairs", spy)
    for seed, split in ((1, 0), (2, 0), (2, -1)):
        reward_run(
            load_config(
                RewardConfig,
                None,
                [
                    "--model",
                    str(tiny_encoder_rm_dir),
                    "--data",
                    str(pair_file),
                    "--output_dir",
                    str(tmp_path / f"{seed}{split}"),
                    "--max_steps",
                    "1",
                    "--batch_size",
                    "8",
                    "--micro_batch_size",
                    "8",
                    "--eval_fraction",
                    "0.25",
                    "--seed",
                    str(seed),
                    "--split_seed",
                    str(split),
                    "--max_length",
                    "48",
                    "--tensorboard",
                    "false",
                ],
            )
        )
    assert len(seen) == 3 and len(seen[0]) == 40
    assert seen[0] == seen[1]  # seeds 1 and 2, split seed 0: the same held-out pairs
    assert seen[2] != seen[1]  # split_seed -1 follows the seed (2): another split


def test_max_train_uses_a_prefix_of_the_training_part_and_the_same_held_out_set(
    tmp_path, tiny_encoder_rm_dir, pair_file
):
    """Learning curves: --max_train 30 trains on 30 of the 120 training pairs (30 // 8 = 3 steps an
    epoch: the last, partial batch is dropped, against 15 with all of them) and scores the same 40
    held-out pairs."""
    steps = {}
    for n in (0, 30):
        out = tmp_path / f"rm{n}"
        metrics = reward_run(
            load_config(
                RewardConfig,
                None,
                [
                    "--model",
                    str(tiny_encoder_rm_dir),
                    "--data",
                    str(pair_file),
                    "--output_dir",
                    str(out),
                    "--epochs",
                    "1",
                    "--batch_size",
                    "8",
                    "--micro_batch_size",
                    "8",
                    "--eval_fraction",
                    "0.25",
                    "--max_train",
                    str(n),
                    "--max_length",
                    "48",
                    "--tensorboard",
                    "false",
                ],
            )
        )
        rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
        steps[n] = max(r["step"] for r in rows if "step" in r)
        assert metrics["eval_pairs"] == 40
    assert steps == {0: 15, 30: 3}
    with pytest.raises(ValueError, match="max_train"):
        load_config(RewardConfig, None, ["--max_train", "-1"])


@pytest.mark.parametrize(
    "objective,rows",
    [
        ("regression", [{"prompt": "p", "completion": f" good {i}", "rating": 1 + i % 7} for i in range(24)]),
        ("classification", [{"prompt": "p", "completion": f" ok {i}", "label": i % 2 == 0} for i in range(24)]),
    ],
)
def test_rating_and_thumbs_objectives_train(tmp_path, tiny_encoder_rm_dir, objective, rows):
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = load_config(
        RewardConfig,
        None,
        [
            "--model",
            str(tiny_encoder_rm_dir),
            "--data",
            str(data),
            "--objective",
            objective,
            "--output_dir",
            str(tmp_path / "out"),
            "--max_steps",
            "2",
            "--batch_size",
            "8",
            "--micro_batch_size",
            "4",
            "--tensorboard",
            "false",
        ],
    )
    metrics = reward_run(cfg)
    assert metrics["loss"] > 0 and (tmp_path / "out" / "model" / "config.json").exists()


def test_help_lists_every_command_and_field(capsys):
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    for command in ("sft", "reward train", "reward eval", "pipeline"):
        assert command in top
    with pytest.raises(SystemExit) as e:
        main(["sft", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--learning_rate" in text and "--lora.r" in text and "prompt tokens masked" in text


def test_bad_data_gives_file_line_field_without_traceback(tmp_path, tiny_policy_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": 3}\n')
    r = run_cli(["sft", "--model", str(tiny_policy_dir), "--data", str(bad), "--output_dir", str(tmp_path / "o")])
    assert r.returncode == 2
    assert "bad.jsonl:2" in r.stderr and "completion" in r.stderr and "Traceback" not in r.stderr


def test_bad_config_value_is_refused(tmp_path):
    r = run_cli(["sft", "--batch_size", "many", "--output_dir", str(tmp_path)])
    assert r.returncode == 2 and "field 'batch_size'" in r.stderr and "Traceback" not in r.stderr


def test_ranking_and_rewrite_files_are_accepted(tmp_path):
    """A K-way ranking file trains a reward model as its pairs; a rewrite file is SFT data."""
    from rlhfkit.data import CompletionRecord, PreferencePair
    from rlhfkit.data.loading import load_training_records

    rankings = write_jsonl(
        tmp_path / "r.jsonl",
        [
            {"prompt": "p", "responses": ["best", "mid", "worst"], "ranks": [0, 1, 2]},
            {"prompt": "q", "responses": ["x", "y"], "ranks": [1, 0]},
        ],
    )
    pairs = load_training_records(str(rankings), "pairs")
    # 3 responses with distinct ranks -> 3 pairs; 2 responses -> 1 pair
    assert len(pairs) == 4 and all(isinstance(p, PreferencePair) for p in pairs)
    assert ("p", "best", "worst") in {(p.prompt, p.chosen, p.rejected) for p in pairs}
    assert ("q", "y", "x") in {(p.prompt, p.chosen, p.rejected) for p in pairs}
    rewrites = write_jsonl(tmp_path / "w.jsonl", [{"prompt": "p", "original": "bad", "rewrite": "good"}])
    demos = load_training_records(str(rewrites), "sft")
    assert demos == [CompletionRecord(prompt="p", completion="good")]


@pytest.mark.parametrize("backbone", ["encoder", "causal"])
def test_linear_probe_fits_the_head_on_the_backbones_own_features(
    tmp_path, tiny_encoder_rm_dir, tiny_causal_rm_dir, pair_file, backbone
):
    """LP-FT's first stage: the features are exactly what the head reads (head(features) equals
    the model's score, causal backbones at the last real token), only the head changes, and the
    probed head ranks the training pairs better than the random one did."""
    import torch

    from rlhfkit.data.records import PreferencePair
    from rlhfkit.models import load_reward_model, reward_scores
    from rlhfkit.models.reward import score_head
    from rlhfkit.data.loading import load_training_records
    from rlhfkit.recipes.reward import encode_records, head_features, linear_probe, make_collate

    folder = tiny_encoder_rm_dir if backbone == "encoder" else tiny_causal_rm_dir
    cfg = load_config(
        RewardConfig,
        None,
        ["--model", str(folder), "--data", str(pair_file), "--max_length", "48", "--linear_probe_steps", "50"],
    )
    model, tok = load_reward_model(str(folder))
    records = load_training_records(str(pair_file), "pairs")
    assert isinstance(records[0], PreferencePair)
    train = encode_records(records[:96], tok, cfg)
    collate = make_collate(tok.pad_token_id, "pairwise")
    batch = collate(train[:8])
    head = score_head(model)
    with torch.no_grad():
        feats = head_features(model, [batch])
        torch.testing.assert_close(head(feats)[:, 0], reward_scores(model, batch["input_ids"], batch["attention_mask"]))
    body = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(("classifier", "score"))}
    stats = linear_probe(model, train, collate, cfg)
    assert stats["probe_loss_after"] < stats["probe_loss_before"]
    assert stats["probe_train_accuracy"] > 0.6
    for k, v in model.state_dict().items():
        if k in body:
            assert torch.equal(v, body[k]), k


def test_linear_probe_of_a_head_without_bias_leaves_the_model_at_the_probed_loss(
    tmp_path, tiny_causal_rm_dir, thumbs_file
):
    """A causal backbone's score layer has no bias; the probe must not fit one it cannot copy back
    (on thumbs, where a bias matters): the model's own loss after the probe is the probe's."""
    import torch

    from rlhfkit.core.losses import binary_feedback_loss
    from rlhfkit.models import load_reward_model
    from rlhfkit.models.reward import score_head
    from rlhfkit.data.loading import load_training_records
    from rlhfkit.recipes.reward import encode_records, head_features, linear_probe, make_collate

    cfg = load_config(
        RewardConfig,
        None,
        [
            "--model",
            str(tiny_causal_rm_dir),
            "--data",
            str(thumbs_file),
            "--objective",
            "classification",
            "--max_length",
            "48",
            "--linear_probe_steps",
            "50",
            "--linear_probe_l2",
            "0",
        ],
    )
    model, tok = load_reward_model(str(tiny_causal_rm_dir))
    assert score_head(model).bias is None
    train = encode_records(load_training_records(str(thumbs_file), "thumbs")[:96], tok, cfg)
    collate = make_collate(tok.pad_token_id, "classification")
    stats = linear_probe(model, train, collate, cfg)
    batches = [collate(train[i : i + 32]) for i in range(0, len(train), 32)]
    with torch.no_grad():
        scores = score_head(model)(head_features(model, batches))[:, 0]
        target = torch.cat([b["target"] for b in batches]).float()
        own = float(binary_feedback_loss(scores, target, reduction="mean"))
    assert stats["probe_loss_after"] < stats["probe_loss_before"]
    assert own == pytest.approx(stats["probe_loss_after"], rel=1e-4, abs=1e-5)


def test_reward_train_with_linear_probe_then_fine_tuning(tmp_path, tiny_encoder_rm_dir, pair_file, capsys):
    cfg = load_config(
        RewardConfig,
        None,
        [
            "--model",
            str(tiny_encoder_rm_dir),
            "--data",
            str(pair_file),
            "--output_dir",
            str(tmp_path / "rm"),
            "--epochs",
            "4",
            "--batch_size",
            "16",
            "--micro_batch_size",
            "16",
            "--learning_rate",
            "3e-3",
            "--eval_fraction",
            "0.25",
            "--max_length",
            "48",
            "--tensorboard",
            "false",
            "--linear_probe_steps",
            "50",
        ],
    )
    metrics = reward_run(cfg)
    assert "linear probe of the head" in capsys.readouterr().out
    assert metrics["eval_accuracy"] >= 0.9, metrics


def test_epochs_0_with_a_linear_probe_is_the_probe_alone(tmp_path, tiny_encoder_rm_dir, pair_file):
    """``--epochs 0 --linear_probe_steps N``: a reward model that is the frozen backbone and the
    probed head (cheap enough to refit every round of a loop). The saved backbone is the one it
    started from, the head is the probe's, and the held-out pairs are scored; ``--epochs 0``
    without a probe is still refused (nothing would be trained)."""
    import torch

    from rlhfkit.models import load_reward_model

    from .conftest import load_weights

    args = [
        "--model",
        str(tiny_encoder_rm_dir),
        "--data",
        str(pair_file),
        "--output_dir",
        str(tmp_path / "rm"),
        "--eval_fraction",
        "0.25",
        "--max_length",
        "48",
        "--tensorboard",
        "false",
        "--epochs",
        "0",
    ]
    with pytest.raises(ValueError, match="epochs"):
        load_config(RewardConfig, None, args).validate()
    cfg = load_config(RewardConfig, None, args + ["--linear_probe_steps", "50"])
    metrics = reward_run(cfg)
    assert metrics["step"] == 0 and metrics["probe_loss_after"] < metrics["probe_loss_before"]
    assert metrics["eval_pairs"] == 40 and 0.5 < metrics["eval_accuracy"] <= 1.0
    start, saved = load_weights(tiny_encoder_rm_dir), load_weights(tmp_path / "rm" / "model")
    body = [k for k in start if not k.startswith("classifier")]
    assert body and all(torch.equal(start[k], saved[k]) for k in body)
    assert not torch.equal(start["classifier.weight"], saved["classifier.weight"])
    load_reward_model(str(tmp_path / "rm" / "model"))  # loads as any trained reward model

    # a checkpoint left in the folder by a fine-tuning run is not taken for the probe
    (tmp_path / "rm2" / "checkpoint-3").mkdir(parents=True)
    cfg.output_dir = str(tmp_path / "rm2")
    again = reward_run(cfg)
    assert (
        again["probe_loss_after"] == metrics["probe_loss_after"] and again["eval_accuracy"] == metrics["eval_accuracy"]
    )


def test_plus_joins_training_sources_in_order(tmp_path):
    """``a+b`` reads a's records then b's (preference-model pretraining on several sets); a file
    whose own name contains '+' is still read as that file."""
    from rlhfkit.data.loading import load_training_records

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps({"prompt": "p", "chosen": "a1", "rejected": "a2"}) + "\n")
    b.write_text("".join(json.dumps({"prompt": "q", "chosen": f"b{i}", "rejected": "x"}) + "\n" for i in range(2)))
    joined = load_training_records(f"{a}+{b}", "pairs")
    assert [r.chosen for r in joined] == ["a1", "b0", "b1"]
    plus = tmp_path / "c+d.jsonl"
    plus.write_text(a.read_text())
    assert [r.chosen for r in load_training_records(str(plus), "pairs")] == ["a1"]


def test_held_out_summary_names_the_split_it_read_and_the_ties():
    from pathlib import Path

    from rlhfkit.recipes.reward import held_out_summary

    m = Path("out/model")
    assert held_out_summary({"val_accuracy": 0.5, "val_pairs": 10, "val_ties": 2}, m) == (
        "reward: saved out/model; validation accuracy 0.500 on 10 pairs (and 2 tied pairs, scored apart)"
    )
    # the held-out split wins over the validation split
    assert "held-out accuracy 0.700 on 20 pairs" in held_out_summary(
        {"val_accuracy": 0.5, "val_pairs": 10, "eval_accuracy": 0.7, "eval_pairs": 20}, m
    )
    assert held_out_summary({"loss": 0.1}, m).endswith(
        "no held-out pairs to score it on (give --eval_data FILE or --eval_fraction above 0)"
    )
    # thumbs / ratings: the summary does not ask for held-out data it would not score
    assert held_out_summary({"loss": 0.1}, m, "classification").endswith(
        "no held-out thumbs to score it on (give --eval_data FILE or --eval_fraction above 0)"
    )
    assert held_out_summary({"eval_mse": 0.01, "eval_spearman": 0.9, "eval_examples": 20}, m, "regression") == (
        "reward: saved out/model; held-out MSE 0.010 and Spearman 0.900 on 20 ratings"
    )
    assert held_out_summary({"val_accuracy": 0.8, "val_auc": 0.85, "val_examples": 5}, m, "classification") == (
        "reward: saved out/model; validation accuracy 0.800 and AUC 0.850 on 5 thumbs"
    )
