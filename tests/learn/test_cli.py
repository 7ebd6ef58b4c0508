"""``rlhfkit learn``'s command line: help that explains, and errors that name the field."""
import subprocess
import sys


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "rlhfkit.cli", "learn", *args], capture_output=True, text=True,
                          timeout=120)


def test_help_lists_the_subcommands_and_every_field():
    out = _cli("run", "--help")
    assert out.returncode == 0
    for field in ("--min_feedback", "--method", "--defence.max_per_user", "--gate.min_win_rate", "--policy.lora.r",
                  "--reward.model", "--once"):
        assert field in out.stdout, field
    top = _cli()
    assert top.returncode == 2 and all(s in top.stdout for s in ("run", "versions", "rollback"))


def test_bad_invocations_exit_2_naming_what_is_wrong(tmp_path):
    """A new LEARN_DIR without --model, no --store, a store file that is not there (a typo must
    not start an empty store), an unknown method: exit 2, one line, no traceback."""
    from rlhfkit.feedback.enduser import FeedbackLog

    db = tmp_path / "fb.db"
    FeedbackLog(str(db)).close()
    out = _cli("run", str(tmp_path / "new"), "--store", str(db))
    assert out.returncode == 2 and "field 'model'" in out.stderr and "Traceback" not in out.stderr
    out = _cli("run", str(tmp_path / "new"), "--model", "tiny")
    assert out.returncode == 2 and "field 'store'" in out.stderr
    out = _cli("run", str(tmp_path / "new"), "--model", "tiny", "--store", str(tmp_path / "typo.db"))
    assert out.returncode == 2 and "typo.db: no such file" in out.stderr and not (tmp_path / "typo.db").exists()
    out = _cli("run", str(tmp_path / "new"), "--model", "tiny", "--store", str(db), "--method", "ppo")
    assert out.returncode == 2 and "field 'method'" in out.stderr and "'ppo'" in out.stderr
    out = _cli("versions", str(tmp_path))
    assert out.returncode == 2 and "not a learner's folder" in out.stderr
