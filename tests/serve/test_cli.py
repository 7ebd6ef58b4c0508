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

from ..loopback import free_port, launch_serve, stop_serve

pytest.importorskip("fastapi")


def _refused(capsys, argv, words):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and all(w in err for w in words), err
    return err


@pytest.mark.parametrize(
    "flags,words",
    [
        (["--port", "70000"], ["port", "65535"]),
        (["--max_new_tokens", "0"], ["max_new_tokens"]),
        (["--temperature", "-1"], ["temperature"]),
        (["--top_p", "0"], ["top_p"]),
        (["--max_request_kb", "0"], ["max_request_kb"]),
        (["--log_level", "loud"], ["log_level"]),
        (["--prot", "1"], ["did you mean 'port'"]),
        (["--max_batch", "0"], ["max_batch"]),
        (["--batch_wait_ms", "-1"], ["batch_wait_ms"]),
        (["--compare_share", "1.5"], ["compare_share"]),
        (["--reload_every", "0"], ["reload_every"]),
        (["--shutdown_grace_seconds", "-1"], ["shutdown_grace_seconds"]),
        (["--rating_max", "1"], ["field 'rating_max'"]),
        (["--chat", "public"], ["field 'chat'", "auto, open, off"]),
    ],
)
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
    _refused(
        capsys,
        ["serve", "--model", str(tiny_chat_dir), "--host", "no-such-host.invalid", "--port", str(free_port())],
        ["field 'host'"],
    )


def test_a_feedback_store_that_cannot_open_is_a_field_error(capsys, tmp_path, tiny_chat_dir):
    _refused(
        capsys,
        [
            "serve",
            "--model",
            str(tiny_chat_dir),
            "--port",
            str(free_port()),
            "--db",
            str(tmp_path / "no" / "such" / "dir" / "fb.db"),
        ],
        ["field 'db'", "unable to open"],
    )
    (tmp_path / "junk.db").write_bytes(b"not a database, just text " * 100)
    _refused(capsys, ["chat", "--model", str(tiny_chat_dir), "--db", str(tmp_path / "junk.db")], ["field 'db'"])
    _refused(capsys, ["serve", "--model", str(tmp_path / "missing"), "--port", str(free_port())], ["could not load"])


def test_a_real_server_acknowledges_feedback_only_once_it_is_on_disk(tiny_chat_dir, tmp_path):
    """``rlhfkit serve`` in its own process with an API key (its web chat locked until the key is
    given, sessions signed with a key file beside the store); killed with SIGKILL the moment the
    feedback is acknowledged, the store still holds it."""
    import httpx

    db = tmp_path / "fb.db"
    proc, base = launch_serve(
        tiny_chat_dir, "--db", str(db), "--max_new_tokens", "4", env={"RLHFKIT_API_KEY": "sekrit"}
    )
    try:
        assert httpx.get(base + "/v1/models", timeout=5).status_code == 401  # the key from the environment
        with httpx.Client(base_url=base, timeout=10) as browser:  # the web chat asks for that key once
            page = browser.get("/chat")
            assert page.status_code == 200 and 'name="chat-locked" content="1"' in page.text
            assert browser.get("/chat/api/conversations").json()["error"]["code"] == "key_required"
            assert browser.get("/v1/models").status_code == 401  # its cookie opens no API
        assert oct((tmp_path / "fb.db.chat_secret").stat().st_mode & 0o777) == "0o600"  # sessions outlive a restart
        auth = {"Authorization": "Bearer sekrit"}
        c = httpx.post(
            base + "/v1/chat/completions",
            headers=auth,
            timeout=60,
            json={"messages": [{"role": "user", "content": "hi"}]},
        ).json()
        r = httpx.post(
            base + "/v1/feedback",
            headers=auth,
            timeout=60,
            json={"completion_id": c["id"], "thumbs": "down", "rating": 2, "comment": "kill me"},
        )
        assert r.status_code == 200 and r.json()["stored"] is True
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        stop_serve(proc)
    with sqlite3.connect(db) as con:
        rows = con.execute(
            "SELECT l.payload FROM labels l JOIN items i ON i.id = l.item_id WHERE i.external_id = ?", (c["id"],)
        ).fetchall()
    assert sorted((json.loads(r[0]) for r in rows), key=len) == [
        {"label": False, "reason": "kill me"},
        {"rating": 2, "flags": [], "reason": "kill me"},
    ]


