"""``rlhfkit serve`` from the command line: bad settings are one clear line (exit 2) before the
model loads, and a real server on a free port stores feedback durably before it answers ok."""
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import pytest

from rlhfkit.cli import main

pytest.importorskip("fastapi")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _refused(capsys, argv, words):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and all(w in err for w in words), err
    return err


@pytest.mark.parametrize("flags,words", [
    (["--port", "70000"], ["port", "65535"]),
    (["--max_new_tokens", "0"], ["max_new_tokens"]),
    (["--temperature", "-1"], ["temperature"]),
    (["--top_p", "0"], ["top_p"]),
    (["--max_request_kb", "0"], ["max_request_kb"]),
    (["--log_level", "loud"], ["log_level"]),
    (["--prot", "1"], ["did you mean 'port'"]),
])
def test_bad_flags_are_one_line(capsys, tmp_path, flags, words):
    _refused(capsys, ["serve", "--model", str(tmp_path / "none"), *flags], words)


def test_a_port_in_use_is_refused_before_the_model_loads(capsys, tiny_chat_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        t = time.perf_counter()
        # the model folder does not exist: the port must be the error, told first
        _refused(capsys, ["serve", "--model", "/nonexistent-model", "--port", str(port)], ["field 'port'", str(port)])
        assert time.perf_counter() - t < 5
    _refused(capsys, ["serve", "--model", str(tiny_chat_dir), "--host", "no-such-host.invalid",
                      "--port", str(_free_port())], ["field 'host'"])


def test_a_feedback_store_that_cannot_open_is_a_field_error(capsys, tmp_path, tiny_chat_dir):
    _refused(capsys, ["serve", "--model", str(tiny_chat_dir), "--port", str(_free_port()),
                      "--db", str(tmp_path / "no" / "such" / "dir" / "fb.db")], ["field 'db'", "unable to open"])
    (tmp_path / "junk.db").write_bytes(b"not a database, just text " * 100)
    _refused(capsys, ["chat", "--model", str(tiny_chat_dir), "--db", str(tmp_path / "junk.db")], ["field 'db'"])
    _refused(capsys, ["serve", "--model", str(tmp_path / "missing"), "--port", str(_free_port())], ["could not load"])


def test_a_real_server_acknowledges_feedback_only_once_it_is_on_disk(tiny_chat_dir, tmp_path):
    """``rlhfkit serve`` in its own process with an API key; killed with SIGKILL the moment the
    feedback is acknowledged, the store still holds it."""
    import httpx

    port, db = _free_port(), tmp_path / "fb.db"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "RLHFKIT_API_KEY": "sekrit"}
    proc = subprocess.Popen([sys.executable, "-m", "rlhfkit.cli", "serve", "--model", str(tiny_chat_dir),
                             "--db", str(db), "--port", str(port), "--threads", "1", "--max_new_tokens", "4"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        assert httpx.get(base + "/v1/models", timeout=5).status_code == 401  # the key from the environment
        auth = {"Authorization": "Bearer sekrit"}
        c = httpx.post(base + "/v1/chat/completions", headers=auth, timeout=60,
                       json={"messages": [{"role": "user", "content": "hi"}]}).json()
        r = httpx.post(base + "/v1/feedback", headers=auth, timeout=60,
                       json={"completion_id": c["id"], "thumbs": "down", "rating": 2, "comment": "kill me"})
        assert r.status_code == 200 and r.json()["stored"] is True
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        proc.stdout.close()
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT l.payload FROM labels l JOIN items i ON i.id = l.item_id WHERE i.external_id = ?",
                           (c["id"],)).fetchall()
    assert sorted((json.loads(r[0]) for r in rows), key=len) == [
        {"label": False, "comment": "kill me"}, {"rating": 2, "flags": [], "comment": "kill me"}]
