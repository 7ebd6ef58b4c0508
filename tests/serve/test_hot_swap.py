"""``rlhfkit serve --model LEARN_DIR`` follows the learner's promoted version without downtime: a
real server process under continuous load, current.json switched under it."""

import json
import shutil
import threading
import time

import pytest

from ..loopback import launch_serve, stop_serve

pytest.importorskip("fastapi")

ASKS = [
    [{"role": "user", "content": text}]
    for text in ("Hello! How are you today?", "Tell me about the sea.", "hi", "What is two plus two?")
]


def _expected(learn, version):
    """The greedy reply of each ask by ``version`` loaded on its own."""
    from rlhfkit.models.versions import load_version
    from rlhfkit.serve.engine import ChatModel

    model, tok = load_version(learn, version)
    chat = ChatModel(model, tok, name="x", max_new_tokens=6)
    try:
        return [chat.complete(m, temperature=0.0).text for m in ASKS]
    finally:
        chat.close()


def test_a_learner_folder_is_followed_under_load_with_no_failed_request(tmp_path, learner_dir):
    """Four clients (one streaming) send greedy requests continuously while current.json moves
    from v0 to v1, then to a v2 whose adapter is damaged: no request fails; every reply is its
    version's greedy reply and names that version (every chunk of a stream the same one), in the
    response and in the store; every request sent once /health says v1 is answered by v1; the
    damaged v2 is refused (logged, shown in /health) and v1 keeps serving."""
    import httpx

    from rlhfkit.feedback.enduser import FeedbackLog
    from rlhfkit.models.versions import promote, save_version

    learn = tmp_path / "learn"
    shutil.copytree(learner_dir, learn)
    expected = {v: _expected(learn, v) for v in ("v0", "v1")}
    assert expected["v0"] != expected["v1"]

    db = tmp_path / "fb.db"
    flags = ("--db", str(db), "--max_new_tokens", "6", "--reload_every", "0.2", "--log_level", "warning")
    proc, base = launch_serve(learn, *flags)
    results, stop = [], threading.Event()

    def streamed(r) -> dict:
        """A streamed answer folded into the plain one; every chunk must name one version."""
        chunks = [json.loads(e[6:]) for e in r.text.split("\n\n") if e.startswith("data: {")]
        versions = {c["rlhfkit"]["version"] for c in chunks}
        assert len(versions) == 1 and r.text.endswith("data: [DONE]\n\n"), r.text[-300:]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        return {"id": chunks[0]["id"], "choices": [{"message": {"content": text}}], "rlhfkit": chunks[0]["rlhfkit"]}

    def client(k: int) -> None:
        with httpx.Client(base_url=base, timeout=60) as http:
            i = k
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    body = {"messages": ASKS[i % len(ASKS)], "temperature": 0, "stream": k == 3}
                    r = http.post("/v1/chat/completions", json=body)
                    results.append((sent, i % len(ASKS), r.status_code, streamed(r) if k == 3 else r.json()))
                except Exception as e:  # noqa: BLE001 - a dropped connection is a failed request
                    results.append((sent, i % len(ASKS), None, repr(e)))
                i += 1

    def health() -> dict:
        return httpx.get(base + "/health", timeout=5).json()

    def wait_for(cond, what: str, timeout: float = 60):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.05)
        pytest.fail(f"timed out waiting for {what}")

    clients = []
    try:
        h = health()
        assert (h["model"], h["version"], h["policy"]["kind"]) == ("learn", "v0", "learner")
        clients = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in clients:
            t.start()
        wait_for(lambda: len(results) >= 12, "requests before the swap")
        promoted_at = time.monotonic()
        promote(learn, "v1")
        wait_for(lambda: health()["version"] == "v1", "the swap to v1")
        swapped_at = time.monotonic()
        wait_for(lambda: sum(1 for r in results if r[0] > swapped_at) >= 12, "requests after the swap")

        save_version(learn, "v2", parent="v1", adapter=str(learn / "versions" / "v1" / "adapter"))
        for f in (learn / "versions" / "v2" / "adapter").glob("adapter_model*"):
            f.write_bytes(b"damaged")
        promote(learn, "v2")
        wait_for(lambda: (health()["policy"]["failed"] or {}).get("version") == "v2", "v2 to be refused")
        refused_at = time.monotonic()
        wait_for(lambda: sum(1 for r in results if r[0] > refused_at) >= 8, "requests after the refusal")
        stop.set()
        for t in clients:
            t.join(60)
        h = health()
        assert (h["version"], h["policy"]["swaps"]) == ("v1", 1)
        assert h["generation"]["requests"] >= len(results)
    finally:
        stop.set()
        for t in clients:
            t.join(60)
        log = stop_serve(proc)

    failed = [r for r in results if r[2] != 200]
    assert failed == [], failed[:3]
    for sent, i, _, body in results:
        version = body["rlhfkit"]["version"]
        assert body["choices"][0]["message"]["content"] == expected[version][i], (version, i)
        if sent < promoted_at:
            assert version == "v0"
        if sent > swapped_at:
            assert version == "v1"
    assert {body["rlhfkit"]["version"] for *_, body in results} == {"v0", "v1"}
    assert "v2 cannot be served" in log and "still serving v1" in log, log
    stored = FeedbackLog(str(db))
    try:
        for *_, body in results:
            assert stored.completion(body["id"])["responses"][0]["version"] == body["rlhfkit"]["version"]
    finally:
        stored.close()
