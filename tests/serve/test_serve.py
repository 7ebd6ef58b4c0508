"""The OpenAI-compatible server: response schema, errors, and end-user feedback that lands in the
feedback store and exports as thumbs / ratings JSONL that ``rlhfkit.data.read_records`` reads."""

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from rlhfkit.data import read_records  # noqa: E402
from rlhfkit.serve.app import create_app  # noqa: E402
from rlhfkit.serve.engine import render_messages  # noqa: E402
from rlhfkit.feedback.enduser import FeedbackLog  # noqa: E402


@pytest.fixture
def served(tiny_chat, tmp_path):
    db = str(tmp_path / "fb.db")
    log = FeedbackLog(db)
    with TestClient(create_app(tiny_chat, log)) as client:
        yield client, db, log


def test_models_and_completion_schema(served, tiny_chat):
    client, _, _ = served
    r = client.get("/v1/models")
    assert r.status_code == 200
    assert r.json()["object"] == "list" and r.json()["data"][0]["id"] == "tiny-chat"
    assert client.get("/v1/models/tiny-chat").json() == r.json()["data"][0]
    missing = client.get("/v1/models/gpt-9")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello! How are you today?"}]
    r = client.post(
        "/v1/chat/completions", json={"model": "tiny-chat", "messages": messages, "max_tokens": 5, "seed": 7}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert body["model"] == "tiny-chat" and isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(render_messages(messages, tiny_chat.tokenizer))
    assert usage["completion_tokens"] <= 5  # exact counts: test_completion_tokens_count_every_drawn_token
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # the same seed gives the same reply; ids are unique
    again = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 5, "seed": 7}).json()
    assert again["choices"][0]["message"]["content"] == choice["message"]["content"]
    assert again["id"] != body["id"]


def test_completion_tokens_count_every_drawn_token(served, tiny_chat):
    """``usage.completion_tokens`` is every token the model drew, EOS included (what the user is
    charged for, as OpenAI counts it): a reply that ends at EOS after k text tokens counts k + 1, a
    reply cut by ``max_tokens`` counts exactly ``max_tokens``. The seeds are found by drawing with
    the sampler directly (the same draw the server makes for a seed), so both branches are met."""
    import torch

    from rlhfkit.rollout import SamplingConfig, make_sampler

    client, _, _ = served
    tok = tiny_chat.tokenizer
    messages = [{"role": "user", "content": "Hello! How are you today?"}]
    prompt = torch.tensor([render_messages(messages, tok)])
    sampler = make_sampler(
        tiny_chat.model, SamplingConfig(max_new_tokens=8, temperature=1.0), tok.eos_token_id, tok.pad_token_id
    )
    found = {}
    for seed in range(3000):
        drawn = sampler.generate(tiny_chat.model, prompt, torch.ones_like(prompt), seed)[0].tolist()
        kind = "stop" if tok.eos_token_id in drawn else "length"
        found.setdefault(kind, (seed, drawn))
        if len(found) == 2:
            break
    assert set(found) == {"stop", "length"}, "no seed in 3000 ends at EOS within 8 tokens"

    seed, drawn = found["stop"]
    k = drawn.index(tok.eos_token_id)
    body = client.post(
        "/v1/chat/completions", json={"messages": messages, "max_tokens": 8, "seed": seed, "temperature": 1.0}
    ).json()
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == k + 1  # k text tokens and the EOS
    assert body["choices"][0]["message"]["content"] == tok.decode(drawn[:k], skip_special_tokens=True)

    seed, drawn = found["length"]
    body = client.post(
        "/v1/chat/completions", json={"messages": messages, "max_tokens": 8, "seed": seed, "temperature": 1.0}
    ).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 8 == len(drawn)
    assert body["choices"][0]["message"]["content"] == tok.decode(drawn, skip_special_tokens=True)


