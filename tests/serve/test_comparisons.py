"""Two replies to compare, and every kind of end-user feedback through ``/v1/feedback``: stored,
exported with ``rlhfkit feedback export``, and refused with the field named when malformed."""

import random

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from rlhfkit.cli import main  # noqa: E402
from rlhfkit.data import read_records  # noqa: E402
from rlhfkit.feedback.enduser import FeedbackLog, feedback_events  # noqa: E402
from rlhfkit.serve.app import create_app  # noqa: E402
from rlhfkit.serve.engine import choice_seeds  # noqa: E402

ASK = [{"role": "user", "content": "Tell me a short story."}]


@pytest.fixture
def served(tiny_chat, tmp_path):
    db = str(tmp_path / "fb.db")
    log = FeedbackLog(db)
    with TestClient(create_app(tiny_chat, log, compare_share=1.0, rng=random.Random(0))) as client:
        yield client, db, log


def test_only_a_client_that_opts_in_gets_two_replies(served, tiny_chat):
    client, db, log = served
    plain = client.post("/v1/chat/completions", json={"messages": ASK, "seed": 9, "max_tokens": 8}).json()
    assert len(plain["choices"]) == 1 and plain["rlhfkit"] == {"version": "tiny-chat", "comparison": False}
    both = client.post(
        "/v1/chat/completions", json={"messages": ASK, "seed": 9, "max_tokens": 8, "rlhfkit": {"compare": True}}
    ).json()
    assert both["rlhfkit"] == {"version": "tiny-chat", "comparison": True}
    # two seeds: the request's own (the reply it gets without comparing) and one derived from it
    seeds = choice_seeds(9, 2)
    assert [c["message"]["content"] for c in both["choices"]] == [
        tiny_chat.complete(ASK, seed=s, max_tokens=8).text for s in seeds
    ]
    assert both["choices"][0]["message"] == plain["choices"][0]["message"]
    stored = [log.completion(both["id"], i)["responses"][0] for i in (0, 1)]
    assert [(r["index"], r["comparison"], r["version"]) for r in stored] == [
        (0, True, "tiny-chat"),
        (1, True, "tiny-chat"),
    ]
    off = client.post("/v1/chat/completions", json={"messages": ASK, "rlhfkit": {"compare": False}}).json()
    assert len(off["choices"]) == 1


def test_a_share_of_the_opted_in_requests_is_compared(tiny_chat, tmp_path):
    with TestClient(create_app(tiny_chat, None, compare_share=0.25, rng=random.Random(3))) as client:
        compared = [
            client.post(
                "/v1/chat/completions", json={"messages": ASK, "max_tokens": 2, "rlhfkit": {"compare": True}}
            ).json()["rlhfkit"]["comparison"]
            for _ in range(40)
        ]
    rng = random.Random(3)
    assert compared == [rng.random() < 0.25 for _ in range(40)] and 3 <= sum(compared) <= 20
    with TestClient(create_app(tiny_chat, None)) as client:  # the default share is 0: never
        r = client.post("/v1/chat/completions", json={"messages": ASK, "rlhfkit": {"compare": True}}).json()
        assert len(r["choices"]) == 1 and r["rlhfkit"]["comparison"] is False


