"""Concurrent requests are generated together (``serve/batcher.py``): fewer sampler calls than
requests, each reply the one its request gets alone (seed, length limit, stop strings, finish
reason), ``n`` replies per request, and a swap of the model between two batches."""

import threading

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from rlhfkit.serve.app import create_app  # noqa: E402
from rlhfkit.serve.engine import ChatModel, choice_seeds  # noqa: E402

ASKS = [
    [{"role": "user", "content": text}]
    for text in (
        "Hello! How are you today?",
        "Tell me about the sea.",
        "hi",
        "What is two plus two, please?",
        "Write a word.",
        "Say something kind to me now.",
        "Why is the sky blue?",
        "ok",
    )
]


def _chat(tiny_chat, **kwargs) -> ChatModel:
    return ChatModel(
        tiny_chat.model, tiny_chat.tokenizer, name="tiny-chat", max_new_tokens=12, temperature=1.0, **kwargs
    )


def _together(calls):
    """Run the calls from as many threads at once; their results in order."""
    out = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(i, call):
        start.wait()
        out[i] = call()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def test_concurrent_requests_share_sampler_calls_and_get_their_replies_alone(tiny_chat):
    """Eight requests at once, each with its own seed, temperature, length limit and stop string:
    served in fewer sampler calls than requests, and each reply (text, finish reason, token
    count) is the one the request gets served alone."""
    settings = [
        dict(seed=100 + i, temperature=[1.0, 0.0, 0.7, 1.3][i % 4], max_tokens=4 + i, stop=["e"] if i % 3 == 0 else ())
        for i in range(len(ASKS))
    ]
    alone = _chat(tiny_chat, max_batch=1)
    expected = [alone.complete(m, **s) for m, s in zip(ASKS, settings)]
    assert alone.stats()["batches"] == len(ASKS)
    batched = _chat(tiny_chat, max_batch=8, batch_wait_ms=500)
    got = _together([lambda m=m, s=s: batched.complete(m, **s) for m, s in zip(ASKS, settings)])
    assert got == expected
    stats = batched.stats()
    assert stats["requests"] == len(ASKS) and stats["batches"] < len(ASKS) and stats["largest_batch"] >= 2
    assert {c.finish_reason for c in expected} == {"stop", "length"}  # both endings met in the batch
    assert any(
        s["stop"] and c.finish_reason == "stop" and c.completion_tokens < s["max_tokens"]
        for s, c in zip(settings, expected)
    )
    alone.close()
    batched.close()


def test_streams_in_one_batch_get_their_own_pieces(tiny_chat):
    chat = _chat(tiny_chat, max_batch=8, batch_wait_ms=500)
    plain = [chat.complete(m, seed=7, max_tokens=10) for m in ASKS[:4]]

    def stream(m):
        st = chat.stream(m, seed=7, max_tokens=10)
        return "".join(st), st.result

    got = _together([lambda m=m: stream(m) for m in ASKS[:4]])
    assert [text for text, _ in got] == [c.text for c in plain]
    assert [result for _, result in got] == plain
    chat.close()


def test_n_replies_draw_from_the_seed_and_seeds_derived_from_it(tiny_chat):
    chat = _chat(tiny_chat)
    three = chat.submit(ASKS[0], n=3, seed=5).result()
    seeds = choice_seeds(5, 3)
    assert seeds[0] == 5 and len(set(seeds)) == 3
    assert three == [chat.complete(ASKS[0], seed=s) for s in seeds]
    chat.close()


def test_the_hf_sampler_batches_only_what_it_can_draw_the_same_way(tiny_chat):
    """A model the native sampler does not run (here: wrapped in a LoRA adapter) samples with
    Hugging Face's ``generate``, one setting and one random stream per batch: seedless requests
    of one setting share a batch, and a request with its own seed runs alone, so its reply is
    the one it gets alone."""
    from rlhfkit.models import apply_lora
    from rlhfkit.rollout.native import supports

    import copy

    wrapped = apply_lora(copy.deepcopy(tiny_chat.model), r=2, alpha=4)
    assert not supports(wrapped)[0]
    chat = ChatModel(
        wrapped, tiny_chat.tokenizer, name="t", max_new_tokens=6, temperature=1.0, max_batch=8, batch_wait_ms=500
    )
    seeded = chat.complete(ASKS[1], seed=3)
    _together([lambda m=m: chat.complete(m) for m in ASKS[:6]] + [lambda: chat.complete(ASKS[1], seed=3)] * 2)
    stats = chat.stats()
    assert stats["requests"] == 9 and stats["batches"] <= 4  # the seeded ones alone, the rest together
    again = _together([lambda: chat.complete(ASKS[1], seed=3)] + [lambda m=m: chat.complete(m) for m in ASKS[:3]])
    assert again[0] == seeded
    chat.close()


def test_a_swap_waits_for_the_batch_and_requests_queued_before_it_get_the_new_version(tiny_chat, learner_dir):
    from rlhfkit.models.versions import load_version

    v1, tok1 = load_version(learner_dir, "v1")
    chat = _chat(tiny_chat, batch_wait_ms=0)
    old = chat.complete(ASKS[0], temperature=0.0)
    assert old.version == "tiny-chat"
    chat.swap(v1, tok1, "v1")
    new = chat.complete(ASKS[0], temperature=0.0)
    expected = ChatModel(v1, tok1, name="x", max_new_tokens=12).complete(ASKS[0], temperature=0.0)
    assert (new.text, new.version) == (expected.text, "v1") and new.text != old.text
    assert chat.version == "v1" and chat.model is v1
    chat.close()