@pytest.mark.parametrize(
    "payload,status,param",
    [
        ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, 400, "stream"),
        (
            {"messages": [{"role": "user", "content": "hi"}], "stream_options": {"include_usage": True}},
            400,
            "stream_options",
        ),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 9}, 400, "n"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 0}, 400, "n"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 1.5}, 400, "n"),
        ({"messages": [{"role": "user", "content": "hi"}], "rlhfkit": {"compare": "yes"}}, 400, "rlhfkit.compare"),
        ({"messages": [{"role": "user", "content": "hi"}], "rlhfkit": {"comapre": True}}, 400, "rlhfkit.comapre"),
        ({"messages": [{"role": "user", "content": "hi"}], "rlhfkit": [1]}, 400, "rlhfkit"),
        (
            {"messages": [{"role": "user", "content": "hi"}], "rlhfkit": {"compare": True}, "n": 2},
            400,
            "rlhfkit.compare",
        ),
        ({"messages": []}, 400, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}, 400, "temperature"),
        ({"messages": [{"role": "user", "content": "hi"}], "model": "gpt-9"}, 404, "model"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, 400, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": None}]}]}, 400, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}] * 513}, 400, "messages"),
    ],
)
def test_errors_have_openai_shape(served, payload, status, param):
    client, _, _ = served
    r = client.post("/v1/chat/completions", json=payload)
    assert r.status_code == status
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["type"]


def test_feedback_lands_in_store_and_exports(served, tmp_path):
    client, db, log = served
    user_turn = "Please write a short poem about the sea."
    r = client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": user_turn}], "max_tokens": 6}
    )
    c1 = r.json()
    multi = [
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Thank you for your help."},
    ]
    c2 = client.post("/v1/chat/completions", json={"messages": multi, "max_tokens": 6}).json()

    ok = client.post("/v1/feedback", json={"completion_id": c1["id"], "thumbs": "down", "comment": "meh"})
    assert ok.status_code == 200 and ok.json()["stored"] is True
    # a changed mind replaces the verdict (one record per user and completion)
    assert (
        client.post("/v1/feedback", json={"completion_id": c1["id"], "thumbs": "up", "comment": "nice"}).status_code
        == 200
    )
    # 4.0 is the integer 4 as some JSON clients write it; 3.5 is no point of the scale (1-5)
    assert client.post("/v1/feedback", json={"completion_id": c1["id"], "rating": 4.0}).status_code == 200
    assert client.post("/v1/feedback", json={"completion_id": c1["id"], "rating": 3.5}).status_code == 422
    assert (
        client.post(
            "/v1/feedback", json={"completion_id": c2["id"], "thumbs": "down", "rating": 2, "user": "alice"}
        ).status_code
        == 200
    )
    # refusals name the field at fault in OpenAI's ``param``
    for body, status, param in [
        ({"completion_id": "chatcmpl-nope", "thumbs": "up"}, 404, "completion_id"),
        ({"completion_id": c1["id"], "rating": 6}, 422, "rating"),
        ({"completion_id": c1["id"], "thumbs": "sideways"}, 422, "thumbs"),
        ({"completion_id": c1["id"]}, 422, "thumbs"),
        ({"completion_id": c1["id"], "thumbs": "up", "comment": 3}, 422, "comment"),
        ({"thumbs": "up"}, 400, "completion_id"),
    ]:
        r = client.post("/v1/feedback", json=body)
        assert (r.status_code, r.json()["error"]["param"]) == (status, param), body

    # exported with the feedback app's own command, read back with rlhfkit.data
    from rlhfkit.feedback.cli import ExportConfig, run_export

    run_export(ExportConfig(db=db, project="serve-thumbs", kind="thumbs", out=str(tmp_path / "thumbs.jsonl")))
    run_export(ExportConfig(db=db, project="serve-ratings", kind="ratings", out=str(tmp_path / "ratings.jsonl")))
    thumbs = read_records(tmp_path / "thumbs.jsonl", "thumbs").records
    ratings = read_records(tmp_path / "ratings.jsonl", "ratings").records
    reply1 = c1["choices"][0]["message"]["content"] or "(empty response)"
    reply2 = c2["choices"][0]["message"]["content"] or "(empty response)"
    assert [(t.prompt, t.completion, t.label) for t in thumbs] == [
        (user_turn, reply1, True),
        ("User: Hello!\n\nAssistant: Hi.\n\nUser: Thank you for your help.", reply2, False),
    ]
    assert [(x.completion, x.rating, x.scale_min, x.scale_max) for x in ratings] == [
        (reply1, 4.0, 1, 5),
        (reply2, 2.0, 1, 5),
    ]
    # the completion is stored with its id, messages and version; the comment is kept with the
    # verdict as its reason
    stored = log.completion(c2["id"])
    assert stored["messages"] == multi and stored["responses"][0]["model"] == "tiny-chat"
    assert stored["responses"][0]["version"] == c2["rlhfkit"]["version"]
    from sqlalchemy import select

    from rlhfkit.feedback import db as fdb

    with log.store.read() as conn:
        payloads = [r.payload for r in conn.execute(select(fdb.labels.c.payload).order_by(fdb.labels.c.id))]
        active = {r.name: r.active for r in conn.execute(select(fdb.projects.c.name, fdb.projects.c.active))}
    assert {"label": True, "reason": "nice"} in payloads
    assert active == {
        "serve-thumbs": False,
        "serve-ratings": False,
        "serve-edits": False,
        "serve-choices": False,
    }  # never queued to labelers