def test_serve_takes_a_loop_folder_and_serves_its_newest_finished_round(tmp_path, capsys):
    """``serve --model LOOP`` (an ``rlhfkit loop`` output folder, as ``feedback serve --policy``
    takes) serves the policy of the loop's newest finished round, named LOOP/round-N, and its
    start-up line says which round and which folder; a loop still in its setup is refused with the
    field named."""
    import random

    import httpx

    from rlhfkit.loop import run as loop_run
    from rlhfkit.serve.engine import ChatModel

    from ..loop.conftest import WORDS, tiny_loop_config

    rng = random.Random(0)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": " ".join(rng.choice(WORDS) for _ in range(6))}) + "\n" for _ in range(120)),
        encoding="utf-8",
    )
    loop = tmp_path / "loop"
    loop_run.run(tiny_loop_config(loop, prompts, rounds=1))
    round_1 = loop / "round-1" / "policy" / "model"
    assert json.loads((loop / "loop_state.json").read_text())["rounds_done"] == 1 and round_1.is_dir()

    messages = [{"role": "user", "content": "the film was"}]
    proc, base = launch_serve(loop, "--max_new_tokens", "6")
    try:
        assert [m["id"] for m in httpx.get(base + "/v1/models", timeout=5).json()["data"]] == ["loop/round-1"]
        served = httpx.post(
            base + "/v1/chat/completions", timeout=60, json={"messages": messages, "temperature": 0}
        ).json()
    finally:
        log = stop_serve(proc)
    assert served["model"] == "loop/round-1"
    # greedy: the reply round 1's policy gives loaded here, token for token
    expected = ChatModel.load(str(round_1), max_new_tokens=6).complete(messages, temperature=0)
    assert served["choices"][0]["message"]["content"] == expected.text
    start = next(line for line in log.splitlines() if line.startswith("rlhfkit serve:"))
    assert f"from the loop {loop}, round 1's policy, the newest finished round: {round_1}" in start, start

    waiting = tmp_path / "waiting"  # a loop in its setup: no policy yet
    (waiting / "setup").mkdir(parents=True)
    (waiting / "loop_state.json").write_text(json.dumps({"rounds_done": 0}))
    _refused(
        capsys,
        ["serve", "--model", str(waiting), "--port", str(free_port())],
        ["field 'model'", "the loop has no policy yet"],
    )


def test_the_server_runs_openmp_workers_passive_unless_told_otherwise():
    """``rlhfkit serve`` sets ``OMP_WAIT_POLICY=PASSIVE`` before torch (and OpenMP with it) is
    first imported (spinning workers starve the HTTP threads a batching server hands work to); a
    value given is kept."""
    code = (
        "import builtins, os, sys\n"
        "seen = {}\n"
        "real = builtins.__import__\n"
        "def spy(name, *a, **k):\n"
        "    if name == 'torch' and 'torch' not in seen:\n"
        "        seen['torch'] = os.environ.get('OMP_WAIT_POLICY')\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = spy\n"
        "from rlhfkit.cli import main\n"
        f"main(['serve', '--model', '/nonexistent-model', '--port', '{free_port()}'])\n"
        "print(seen.get('torch'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.stdout.split()[-1:] == ["PASSIVE"], out.stdout + out.stderr
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.stdout.split()[-1:] == ["ACTIVE"], out.stdout + out.stderr
