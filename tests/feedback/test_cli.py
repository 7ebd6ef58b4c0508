"""`rlhfkit feedback import | export | create-user`: mistakes on the command line end with one
`rlhfkit feedback <command>: error: ...` line (exit 2) that says what was wrong, and a read-only
command never creates a database."""

import json
from pathlib import Path

import pytest

from rlhfkit.cli import main
from rlhfkit.feedback import db


def _run(capsys, argv):
    code = main(argv)
    return code, capsys.readouterr().err


def test_sqlite_file_tells_a_file_from_a_url(tmp_path):
    p = tmp_path / "a.db"
    assert db.sqlite_file(str(p)) == p  # a bare path, as Store reads it
    assert db.sqlite_file("relative/f.db") == Path("relative/f.db")
    assert db.sqlite_file(f"sqlite:///{p}") == p  # sqlite:/// + absolute path: four slashes
    assert db.sqlite_file("sqlite:///rel.db") == Path("rel.db")
    assert db.sqlite_file("sqlite+pysqlite:///rel.db") == Path("rel.db")
    for not_a_file in (
        "postgresql://user@host:5432/feedback",
        "postgresql+psycopg://u:pw@h/db",
        "sqlite://",
        "sqlite:///:memory:",
    ):
        assert db.sqlite_file(not_a_file) is None, not_a_file


@pytest.mark.parametrize("as_url", [False, True])
def test_export_from_a_missing_sqlite_file_is_refused_and_creates_nothing(tmp_path, capsys, as_url):
    missing = tmp_path / "x" / "nonexist.db"
    arg = f"sqlite:///{missing}" if as_url else str(missing)
    code, err = _run(capsys, ["feedback", "export", "--db", arg, "--project", "p", "--out", str(tmp_path / "o.jsonl")])
    assert code == 2
    assert err.startswith("rlhfkit feedback export: error: ")
    assert f"field 'db': no feedback store at {missing} (the SQLite file does not exist)" in err
    assert "no project named" not in err
    assert not missing.exists() and not missing.parent.exists()
    assert not (tmp_path / "o.jsonl").exists()


def test_export_from_an_existing_store_still_names_the_missing_project(tmp_path, capsys):
    path = tmp_path / "f.db"
    db.Store(str(path)).close()  # an empty store, schema applied
    code, err = _run(
        capsys, ["feedback", "export", "--db", str(path), "--project", "p", "--out", str(tmp_path / "o.jsonl")]
    )
    assert code == 2 and "no project named 'p'" in err


def _items(tmp_path) -> Path:
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"prompt": "p", "responses": ["a", "b"]}) + "\n", encoding="utf-8")
    return items


def test_import_with_a_misspelt_task_type_names_it_and_the_valid_ones(tmp_path, capsys):
    path = tmp_path / "f.db"
    code, err = _run(
        capsys,
        [
            "feedback",
            "import",
            "--db",
            str(path),
            "--project",
            "new",
            "--file",
            str(_items(tmp_path)),
            "--task_type",
            "pairwize",
        ],
    )
    assert code == 2
    assert "field 'task_type': 'pairwize' is not a task type" in err
    for t in ("pairwise", "ranking", "rating", "thumbs", "rewrite"):
        assert t in err
    assert "give --task_type" not in err  # one was given
    assert not path.exists()  # refused before the store is opened


def test_import_into_a_new_project_without_task_type_asks_for_one(tmp_path, capsys):
    code, err = _run(
        capsys,
        ["feedback", "import", "--db", str(tmp_path / "f.db"), "--project", "new", "--file", str(_items(tmp_path))],
    )
    assert code == 2 and "project 'new' does not exist; give --task_type" in err


def test_create_user_without_any_password_says_so(tmp_path, capsys, monkeypatch):
    """No password on the command line, in $RLHFKIT_PASSWORD or from a terminal: one error line,
    nothing created."""
    monkeypatch.delenv("RLHFKIT_PASSWORD", raising=False)
    path = tmp_path / "f.db"
    code, err = _run(capsys, ["feedback", "create-user", "--db", str(path), "--username", "a"])
    assert code == 2
    assert "no password given" in err and "$RLHFKIT_PASSWORD" in err
    assert "at least 8 characters" not in err
    assert not path.exists()
    # a password that is given but short is still judged by its length
    monkeypatch.setenv("RLHFKIT_PASSWORD", "short")
    code, err = _run(capsys, ["feedback", "create-user", "--db", str(path), "--username", "a"])
    assert code == 2 and "password must have at least 8 characters" in err


def test_create_user_password_on_the_command_line_warns(tmp_path, capsys, monkeypatch):
    """``--password`` still works (scripts use it) but says where it leaks."""
    monkeypatch.delenv("RLHFKIT_PASSWORD", raising=False)
    code, err = _run(
        capsys,
        ["feedback", "create-user", "--db", str(tmp_path / "f.db"), "--username", "a", "--password", "long-enough-pw"],
    )
    assert code == 0
    assert "warning: --password stays in the shell history" in err and "$RLHFKIT_PASSWORD" in err


def _in_a_terminal(argv: list[str], answers: list[str], env: dict) -> tuple[int, str]:
    """Run ``rlhfkit`` in a pseudo-terminal (a real process, as a person at a shell runs it),
    typing each answer once the next prompt (ending in ': ') is shown; returns (exit code, all it
    printed)."""
    import os
    import pty
    import select
    import subprocess
    import sys
    import time

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlhfkit.cli", *argv],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
        close_fds=True,
    )
    os.close(follower)
    seen, since_answer, pending, deadline = (
        b"",
        b"",
        list(answers),
        time.monotonic() + 300,
    )  # start-up is slow on a loaded machine
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen, since_answer = seen + chunk, since_answer + chunk
            # answer a prompt once it is shown whole (it ends in ': '), never ahead of it: getpass
            # flushes what was typed before it turned echo off
            if pending and since_answer.endswith(b": "):
                os.write(leader, pending.pop(0).encode() + b"\n")
                since_answer = b""
        elif proc.poll() is not None:
            break
    try:
        code = proc.wait(timeout=60)
    finally:
        proc.kill()
        os.close(leader)
    return code, seen.decode(errors="replace")


def test_create_user_asks_for_the_password_twice_in_a_terminal(tmp_path):
    """In a terminal with no $RLHFKIT_PASSWORD the password is asked twice without echo; the user
    then logs in with it, and two different answers create nobody."""
    import os

    from rlhfkit.feedback.auth import authenticate

    env = {k: v for k, v in os.environ.items() if k != "RLHFKIT_PASSWORD"}
    path = tmp_path / "f.db"
    code, out = _in_a_terminal(
        ["feedback", "create-user", "--db", str(path), "--username", "ann"], ["typed-secret-1", "typed-secret-1"], env
    )
    assert code == 0, out
    assert "password for" in out and "again:" in out and "typed-secret-1" not in out  # not echoed
    store = db.Store(str(path))
    with store.read() as conn:
        assert authenticate(conn, "ann", "typed-secret-1") is not None
        assert authenticate(conn, "ann", "typed-secret-2") is None
    code, out = _in_a_terminal(
        ["feedback", "create-user", "--db", str(path), "--username", "bob"], ["typed-secret-1", "typed-secret-2"], env
    )
    assert code == 2 and "the two passwords differ" in out, out
    with store.read() as conn:
        assert authenticate(conn, "bob", "typed-secret-1") is None