def test_api_key_and_no_store(tiny_chat):
    with TestClient(create_app(tiny_chat, None, api_key="sekrit")) as client:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert client.post("/v1/chat/completions", json=body).status_code == 401
        auth = {"Authorization": "Bearer sekrit"}
        assert client.post("/v1/chat/completions", json=body, headers=auth).status_code == 200
        r = client.post("/v1/feedback", json={"completion_id": "x", "thumbs": "up"}, headers=auth)
        assert r.status_code == 503
        assert client.get("/health").status_code == 200


def test_a_body_over_the_limit_is_refused_before_it_is_read_whole(tiny_chat, tmp_path):
    log = FeedbackLog(str(tmp_path / "fb.db"))
    with TestClient(create_app(tiny_chat, log, max_request_bytes=10_000)) as client:
        big = {"messages": [{"role": "user", "content": "x" * 20_000}], "max_tokens": 2}
        r = client.post("/v1/chat/completions", json=big)
        assert r.status_code == 413 and "10000 bytes" in r.json()["error"]["message"]
        chunked = client.post(
            "/v1/chat/completions",
            content=iter([b'{"messages": "' + b"x" * 6_000, b"x" * 6_000 + b'"}']),
            headers={"content-type": "application/json"},
        )  # no content-length: counted as read
        assert chunked.status_code == 413
        ok = client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        )
        assert ok.status_code == 200
    assert log.completion(ok.json()["id"]) is not None


def test_a_template_that_refuses_the_messages_is_a_400(tiny_chat_dir):
    """A chat template with no place for a system turn (as Gemma's) raises; that is the request's
    fault, answered 400 with the template's words, not a 500."""
    from rlhfkit.serve.engine import ChatModel

    chat = ChatModel.load(str(tiny_chat_dir), name="strict", max_new_tokens=2)
    chat.tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "{{ m['content'] }}{% endfor %}"
    )
    with TestClient(create_app(chat, None)) as client:
        r = client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 400 and "System role not supported" in r.json()["error"]["message"]
        assert (
            client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}).status_code
            == 200
        )


def test_end_user_names_share_one_account_and_one_verdict_per_completion(served):
    """``user`` is the caller's claim: it is kept with the verdict but names no account, so a
    caller cannot stack votes on a completion or create accounts by the thousand."""
    from sqlalchemy import func, select

    from rlhfkit.feedback import db as fdb

    client, _, log = served
    c = client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    ).json()
    for name in ("a", "b", "c"):
        assert (
            client.post("/v1/feedback", json={"completion_id": c["id"], "thumbs": "up", "user": name}).status_code
            == 200
        )
    assert client.post("/v1/feedback", json={"completion_id": c["id"], "thumbs": "up", "user": 5}).status_code == 422
    item = log.completion(c["id"])
    with log.store.read() as conn:
        payloads = [
            r.payload for r in conn.execute(select(fdb.labels.c.payload).where(fdb.labels.c.item_id == item["id"]))
        ]
        users = conn.execute(
            select(func.count()).select_from(fdb.users).where(fdb.users.c.username.like("enduser%"))
        ).scalar()
    assert payloads == [{"label": True, "end_user": "c"}] and users == 1


