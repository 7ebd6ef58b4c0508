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


def test_a_hand_broken_learner_file_stops_the_learner_naming_it(tmp_path, tiny_base, capsys):
    """The learner writes its files whole, so a broken one was edited by hand or damaged: `learn
    run` exits 2 with one line naming the file and where its JSON breaks, no traceback; an
    earlier round's broken defence (read for the users' history) is named the same way."""
    from rlhfkit.feedback.enduser import FeedbackLog
    from rlhfkit.learn import inputs
    from rlhfkit.models.versions import VersionError

    db = tmp_path / "fb.db"
    FeedbackLog(str(db)).close()
    learn_dir = tmp_path / "learn"
    argv = ["learn", "run", str(learn_dir), "--model", str(tiny_base), "--store", str(db), "--once"]
    assert main(argv) == 0
    capsys.readouterr()
    (learn_dir / inputs.STATE_FILE).write_text('{"watermark": 3,\n "rounds_done": }', encoding="utf-8")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlhfkit learn run: error: ") and "Traceback" not in err, err
    assert f"{learn_dir / inputs.STATE_FILE}: not a JSON file" in err and "line 2 column 17" in err, err

    defence = learn_dir / "rounds" / "round-1" / "defence" / "defence.json"
    defence.parent.mkdir(parents=True)
    defence.write_text('{"per_user": {"u1": {"weight": 0.5', encoding="utf-8")
    with pytest.raises(VersionError, match="round-1/defence/defence.json: not a JSON file .*line 1 column 35"):
        inputs.judged_before(learn_dir, 2)
