"""``rlhfkit learn``'s command line: help that explains, and errors that name the field."""

import pytest

from rlhfkit.cli import main


def test_help_lists_the_subcommands_and_every_field(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["learn", "run", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    for field in (
        "--min_feedback",
        "--method",
        "--defence.max_per_user",
        "--gate.min_win_rate",
        "--policy.lora.r",
        "--reward.model",
        "--once",
    ):
        assert field in out, field
    assert main(["learn"]) == 2
    usage = capsys.readouterr().out
    assert all(f"  {s} " in usage for s in ("run", "versions", "rollback"))


def test_bad_invocations_exit_2_naming_what_is_wrong(tmp_path, capsys):
    """A new LEARN_DIR without --model, no --store, a store file that is not there (a typo must
    not start an empty store), an unknown method, a folder that is no learner's: exit 2, one
    line naming the field, no traceback."""
    from rlhfkit.feedback.enduser import FeedbackLog

    db = tmp_path / "fb.db"
    FeedbackLog(str(db)).close()
    new = str(tmp_path / "new")
    cases = [
        (["run", new, "--store", str(db)], "field 'model'"),
        (["run", new, "--model", "tiny"], "field 'store'"),
        (["run", new, "--model", "tiny", "--store", str(tmp_path / "typo.db")], "typo.db: no such file"),
        (["run", new, "--model", "tiny", "--store", str(db), "--method", "ppo"], "field 'method': 'ppo'"),
        (["run", new, "--model", "tiny", "--store", str(db), "--policy.lora.r", "0"], "field 'policy.lora.r'"),
        (["versions", str(tmp_path)], "not a learner's folder"),
    ]
    for argv, message in cases:
        assert main(["learn", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("rlhfkit learn ") and message in err and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "typo.db").exists() and not (tmp_path / "new").exists()