# ----------------------------------------------------------------------------- review fixes
def _raw(client, body: bytes, path="/v1/chat/completions"):
    return client.post(path, content=body, headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    "payload,param",
    [
        ({"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": [{"role": "user", "content": "hi"}], "stop": [""]}, "stop"),
        ({"messages": [{"role": "user", "content": "hi"}], "stop": 3}, "stop"),
        ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, "tools"),
        ({"messages": [{"role": "user", "content": "hi"}], "logprobs": True}, "logprobs"),
        (
            {"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}},
            "response_format",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages"),
    ],
)
def test_options_the_server_cannot_honour_are_refused_not_ignored(served, payload, param):
    """Ignored, a tool or log-prob request would get a plain reply, an image would be answered
    unseen; a stop that is not 1-4 non-empty strings is refused too."""
    client, _, _ = served
    r = client.post("/v1/chat/completions", json=payload)
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_unset_options_in_their_null_forms_are_accepted(served):
    client, _, _ = served
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
        "n": None,
        "stop": None,
        "tools": [],
        "logprobs": False,
        "response_format": {"type": "text"},
    }
    assert client.post("/v1/chat/completions", json=body).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        b'{"messages": [{"role": "user", "content": "\\ud800"}]}',  # a lone surrogate: no text
        b"[" * 100_000 + b"]" * 100_000,  # nesting past Python's recursion limit
        b"{bad",
    ],
)
def test_bodies_that_are_no_json_text_are_400_not_500(served, body):
    client, _, _ = served
    for path in ("/v1/chat/completions", "/v1/feedback"):
        r = _raw(client, body, path)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_routing_errors_and_crashes_have_openai_shape(tiny_chat, tmp_path):
    import sqlite3

    client_app = create_app(tiny_chat, FeedbackLog(str(tmp_path / "fb.db")))
    with TestClient(client_app, raise_server_exceptions=False) as client:
        r = client.get("/v1/nothing")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = client.get("/v1/chat/completions")
        assert r.status_code == 405 and r.json()["error"]["message"]
        # the store breaks under the running server (a real failure, not a stub): 500, no traceback
        with sqlite3.connect(tmp_path / "fb.db") as con:
            con.execute("DROP TABLE labels")
            con.execute("DROP TABLE assignments")
            con.execute("DROP TABLE items")
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        assert "Traceback" not in r.text


def test_a_too_long_conversation_is_refused_not_cut(tiny_chat, tmp_path):
    """Cut, the model would answer without its system turn while the store kept the whole
    conversation as the prompt of the feedback: a training pair the model never saw."""
    from rlhfkit.serve.engine import ChatModel

    chat = ChatModel(tiny_chat.model, tiny_chat.tokenizer, name="short", max_new_tokens=8, max_prompt_length=40)
    log = FeedbackLog(str(tmp_path / "fb.db"))
    with TestClient(create_app(chat, log)) as client:
        long = {
            "messages": [
                {"role": "system", "content": "Always answer in French."},
                {"role": "user", "content": "word " * 60},
            ]
        }
        r = client.post("/v1/chat/completions", json=long)
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["code"] == "context_length_exceeded" and err["param"] == "messages" and "40" in err["message"]
        # the reply asked for must fit the model's context after the conversation
        chat.context_length = 30
        short = [{"role": "user", "content": "hi"}]
        n_prompt = len(render_messages(short, chat.tokenizer))
        r = client.post("/v1/chat/completions", json={"messages": short, "max_tokens": 30 - n_prompt + 1})
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        fits = client.post("/v1/chat/completions", json={"messages": short, "max_tokens": 30 - n_prompt})
        assert fits.status_code == 200
        # left out, max_tokens is what fits (the default 8 here would not)
        chat.context_length = n_prompt + 3
        r = client.post("/v1/chat/completions", json={"messages": short, "temperature": 0}).json()
        assert r["usage"]["completion_tokens"] <= 3
    from sqlalchemy import func, select

    from rlhfkit.feedback import db as fdb

    with log.store.read() as conn:  # only the two answered requests were stored
        assert conn.execute(select(func.count()).select_from(fdb.items)).scalar() == 2


def test_top_p_zero_is_greedy(served):
    """``top_p`` 0 keeps only the likeliest token (greedy), whatever the seed; it is not read as
    "not given" (the server's default, sampling from the whole distribution)."""
    client, _, _ = served
    msgs = [{"role": "user", "content": "Tell me a story."}]
    greedy = client.post("/v1/chat/completions", json={"messages": msgs, "max_tokens": 8, "temperature": 0}).json()
    for seed in (1, 2, 3):
        r = client.post(
            "/v1/chat/completions",
            json={"messages": msgs, "max_tokens": 8, "top_p": 0, "temperature": 1.5, "seed": seed},
        ).json()
        assert r["choices"][0]["message"]["content"] == greedy["choices"][0]["message"]["content"]


