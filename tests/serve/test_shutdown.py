"""``rlhfkit serve`` stops within its grace on SIGTERM: a real server process on loopback with
more queued work than the grace allows; every request is answered 200 (and stored) or 503."""

import signal
import sqlite3
import threading
import time

import pytest

from ..loopback import launch_serve, stop_serve

pytest.importorskip("fastapi")

GRACE_S = 2.0
MARGIN_S = 8.0  # the process starting its exit, closing the store, the interpreter ending
REQUESTS = 30  # greedy 1500-token replies, one at a time: about a second each on the tiny model


def test_a_draining_model_takes_nothing_new_and_fails_what_the_grace_did_not_reach(tiny_chat_dir):
    """``drain``: a reply already drawing finishes when the grace allows; a new request is refused
    at once; once the grace ends the reply drawing stops at its next token and what is still
    queued (plain or streamed) fails with ``ServerStopping``."""
    from rlhfkit.serve.batcher import ServerStopping
    from rlhfkit.serve.engine import ChatModel

    chat = ChatModel.load(str(tiny_chat_dir), max_batch=1, batch_wait_ms=0, temperature=0.0)
    hi = [{"role": "user", "content": "hi"}]
    try:
        short = chat.submit(hi, max_tokens=4)
        chat.drain(30.0)
        assert len(short.result(30)[0].text) > 0  # within the grace: answered
        with pytest.raises(ServerStopping):
            chat.submit(hi, max_tokens=4)
    finally:
        chat.close()

    chat = ChatModel.load(str(tiny_chat_dir), max_batch=1, batch_wait_ms=0, temperature=0.0)
    try:
        long = chat.submit(hi, max_tokens=1500)  # about a second of drawing, queued ones behind it
        queued = chat.submit(hi, max_tokens=1500)
        stream = chat.stream(hi, max_tokens=1500)
        while chat.stats()["batches"] == 0:
            time.sleep(0.01)
        chat.drain(0.1)
        for job in (long, queued):  # the one drawing is cut (it would have been answered in full)
            with pytest.raises(ServerStopping):
                job.result(30)
        with pytest.raises(ServerStopping):
            list(stream)
        assert chat.stats()["batches"] == 1 and chat.stats()["queued"] == 0
    finally:
        chat.close()


def _ask(base: str, results: list, i: int) -> None:
    import httpx

    body = {"messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 1500, "temperature": 0}
    try:
        r = httpx.post(base + "/v1/chat/completions", json=body, timeout=120)
        results[i] = (r.status_code, r.headers.get("retry-after"), r.json())
    except Exception as e:  # noqa: BLE001 - a hung or dropped request is what the test looks for
        results[i] = ("failed", None, repr(e))


def test_sigterm_answers_the_queue_within_the_grace_and_exits_0(tiny_chat_dir, tmp_path):
    """On SIGTERM the server generates what is queued for ``--shutdown_grace_seconds`` at most,
    answers the rest 503 (OpenAI's error shape, Retry-After) and exits 0 soon after the grace;
    every reply answered 200 is in the store, and no request hangs or fails another way."""
    import httpx

    db = tmp_path / "fb.db"
    proc, base = launch_serve(
        tiny_chat_dir,
        "--db",
        str(db),
        "--max_batch",
        "1",
        "--batch_wait_ms",
        "0",
        "--shutdown_grace_seconds",
        str(GRACE_S),
    )
    results: list = [None] * REQUESTS
    clients = [threading.Thread(target=_ask, args=(base, results, i)) for i in range(REQUESTS)]
    try:
        for t in clients:
            t.start()
        deadline = time.monotonic() + 60
        while True:  # every request has reached the server: taken into a batch or queued
            g = httpx.get(base + "/health", timeout=10).json()["generation"]
            if g["requests"] + g["queued"] >= REQUESTS:
                break
            assert time.monotonic() < deadline, g
            time.sleep(0.05)
        assert g["queued"] >= REQUESTS - 3, g  # far more work queued than the grace allows
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(GRACE_S + MARGIN_S + 30)
        took = time.monotonic() - sent
        for t in clients:
            t.join(30)
    finally:
        log = stop_serve(proc)
    assert rc == 0, log
    assert took <= GRACE_S + MARGIN_S, f"stopped after {took:.1f} s\n{log}"
    assert all(not t.is_alive() for t in clients)  # no request hangs
    statuses = [r[0] for r in results]
    assert set(statuses) <= {200, 503}, [r for r in results if r[0] not in (200, 503)]
    ok = [r[2]["id"] for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 503]
    assert ok and len(refused) >= REQUESTS // 2, statuses  # some finished, most were still queued
    for _, retry_after, body in refused:
        assert retry_after is not None and int(retry_after) > 0
        assert body["error"]["code"] == "server_shutting_down" and body["error"]["type"] == "server_error"
    with sqlite3.connect(db) as con:  # nothing acknowledged is lost
        stored = {row[0] for row in con.execute("SELECT external_id FROM items")}
    assert set(ok) <= stored
