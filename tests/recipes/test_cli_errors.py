"""Bad command lines end with one `rlhfkit <command>: error: ...` line (exit 2), no traceback,
and a misspelt choice is refused instead of silently falling back to a default."""

import re

import pytest

from rlhfkit.cli import main


def _run(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def test_missing_model_path_is_an_error_not_a_traceback(capsys, tmp_path, sft_file):
    code, err = _run(
        capsys,
        [
            "sft",
            "--model",
            str(tmp_path / "no_such_model"),
            "--data",
            str(sft_file),
            "--output_dir",
            str(tmp_path / "o"),
            "--tensorboard",
            "false",
        ],
    )
    assert code == 2
    assert "rlhfkit sft: error:" in err and "no_such_model" in err and "no such file or folder" in err


def test_reward_eval_missing_model_path(capsys, tmp_path, pair_file):
    code, err = _run(capsys, ["reward", "eval", "--model", str(tmp_path / "nope"), "--data", str(pair_file)])
    assert code == 2 and "rlhfkit reward eval: error:" in err and "nope" in err


@pytest.mark.parametrize(
    "command,override,field",
    [
        (["sft"], ["--lr_schedule", "cosine"], "lr_schedule"),  # refused, not trained with a linear schedule
        (["sft"], ["--parallel", "zero3"], "parallel"),
        (["sft"], ["--warmup_ratio", "1.5"], "warmup_ratio"),
        (["sft"], ["--on_error", "ignore"], "on_error"),
        (["sft"], ["--eval_fraction", "1.5"], "eval_fraction"),
        (["sft"], ["--max_length", "0"], "max_length"),
        (["sft"], ["--epochs", "0", "--max_steps", "0"], "epochs' / 'max_steps"),  # the two together
        (["reward", "train"], ["--ties", "maybe"], "ties"),  # refused, not read as "keep"
        (["reward", "train"], ["--kind", "decoder"], "kind"),
        (["reward", "train"], ["--objective", "regression", "--normalise_ratings", "zscore"], "normalise_ratings"),
        (["reward", "train"], ["--normalise_ratings", "per_labeler"], "normalise_ratings"),  # pairs have no ratings
        (["reward", "eval"], ["--ties", "maybe"], "ties"),
    ],
)
def test_bad_choice_is_a_config_error(capsys, tmp_path, command, override, field):
    # the model / data do not exist: the config must be refused before anything is loaded
    code, err = _run(
        capsys,
        [
            *command,
            "--model",
            str(tmp_path / "m"),
            "--data",
            str(tmp_path / "d.jsonl"),
            *(["--output_dir", str(tmp_path / "o")] if command[-1] != "eval" else []),
            *override,
        ],
    )
    assert code == 2, err
    assert (f"fields '{field}'" if " / " in field else f"field '{field}'") in err, err
    assert ": error: command line: " in err, err  # the value came from the command line, not a file


def test_batch_larger_than_data_is_an_error(capsys, tmp_path, tiny_policy_dir, sft_file):
    # sft_file has 48 records, 42 after the 1/8 hold-out: a batch of 64 cannot be filled
    code, err = _run(
        capsys,
        [
            "sft",
            "--model",
            str(tiny_policy_dir),
            "--data",
            str(sft_file),
            "--output_dir",
            str(tmp_path / "o"),
            "--batch_size",
            "64",
            "--micro_batch_size",
            "8",
            "--eval_fraction",
            "0.125",
            "--max_length",
            "64",
            "--tensorboard",
            "false",
        ],
    )
    assert code == 2
    assert f"error: {sft_file}: 42 training examples (6 held out) for a batch of 64" in err


def test_resume_with_other_settings_is_refused(capsys, tmp_path, tiny_policy_dir, sft_file):
    base = [
        "sft",
        "--model",
        str(tiny_policy_dir),
        "--data",
        str(sft_file),
        "--output_dir",
        str(tmp_path / "o"),
        "--max_steps",
        "2",
        "--save_every",
        "1",
        "--batch_size",
        "4",
        "--micro_batch_size",
        "4",
        "--max_length",
        "32",
        "--tensorboard",
        "false",
    ]
    assert main(base) == 0
    assert (tmp_path / "o" / "checkpoint-1").is_dir()
    capsys.readouterr()
    # a changed learning rate would silently continue another run's weights and schedule
    code, err = _run(capsys, [*base, "--learning_rate", "1e-3"])
    assert code == 2 and "learning_rate" in err and "--resume false" in err, err
    # fields that do not change the result may differ; starting afresh is allowed
    assert main([*base, "--log_every", "2"]) == 0
    assert main([*base, "--learning_rate", "1e-3", "--resume", "false"]) == 0


@pytest.mark.parametrize(
    "argv,field,message",
    [
        (["grpo", "--reward", "vadr"], "reward", "unknown reward source 'vadr'"),
        (["ppo", "--reward", "2*vader+"], "reward", "empty term"),
        (["ppo", "--reward", "fn:no_such_pkg.mod:f"], "reward", "cannot import module 'no_such_pkg.mod'"),
        (["rloo", "--gold_reward", "frequency"], "gold_reward", "frequency:TEXT"),
        (["eval", "--judge", "vadr"], "judge", "unknown reward source 'vadr'"),
        (["eval", "leaderboard", "--models", "a,b", "--judge", "toxicty"], "judge", "unknown reward source 'toxicty'"),
        (["pipeline", "--quick", "--gold", "vadr"], "gold", "unknown reward source 'vadr'"),
        (["loop", "--quick", "--labeler_judge", "rm:"], "labeler_judge", "'rm:' needs"),
    ],
)
def test_misspelt_reward_spec_is_refused_before_anything_runs(capsys, tmp_path, argv, field, message):
    """A reward / judge spec is checked with the config: one error line naming the field, before
    a model, data set or stage folder is touched: no traceback, and no output folder (so no
    pipeline stage is left marked running)."""
    out = tmp_path / "o"
    code, err = _run(capsys, [*argv, "--output_dir", str(out)] if argv[0] != "eval" else argv)
    assert code == 2, err
    assert f"error: command line: field '{field}'" in err and message in err, err
    assert "Traceback" not in err and not out.exists()


def test_a_bad_value_in_the_config_file_is_blamed_on_its_line(capsys, tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text("name: x\nalgorithm: grpoo\n", encoding="utf-8")
    code, err = _run(capsys, ["pipeline", "--config", str(cfg), "--quick"])
    assert code == 2 and f"error: {cfg}:2: field 'algorithm': 'grpoo' is not one of" in err, err
    # the same file with the value overridden on the command line: the command line is blamed
    cfg.write_text("name: x\nalgorithm: grpo\n", encoding="utf-8")
    code, err = _run(capsys, ["pipeline", "--config", str(cfg), "--quick", "--algorithm", "grpoo"])
    assert code == 2 and "error: command line: field 'algorithm'" in err, err


def test_a_flag_without_its_value_is_refused(capsys, tmp_path):
    code, err = _run(
        capsys, ["sft", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "d.jsonl"), "--max_steps"]
    )
    assert code == 2 and "field 'max_steps': needs a value (--max_steps VALUE)" in err, err


def test_scoring_with_a_model_that_has_no_trained_reward_head_is_refused(
    capsys, tmp_path, tiny_policy_dir, tiny_causal_rm_dir, prompt_file
):
    """A causal LM (no score head in its checkpoint) as rm:PATH would score with a randomly
    initialised head: noise that looks like a reward. Refused; a saved reward model loads."""
    from rlhfkit.models import ModelLoadError, load_reward_model

    with pytest.raises(ModelLoadError, match="not a trained reward model"):
        load_reward_model(str(tiny_policy_dir), trained_head=True)
    load_reward_model(str(tiny_causal_rm_dir), trained_head=True)  # has its head
    load_reward_model(str(tiny_policy_dir))  # training a new reward model starts from a fresh head
    code, err = _run(
        capsys,
        [
            "grpo",
            "--model",
            str(tiny_policy_dir),
            "--prompts",
            str(prompt_file),
            "--reward",
            f"rm:{tiny_policy_dir}",
            "--output_dir",
            str(tmp_path / "g"),
            "--max_steps",
            "1",
            "--batch_size",
            "4",
            "--micro_batch_size",
            "4",
            "--max_new_tokens",
            "4",
            "--tensorboard",
            "false",
            "--threads",
            "1",
        ],
    )
    assert code == 2 and "not a trained reward model" in err and "rlhfkit reward train" in err, err


def test_top_help_lists_the_online_rl_commands_together(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    commands = [
        line.split()[0]
        for line in out.split("commands:\n", 1)[1].splitlines()
        if line.startswith("  ") and not line.startswith("   ")
    ]
    i = commands.index("ppo")
    assert commands[i : i + 4] == ["ppo", "grpo", "rloo", "reinforce"]
    assert "rlhfkit --version" in out


def test_version(capsys):
    import importlib.metadata

    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    # the installed distribution's version (pyproject.toml), as `rlhfkit X.Y.Z`
    assert out == f"rlhfkit {importlib.metadata.version('rlhfkit')}\n"
    assert re.fullmatch(r"rlhfkit \d+\.\d+\.\d+\n", out)


def _sft(tiny_policy_dir, sft_file, out, *extra):
    return [
        "sft",
        "--model",
        str(tiny_policy_dir),
        "--data",
        str(sft_file),
        "--output_dir",
        str(out),
        "--eval_fraction",
        "0.125",
        "--batch_size",
        "8",
        "--micro_batch_size",
        "8",
        "--max_length",
        "32",
        "--tensorboard",
        "false",
        "--threads",
        "1",
        *extra,
    ]


def test_a_finished_run_is_kept_not_silently_trained_again(capsys, tmp_path, tiny_policy_dir, sft_file):
    """Rerunning a finished run with the same settings leaves its model and metrics alone, though
    no checkpoint is kept at the end to resume from; other settings are refused naming the field;
    --resume false trains afresh."""
    import json

    out = tmp_path / "o"
    assert main(_sft(tiny_policy_dir, sft_file, out, "--max_steps", "2")) == 0
    weights = out / "model" / "model.safetensors"
    stamp, log = weights.stat().st_mtime_ns, (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(_sft(tiny_policy_dir, sft_file, out, "--max_steps", "2", "--log_every", "2")) == 0
    assert "holds this run, finished" in capsys.readouterr().out
    assert weights.stat().st_mtime_ns == stamp and (out / "metrics.jsonl").read_text() == log
    code, err = _run(capsys, _sft(tiny_policy_dir, sft_file, out, "--max_steps", "2", "--learning_rate", "1e-3"))
    assert code == 2 and "holds a finished sft run with other settings" in err and "learning_rate" in err, err
    assert weights.stat().st_mtime_ns == stamp
    assert (
        main(_sft(tiny_policy_dir, sft_file, out, "--max_steps", "2", "--learning_rate", "1e-3", "--resume", "false"))
        == 0
    )
    assert weights.stat().st_mtime_ns != stamp
    # the last of 2 linearly decaying steps ran at half the rate (the log shows the rate used)
    assert json.loads((out / "final_metrics.json").read_text())["lr"] == pytest.approx(5e-4)


@pytest.mark.parametrize(
    "damaged,damage",
    [
        ("final_metrics.json", lambda t: t[: len(t) // 2]),
        ("config.yaml", lambda t: t + b"\n  - ["),
        ("final_metrics.json", lambda t: b"\xff" + t),
    ],
)
def test_a_finished_run_with_an_unreadable_record_is_trained_again_from_its_checkpoint(
    capsys, tmp_path, tiny_policy_dir, sft_file, damaged, damage
):
    """A finished run whose final_metrics.json or config.yaml is unreadable is not taken as
    finished (what it finished with is unknown): one warning line, then it resumes from its
    newest intact checkpoint, to the same weights, and writes its record again."""
    import json

    import torch
    from safetensors.torch import load_file

    out = tmp_path / "o"
    args = _sft(tiny_policy_dir, sft_file, out, "--max_steps", "4", "--save_every", "2")
    assert main(args) == 0
    weights = load_file(str(out / "model" / "model.safetensors"))
    metrics = json.loads((out / "final_metrics.json").read_text())
    (out / damaged).write_bytes(damage((out / damaged).read_bytes()))
    capsys.readouterr()
    assert main(args) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rlhfkit: warning")]
    assert len(warnings) == 1 and warnings[0].startswith(
        f"rlhfkit: warning: {out}: the finished run's config.yaml or final_metrics.json is unreadable ("
    )
    assert warnings[0].endswith("); it is trained again (from its newest intact checkpoint, if any)")
    again = load_file(str(out / "model" / "model.safetensors"))
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    assert json.loads((out / "final_metrics.json").read_text())["loss"] == metrics["loss"]


def test_max_steps_is_the_number_of_steps_even_past_one_epoch(tmp_path, tiny_policy_dir, sft_file):
    """48 demonstrations, 1/8 held out: 42 for training, 5 global batches of 8 per epoch. As in HF
    Trainer, max_steps 12 trains 12 steps (2.4 epochs), not min(12, one epoch's 5)."""
    import json

    from rlhfkit.training.loop import TrainingConfig, plan_steps

    assert plan_steps(42, TrainingConfig(batch_size=8, epochs=1.0, max_steps=12)) == (5, 12)
    assert plan_steps(42, TrainingConfig(batch_size=8, epochs=2.0)) == (5, 10)
    out = tmp_path / "o"
    assert main(_sft(tiny_policy_dir, sft_file, out, "--max_steps", "12")) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 13)) and train[-1]["epoch"] == pytest.approx(12 / 5)


def test_reward_eval_of_a_policy_is_refused(capsys, tiny_policy_dir, pair_file):
    """`reward eval` on a language model (no trained score head) is refused (exit 2, "not a
    trained reward model"): an accuracy from a randomly initialised head would look like a result."""
    code, err = _run(capsys, ["reward", "eval", "--model", str(tiny_policy_dir), "--data", str(pair_file)])
    assert code == 2 and "not a trained reward model" in err, err