def test_empty_turns_are_answered_and_stored(served):
    """An empty system prompt or a blank turn is a legal request; storing it failed after the
    reply was generated (500)."""
    client, _, log = served
    msgs = [{"role": "system", "content": ""}, {"role": "user", "content": "  "}]
    r = client.post("/v1/chat/completions", json={"messages": msgs, "max_tokens": 2})
    assert r.status_code == 200, r.text
    stored = log.completion(r.json()["id"])
    # both keep their place (leaving the system turn out would change what SmolLM2's template renders)
    assert [(m["role"], m["content"]) for m in stored["messages"]] == [
        ("system", "(empty message)"),
        ("user", "(empty message)"),
    ]
    assert client.post("/v1/feedback", json={"completion_id": r.json()["id"], "thumbs": "down"}).status_code == 200


def test_the_api_key_guards_every_path_but_health(tiny_chat, tmp_path):
    with TestClient(create_app(tiny_chat, FeedbackLog(str(tmp_path / "fb.db")), api_key="sekrit")) as client:
        for path in ("/v1/models", "/docs", "/openapi.json", "/v1/nothing", "/redoc"):
            r = client.get(path)
            assert r.status_code == 401, path
            assert r.json()["error"]["code"] == "invalid_api_key"
        assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/v1/models", headers={"Authorization": "sekrit"}).status_code == 401
        assert client.post("/v1/feedback", json={"completion_id": "x", "thumbs": "up"}).status_code == 401
        # the scheme is case-insensitive (RFC 7235)
        assert client.get("/v1/models", headers={"Authorization": "bearer sekrit"}).status_code == 200
        assert client.get("/health").status_code == 200