def test_every_feedback_kind_is_stored_and_exported(served, tmp_path):
    client, db, log = served
    pair = client.post(
        "/v1/chat/completions",
        json={"messages": ASK, "seed": 1, "max_tokens": 8, "user": "ann", "rlhfkit": {"compare": True}},
    ).json()
    texts = [c["message"]["content"] or "(empty response)" for c in pair["choices"]]
    one = client.post("/v1/chat/completions", json={"messages": ASK, "seed": 2, "max_tokens": 8}).json()
    for body in (
        {"completion_id": pair["id"], "choice": 1, "thumbs": True, "reason": "livelier"},
        {"completion_id": pair["id"], "choice_index": 0, "rating": 2},
        {
            "completion_id": one["id"],
            "thumbs": "down",
            "reason": "dull",
            "rating": 1,
            "edit": "Once upon a time, a fox found a key.",
            "user": "bob",
        },
    ):
        r = client.post("/v1/feedback", json=body)
        assert r.status_code == 200, r.text
    res = r.json()
    assert res["stored"] is True and all(res[f"{k}_label_id"] for k in ("thumbs", "rating", "edit"))

    for project, kind in (
        ("serve-choices", "pairs"),
        ("serve-edits", "rewrites"),
        ("serve-thumbs", "thumbs"),
        ("serve-ratings", "ratings"),
    ):
        assert (
            main(
                [
                    "feedback",
                    "export",
                    "--db",
                    db,
                    "--project",
                    project,
                    "--kind",
                    kind,
                    "--out",
                    str(tmp_path / f"{kind}.jsonl"),
                ]
            )
            == 0
        )
    (p,) = read_records(tmp_path / "pairs.jsonl", "pairs")
    assert (p.prompt, p.chosen, p.rejected) == ("Tell me a short story.", texts[1], texts[0])
    (w,) = read_records(tmp_path / "rewrites.jsonl", "rewrites")
    assert (w.original, w.rewrite) == (
        one["choices"][0]["message"]["content"] or "(empty response)",
        "Once upon a time, a fox found a key.",
    )
    thumbs = read_records(tmp_path / "thumbs.jsonl", "thumbs").records
    assert [(t.completion, t.label) for t in thumbs] == [(texts[1], True), (w.original, False)]
    assert [r.rating for r in read_records(tmp_path / "ratings.jsonl", "ratings").records] == [2.0, 1.0]

    events = feedback_events(log)
    assert [(e.kind, e.value, e.reason, e.end_user) for e in events] == [
        ("thumbs", True, "livelier", "ann"),
        ("choice", 1, "livelier", "ann"),
        ("rating", 2, None, "ann"),
        ("thumbs", False, "dull", "bob"),
        ("rating", 1, "dull", "bob"),
        ("edit", "Once upon a time, a fox found a key.", "dull", "bob"),
    ]
    assert events[1].responses == tuple(texts) and events[1].versions == ("tiny-chat", "tiny-chat")


@pytest.mark.parametrize(
    "body,status,param",
    [
        ({"completion_id": "X", "thumbs": "up", "thumb": "up"}, 400, "thumb"),
        ({"completion_id": 5, "thumbs": "up"}, 400, "completion_id"),
        ({"completion_id": "X" * 201, "thumbs": "up"}, 422, "completion_id"),
        ({"completion_id": "X", "thumbs": "maybe"}, 422, "thumbs"),
        ({"completion_id": "X", "rating": 0}, 422, "rating"),
        ({"completion_id": "X", "rating": "5"}, 422, "rating"),
        ({"completion_id": "X", "thumbs": "up", "reason": "x" * 10_001}, 422, "reason"),
        ({"completion_id": "X", "edit": ""}, 422, "edit"),
        ({"completion_id": "X", "edit": {"text": "hi"}}, 422, "edit"),
        ({"completion_id": "X", "choice": 2}, 422, "choice"),
        ({"completion_id": "X", "choice": 0}, 422, "choice"),  # a completion of one reply
        ({"completion_id": "X", "choice_index": "0", "thumbs": "up"}, 422, "choice_index"),
        ({"completion_id": "X", "thumbs": "up", "user": ["ann"]}, 422, "user"),
        ({"completion_id": "chatcmpl-none", "thumbs": "up"}, 404, "completion_id"),
    ],
)
def test_malformed_feedback_is_refused_with_its_field(served, body, status, param):
    client, _, log = served
    cid = client.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 2}).json()["id"]
    body = {**body, "completion_id": cid} if body["completion_id"] == "X" else body
    r = client.post("/v1/feedback", json=body)
    assert (r.status_code, r.json()["error"]["param"]) == (status, param), r.text
    assert feedback_events(log) == []


def test_a_streamed_comparison_sends_both_replies_by_index(served, tiny_chat):
    from .test_serve import _events

    client, _, _ = served
    plain = client.post(
        "/v1/chat/completions", json={"messages": ASK, "seed": 4, "max_tokens": 8, "rlhfkit": {"compare": True}}
    ).json()
    events = _events(
        client.post(
            "/v1/chat/completions",
            json={"messages": ASK, "seed": 4, "max_tokens": 8, "stream": True, "rlhfkit": {"compare": True}},
        )
    )
    chunks = [e for e in events if e != "[DONE]"]
    assert all(c["rlhfkit"]["comparison"] is True for c in chunks)
    for i in (0, 1):
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"][0]["index"] == i)
        assert text == plain["choices"][i]["message"]["content"]
    ok = client.post("/v1/feedback", json={"completion_id": chunks[0]["id"], "choice": 0})
    assert ok.status_code == 200, ok.text