def test_health_counts_sampler_calls_and_n_choices_over_http(tiny_chat, tmp_path):
    from rlhfkit.feedback.enduser import FeedbackLog

    chat = _chat(tiny_chat, batch_wait_ms=300)
    log = FeedbackLog(str(tmp_path / "fb.db"))
    with TestClient(create_app(chat, log)) as client:
        bodies = [{"messages": m, "max_tokens": 5, "seed": i} for i, m in enumerate(ASKS[:6])]
        replies = _together([lambda b=b: client.post("/v1/chat/completions", json=b) for b in bodies])
        assert all(r.status_code == 200 for r in replies)
        health = client.get("/health").json()
        assert health["version"] == "tiny-chat"
        assert health["generation"]["requests"] == 6 and health["generation"]["batches"] < 6

        r = client.post("/v1/chat/completions", json={"messages": ASKS[0], "n": 3, "seed": 4, "max_tokens": 5})
        body = r.json()
        assert [c["index"] for c in body["choices"]] == [0, 1, 2]
        single = client.post("/v1/chat/completions", json={"messages": ASKS[0], "seed": 4, "max_tokens": 5}).json()
        assert body["choices"][0]["message"] == single["choices"][0]["message"]
        assert body["usage"]["prompt_tokens"] == single["usage"]["prompt_tokens"]
        assert body["usage"]["completion_tokens"] == sum(  # every choice's tokens, as OpenAI counts them
            chat.complete(ASKS[0], seed=s, max_tokens=5).completion_tokens for s in choice_seeds(4, 3)
        )
        assert body["rlhfkit"] == {"version": "tiny-chat", "comparison": False}
        stored = [log.completion(body["id"], i)["responses"][0] for i in range(3)]
        assert [(s["text"] or "", s["index"], s["choices"], s["version"]) for s in stored] == [
            (c["message"]["content"] or "(empty response)", i, 3, "tiny-chat") for i, c in enumerate(body["choices"])
        ]
        # feedback on the second choice
        ok = client.post("/v1/feedback", json={"completion_id": body["id"], "choice_index": 1, "thumbs": "up"})
        assert ok.status_code == 200, ok.text
        bad = client.post("/v1/feedback", json={"completion_id": body["id"], "choice_index": 3, "thumbs": "up"})
        assert (bad.status_code, bad.json()["error"]["param"]) == (422, "choice_index")

        # streamed: each choice's deltas carry its index and join to the plain reply
        from .test_serve import _events

        events = _events(
            client.post(
                "/v1/chat/completions", json={"messages": ASKS[0], "n": 3, "seed": 4, "max_tokens": 5, "stream": True}
            )
        )
        chunks = [e for e in events if e != "[DONE]"]
        texts = {
            i: "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"][0]["index"] == i)
            for i in range(3)
        }
        assert [texts[i] for i in range(3)] == [c["message"]["content"] for c in body["choices"]]
        finishes = [c["choices"][0] for c in chunks if c["choices"][0]["finish_reason"]]
        assert sorted(f["index"] for f in finishes) == [0, 1, 2]
    chat.close()


def test_a_stream_queued_before_a_swap_names_the_version_that_drew_it_in_every_chunk(tiny_chat, learner_dir):
    """A streamed request waits for its batch while the model is swapped: its reply is drawn by the
    new version, and every chunk -- the first (role) chunks included -- names that version, as
    the stored completion does."""
    import json
    import time

    from fastapi.testclient import TestClient

    from rlhfkit.feedback.enduser import FeedbackLog
    from rlhfkit.models.versions import load_version

    v1, tok1 = load_version(learner_dir, "v1")
    chat = _chat(tiny_chat, batch_wait_ms=4000)  # the lone request waits this long for company
    expected = ChatModel(v1, tok1, name="x", max_new_tokens=12).complete(ASKS[0], temperature=0.0)
    log = FeedbackLog(str(learner_dir.parent / f"swap-stream-{time.monotonic_ns()}.db"))
    got = {}
    with TestClient(create_app(chat, log)) as client:

        def ask():
            got["r"] = client.post("/v1/chat/completions", json={"messages": ASKS[0], "temperature": 0, "stream": True})

        t = threading.Thread(target=ask)
        t.start()
        deadline = time.monotonic() + 3
        while not chat.batcher._queue and time.monotonic() < deadline:  # queued, its batch not yet started
            time.sleep(0.01)
        assert chat.batcher._queue, "the request was not queued in time"
        chat.swap(v1, tok1, "v1")
        t.join(60)
    chunks = [json.loads(e[6:]) for e in got["r"].text.split("\n\n") if e.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == expected.text
    assert {c["rlhfkit"]["version"] for c in chunks} == {"v1"}
    assert log.completion(chunks[0]["id"])["responses"][0]["version"] == "v1"
    chat.close()