def _events(response) -> list:
    """The ``data:`` payloads of a server-sent-events body, JSON-decoded (``[DONE]`` kept as is)."""
    import json

    out = []
    for block in response.text.split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            data = block[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


@pytest.mark.parametrize("include_usage", [False, True])
def test_streamed_reply_is_the_plain_reply_in_openai_chunks(served, include_usage):
    """stream: true sends the same reply as the plain request with the same seed, as
    chat.completion.chunk events (role, content deltas, finish reason, usage when asked), then
    [DONE]; a delta never ends inside a character; the completion is stored, so feedback on its
    id works as soon as the stream ends."""
    client, db, _ = served
    messages = [{"role": "user", "content": "Tell me something about the sea, please."}]
    plain = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 8, "seed": 3}).json()
    payload = {"messages": messages, "max_tokens": 8, "seed": 3, "stream": True}
    if include_usage:
        payload["stream_options"] = {"include_usage": True}
    r = client.post("/v1/chat/completions", json=payload)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "tiny-chat" for c in chunks)
    assert all(("usage" in c) == include_usage for c in chunks)
    if include_usage:  # the last chunk carries the usage and no choices; the others a null usage
        *chunks, last = chunks
        assert last["choices"] == [] and last["usage"] == plain["usage"]
        assert all(c["usage"] is None for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    finish = chunks[-1]["choices"][0]
    assert finish["delta"] == {} and finish["finish_reason"] == plain["choices"][0]["finish_reason"]
    pieces = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    # a character whose bytes span tokens is held back until it is whole: no piece is empty and
    # none but the last ends in U+FFFD (this reply has bytes that decode to it; the last piece
    # may end in one that no later token completes)
    assert "\ufffd" in plain["choices"][0]["message"]["content"]
    assert all(pieces) and not any(p.endswith("\ufffd") for p in pieces[:-1]), pieces
    assert "".join(pieces) == plain["choices"][0]["message"]["content"]
    fb = client.post("/v1/feedback", json={"completion_id": chunks[0]["id"], "thumbs": "up"})
    assert fb.status_code == 200, fb.text


def test_streamed_reply_comes_in_pieces_as_generated(tiny_chat):
    """The engine hands text over while it generates: with a long reply, several pieces, each
    decoded text growing, and the pieces join to the completion's text."""
    st = tiny_chat.stream([{"role": "user", "content": "Go on and on."}], max_tokens=24, temperature=1.0, seed=11)
    pieces = list(st)
    assert st.result is not None and "".join(pieces) == st.result.text
    assert st.result == tiny_chat.complete(
        [{"role": "user", "content": "Go on and on."}], max_tokens=24, temperature=1.0, seed=11
    )
    assert st.result.completion_tokens > 4 and len(pieces) >= 2


def test_a_conversation_too_long_to_stream_is_refused_before_the_stream(tiny_chat, tmp_path):
    from rlhfkit.serve.engine import ChatModel

    short = ChatModel(tiny_chat.model, tiny_chat.tokenizer, name="tiny-chat", max_prompt_length=8)
    with TestClient(create_app(short, None)) as client:
        r = client.post(
            "/v1/chat/completions",
            json={
                "stream": True,
                "messages": [{"role": "user", "content": "a conversation far longer than eight tokens of this model"}],
            },
        )
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_cut_at_stop_and_held_for_stop_by_hand():
    from rlhfkit.serve.engine import cut_at_stop, held_for_stop

    assert cut_at_stop("one. two. END three", ["END", "."]) == ("one", True)  # the earliest of them
    assert cut_at_stop("no stop here", ["END"]) == ("no stop here", False)
    assert cut_at_stop("x", ()) == ("x", False)
    assert held_for_stop("the E", ["END"]) == 1 and held_for_stop("the EN", ["END"]) == 2
    assert held_for_stop("the END", ["END"]) == 0  # a whole stop string is cut, not held
    assert held_for_stop("abc", ["cx", "bcx"]) == 2 and held_for_stop("abc", ["zz"]) == 0


def test_stop_ends_the_reply_before_the_stop_string_plain_and_streamed(served):
    """The draw is the same up to the stop string (same seed): the reply is the plain reply cut
    before its first occurrence, finish_reason "stop", and no token past it is generated."""
    import re

    client, _, _ = served
    messages = [{"role": "user", "content": "Say a few words."}]
    for seed in range(40):  # a reply of the random tiny model with an ASCII word inside it
        plain = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 16, "seed": seed}).json()
        text = plain["choices"][0]["message"]["content"]
        word = re.search(r"(?<=.)[A-Za-z]{2,}", text)
        if word and plain["usage"]["completion_tokens"] == 16:
            break
    else:
        pytest.fail("no reply with a word inside it")
    stop = word.group(0)
    cut = client.post(
        "/v1/chat/completions",
        json={"messages": messages, "max_tokens": 16, "seed": seed, "stop": [stop, "\u2603never"]},
    ).json()
    assert cut["choices"][0]["message"]["content"] == text[: text.find(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert cut["usage"]["completion_tokens"] < 16  # generation ended at the stop string
    streamed = client.post(
        "/v1/chat/completions",
        json={"messages": messages, "max_tokens": 16, "seed": seed, "stop": stop, "stream": True},
    )
    chunks = [e for e in _events(streamed) if e != "[DONE]"]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == text[: text.find(stop)]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    "spec,name",
    [
        ("runs/dpo/model", "dpo/model"),
        ("runs/dpo/model/", "dpo/model"),
        ("runs/dpo/model/config.json", "dpo/model"),
        ("outputs/sft", "sft"),
        ("outputs/sft/config.json", "sft"),
        ("weights/smol.Q8_0.gguf", "smol.Q8_0.gguf"),
        ("smollm2-135m", "smollm2-135m"),
        ("model", "model"),
    ],
)
def test_a_served_model_is_named_after_its_folder(spec, name):
    from rlhfkit.serve.engine import default_model_name

    assert default_model_name(spec) == name


def test_bf16_weights_serve_the_same_greedy_reply(tiny_chat_dir):
    """``--precision bf16`` loads the weights in bfloat16 (inference only; the native sampler's
    key / value cache is then bfloat16 too); the tiny model's greedy reply is the same as in
    float32."""
    import torch

    from rlhfkit.serve.engine import ChatModel

    messages = [{"role": "user", "content": "Hello! How are you today?"}]
    replies = {}
    for precision in ("fp32", "bf16"):
        chat = ChatModel.load(str(tiny_chat_dir), precision=precision, max_new_tokens=6, temperature=0.0)
        assert next(chat.model.parameters()).dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
        replies[precision] = chat.complete(messages).text
    assert replies["bf16"] == replies["fp32"]
    with pytest.raises(ValueError, match="precision must be fp32 or bf16"):
        ChatModel.load(str(tiny_chat_dir), precision="fp16")
