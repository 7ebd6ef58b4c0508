"""Bad command lines end with one `rlhfkit <command>: error: ...` line (exit 2), no traceback,
and a misspelt choice is refused instead of silently falling back to a default."""
import pytest

from rlhfkit.cli import main


def _run(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def test_missing_model_path_is_an_error_not_a_traceback(capsys, tmp_path, sft_file):
    code, err = _run(capsys, ["sft", "--model", str(tmp_path / "no_such_model"), "--data", str(sft_file),
                              "--output_dir", str(tmp_path / "o"), "--tensorboard", "false"])
    assert code == 2
    assert "rlhfkit sft: error:" in err and "no_such_model" in err and "no such file or folder" in err


def test_reward_eval_missing_model_path(capsys, tmp_path, pair_file):
    code, err = _run(capsys, ["reward", "eval", "--model", str(tmp_path / "nope"), "--data", str(pair_file)])
    assert code == 2 and "rlhfkit reward eval: error:" in err and "nope" in err


@pytest.mark.parametrize("command,override,field", [
    (["sft"], ["--lr_schedule", "cosine"], "lr_schedule"),  # used to train with a linear schedule
    (["sft"], ["--parallel", "zero3"], "parallel"),
    (["sft"], ["--warmup_ratio", "1.5"], "warmup_ratio"),
    (["sft"], ["--on_error", "ignore"], "on_error"),
    (["sft"], ["--eval_fraction", "1.5"], "eval_fraction"),
    (["sft"], ["--max_length", "0"], "max_length"),
    (["sft"], ["--epochs", "0", "--max_steps", "0"], "epochs"),
    (["reward", "train"], ["--ties", "maybe"], "ties"),  # used to keep ties silently
    (["reward", "train"], ["--kind", "decoder"], "kind"),
    (["reward", "train"], ["--objective", "regression", "--validation_fraction", "0.1"], "validation_fraction"),
    (["reward", "eval"], ["--ties", "maybe"], "ties"),
])
def test_bad_choice_is_a_config_error(capsys, tmp_path, command, override, field):
    # the model / data do not exist: the config must be refused before anything is loaded
    code, err = _run(capsys, [*command, "--model", str(tmp_path / "m"), "--data", str(tmp_path / "d.jsonl"),
                              *(["--output_dir", str(tmp_path / "o")] if command[-1] != "eval" else []),
                              *override])
    assert code == 2, err
    assert f"field '{field}'" in err or f"fields '{field}'" in err, err


def test_batch_larger_than_data_is_an_error(capsys, tmp_path, tiny_policy_dir, sft_file):
    # sft_file has 48 records, 42 after the 1/8 hold-out: a batch of 64 cannot be filled
    code, err = _run(capsys, ["sft", "--model", str(tiny_policy_dir), "--data", str(sft_file),
                              "--output_dir", str(tmp_path / "o"), "--batch_size", "64",
                              "--micro_batch_size", "8", "--eval_fraction", "0.125", "--max_length", "64",
                              "--tensorboard", "false"])
    assert code == 2
    assert "only 42 training examples for a batch of 64" in err


def test_resume_with_other_settings_is_refused(capsys, tmp_path, tiny_policy_dir, sft_file):
    base = ["sft", "--model", str(tiny_policy_dir), "--data", str(sft_file), "--output_dir", str(tmp_path / "o"),
            "--max_steps", "2", "--save_every", "1", "--batch_size", "4", "--micro_batch_size", "4",
            "--max_length", "32", "--tensorboard", "false"]
    assert main(base) == 0
    assert (tmp_path / "o" / "checkpoint-1").is_dir()
    capsys.readouterr()
    # a changed learning rate would silently continue another run's weights and schedule
    code, err = _run(capsys, [*base, "--learning_rate", "1e-3"])
    assert code == 2 and "learning_rate" in err and "--resume false" in err, err
    # fields that do not change the result may differ; starting afresh is allowed
    assert main([*base, "--log_every", "2"]) == 0
    assert main([*base, "--learning_rate", "1e-3", "--resume", "false"]) == 0
