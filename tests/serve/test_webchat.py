"""The end users' web chat's server side (``serve/webchat.py``), through HTTP in process: signed
anonymous sessions, each seeing only its own conversations and replies, CSRF and origin checks,
the API key asked once (or the page opened by name), security headers, limits before parsing,
and every feedback kind stored under the session's pseudonymous id (forget and redaction
included). The browser flow is in test_webchat_browser.py."""

import json
import random
import re

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("itsdangerous")

from fastapi.testclient import TestClient  # noqa: E402

from rlhfkit.feedback.enduser import FeedbackLog  # noqa: E402
from rlhfkit.serve.app import create_app  # noqa: E402


def _app(tiny_chat, tmp_path, **kw):
    log = FeedbackLog(str(tmp_path / "fb.db"), redact=kw.pop("redact", False))
    kw.setdefault("chat_page", "auto")
    return create_app(tiny_chat, log, **kw), log


def _open(client) -> dict:
    """Open the page: the session's CSRF token and end-user id, read from it as the browser does."""
    page = client.get("/chat")
    assert page.status_code == 200
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
    end_user = re.search(r'<code id="end-user">([^<]+)</code>', page.text).group(1)
    return {"csrf": csrf, "end_user": end_user, "page": page}


def _send(client, csrf, messages, conversation=None) -> dict:
    """A message through the page's API: the streamed chunks folded into the completion."""
    r = client.post(
        "/chat/api/send", json={"conversation": conversation, "messages": messages}, headers={"X-CSRF-Token": csrf}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in r.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    replies: dict[int, str] = {}
    for c in chunks:
        for ch in c["choices"]:
            replies[ch["index"]] = replies.get(ch["index"], "") + (ch["delta"].get("content") or "")
    return {"id": chunks[0]["id"], "replies": [replies[i] for i in sorted(replies)], **chunks[0]["rlhfkit"]}


def _labels(log) -> list:
    from sqlalchemy import select

    from rlhfkit.feedback import db

    with log.store.read() as c:
        return [(r.project_id, r.payload) for r in c.execute(select(db.labels).order_by(db.labels.c.id))]


def test_the_page_has_a_signed_http_only_session_and_no_inline_script(tiny_chat, tmp_path):
    """The page sets one HttpOnly, SameSite=Strict cookie for /chat; every answer carries a CSP
    that allows scripts and styles only from this server (no 'unsafe-inline'), and the page's
    scripts are files; the page and the API answers are not cached."""
    app, _ = _app(tiny_chat, tmp_path)
    with TestClient(app) as client:
        s = _open(client)
        cookie = s["page"].headers["set-cookie"]
        assert cookie.startswith("rlhfkit_chat=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert "Path=/chat" in cookie
        csp = s["page"].headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert s["page"].headers["x-frame-options"] == "DENY"
        assert s["page"].headers["x-content-type-options"] == "nosniff"
        assert s["page"].headers["cache-control"] == "no-store"
        scripts = re.findall(r"<script[^>]*>", s["page"].text)
        assert scripts and all('src="/chat/static/' in t for t in scripts)
        assert "style=" not in s["page"].text and "<style" not in s["page"].text
        assert client.get("/chat/static/chat.js").status_code == 200
        assert "content-security-policy" in client.get("/v1/models").headers  # the API's answers too
        assert s["end_user"].startswith("chat:") and len(s["end_user"]) > 20
        again = client.get("/chat")  # a valid session is kept, not renewed
        assert "set-cookie" not in again.headers and _open(client)["end_user"] == s["end_user"]
        assert "Secure" not in cookie  # plain http on loopback: a Secure cookie would never come back
    with TestClient(app, base_url="https://testserver") as client:
        assert "Secure" in client.get("/chat").headers["set-cookie"]


def test_a_message_streams_and_its_conversation_is_the_sessions_own(tiny_chat, tmp_path):
    """A reply streams as chat.completion chunks naming a new conversation; it is stored with the
    session's end-user id, its conversation and version; a second message in the conversation and
    a regenerated reply build the transcript the page shows on return: the regenerated reply
    replaces the first, in order."""
    app, log = _app(tiny_chat, tmp_path)
    with TestClient(app) as client:
        s = _open(client)
        first = _send(client, s["csrf"], [{"role": "user", "content": "Hello there"}])
        conv = first["conversation"]
        assert re.fullmatch(r"[A-Za-z0-9_-]{16}", conv) and first["comparison"] is False
        stored = log.completion(first["id"])["responses"][0]
        assert (stored["end_user"], stored["conversation"], stored["text"]) == (
            s["end_user"],
            conv,
            first["replies"][0],
        )
        assert stored["version"] == tiny_chat.version
        history = [
            {"role": "user", "content": "Hello there"},
            {"role": "assistant", "content": first["replies"][0]},
            {"role": "user", "content": "And then?"},
        ]
        second = _send(client, s["csrf"], history, conversation=conv)
        again = _send(client, s["csrf"], history, conversation=conv)  # regenerate the second reply
        assert second["conversation"] == again["conversation"] == conv
        listed = client.get("/chat/api/conversations").json()["data"]
        assert [(c["id"], c["title"]) for c in listed] == [(conv, "Hello there")]
        turns = client.get(f"/chat/api/conversations/{conv}").json()["turns"]
        assert [(t["role"], t.get("content") or t["completion_id"]) for t in turns] == [
            ("user", "Hello there"),
            ("assistant", first["id"]),
            ("user", "And then?"),
            ("assistant", again["id"]),
        ]
        assert turns[1]["replies"] == first["replies"] and turns[1]["picked"] == 0


def test_another_session_sees_none_of_it(tiny_chat, tmp_path):
    """A second browser (its own session) lists no conversation, gets 404 for the first one's
    conversation and for feedback on its reply (as for one that never was); a cookie altered or
    signed with another key is no session (401), and nothing is stored by the refused calls."""
    app, log = _app(tiny_chat, tmp_path)
    with TestClient(app) as alice, TestClient(app) as bob:
        a = _open(alice)
        sent = _send(alice, a["csrf"], [{"role": "user", "content": "my secret plan"}])
        b = _open(bob)
        assert b["end_user"] != a["end_user"]
        assert bob.get("/chat/api/conversations").json()["data"] == []
        r = bob.get(f"/chat/api/conversations/{sent['conversation']}")
        assert r.status_code == 404 and "secret" not in r.text
        r = bob.post(
            "/chat/api/feedback",
            json={"completion_id": sent["id"], "thumbs": "down"},
            headers={"X-CSRF-Token": b["csrf"]},
        )
        assert r.status_code == 404
        assert _labels(log) == []
        raw = alice.cookies.get("rlhfkit_chat")
        for forged in (
            raw[:-2] + ("AA" if not raw.endswith("AA") else "BB"),
            __import__("itsdangerous")
            .URLSafeTimedSerializer(b"another key", salt="rlhfkit-chat-session")
            .dumps({"sid": a["end_user"][5:], "csrf": a["csrf"], "key": True}),
        ):
            with TestClient(app) as mallory:
                mallory.cookies.set("rlhfkit_chat", forged, path="/chat")
                r = mallory.get("/chat/api/conversations")
                assert (r.status_code, r.json()["error"]["code"]) == (401, "no_session")


@pytest.mark.parametrize(
    "headers, code",
    [
        ({}, "csrf"),
        ({"X-CSRF-Token": "wrong"}, "csrf"),
        ({"X-CSRF-Token": None, "Origin": "https://evil.example"}, "bad_origin"),
    ],
)
def test_posts_need_the_sessions_csrf_token_and_this_origin(tiny_chat, tmp_path, headers, code):
    """A POST without the session's CSRF token, with another one, or from another origin is 403
    and generates nothing; with the token and this server's own origin it is answered."""
    app, log = _app(tiny_chat, tmp_path)
    with TestClient(app) as client:
        s = _open(client)
        headers = {k: (s["csrf"] if v is None else v) for k, v in headers.items()}
        r = client.post("/chat/api/send", json={"messages": [{"role": "user", "content": "hi"}]}, headers=headers)
        assert (r.status_code, r.json()["error"]["code"]) == (403, code)
        assert client.get("/chat/api/conversations").json()["data"] == []
        ok = client.post(
            "/chat/api/send",
            json={"messages": [{"role": "user", "content": "hi"}]},
            headers={"X-CSRF-Token": s["csrf"], "Origin": "http://testserver"},
        )
        assert ok.status_code == 200


def test_every_feedback_kind_from_the_page_is_stored_under_the_session(tiny_chat, tmp_path):
    """Thumbs with a reason, a rating, an edit and the choice between a comparison's two replies
    are stored as labels of the serve projects with the session's end-user id; a field the page
    does not send (``user``: someone else's id) is refused."""
    app, log = _app(tiny_chat, tmp_path, compare_share=1.0, rng=random.Random(0))
    with TestClient(app) as client:
        s = _open(client)
        got = _send(client, s["csrf"], [{"role": "user", "content": "Pick one"}])
        assert got["comparison"] is True and len(got["replies"]) == 2
        post = lambda body: client.post(  # noqa: E731
            "/chat/api/feedback",
            json={"completion_id": got["id"], **body},
            headers={"X-CSRF-Token": s["csrf"]},
        )
        assert post({"user": "someone-else", "thumbs": "up"}).status_code == 400
        assert post({"choice": 1}).status_code == 200
        assert post({"thumbs": "down", "reason": "too short", "choice_index": 1}).status_code == 200
        assert post({"rating": 4, "choice_index": 1}).status_code == 200
        assert post({"edit": "A much better reply.", "choice_index": 1}).status_code == 200
        assert post({"rating": 9}).status_code == 422
        pids = log.projects
        labels = {pid: p for pid, p in _labels(log)}
        assert labels[pids["pairwise"]]["verdict"] == "second"
        assert (labels[pids["thumbs"]]["label"], labels[pids["thumbs"]]["reason"]) == (False, "too short")
        assert labels[pids["rating"]]["rating"] == 4
        assert labels[pids["rewrite"]]["rewrite"] == "A much better reply."
        assert {p["end_user"] for p in labels.values()} == {s["end_user"]}
        turns = client.get(f"/chat/api/conversations/{got['conversation']}").json()["turns"]
        assert turns[1]["comparison"] is True and turns[1]["picked"] is None  # the conversation went on with none yet


def test_with_an_api_key_the_page_asks_for_it_once(tiny_chat, tmp_path):
    """With an API key (chat auto) the page loads locked: its API answers 401 key_required until
    the key is given; a wrong key is 401; the right one unlocks a new session (new id and CSRF
    token). The page's cookie never opens the OpenAI API, which still needs the bearer key."""
    app, _ = _app(tiny_chat, tmp_path, api_key="sekret-key")
    with TestClient(app) as client:
        s = _open(client)
        assert 'name="chat-locked" content="1"' in s["page"].text
        r = client.get("/chat/api/conversations")
        assert (r.status_code, r.json()["error"]["code"]) == (401, "key_required")
        r = client.post(
            "/chat/api/send",
            json={"messages": [{"role": "user", "content": "hi"}]},
            headers={"X-CSRF-Token": s["csrf"]},
        )
        assert r.status_code == 401
        assert (
            client.post("/chat/api/key", json={"key": "wrong"}, headers={"X-CSRF-Token": s["csrf"]}).status_code == 401
        )
        assert client.post("/chat/api/key", json={"key": "sekret-key"}).status_code == 403  # no CSRF token
        r = client.post("/chat/api/key", json={"key": "sekret-key"}, headers={"X-CSRF-Token": s["csrf"]})
        assert r.status_code == 200 and r.json()["end_user"] != s["end_user"]
        unlocked = _open(client)
        assert 'name="chat-locked" content="0"' in unlocked["page"].text and unlocked["csrf"] != s["csrf"]
        assert _send(client, unlocked["csrf"], [{"role": "user", "content": "hi"}])["replies"]
        assert client.get("/v1/models").status_code == 401
        assert client.get("/v1/models", headers={"Authorization": "Bearer sekret-key"}).status_code == 200


@pytest.mark.parametrize("page, chat_status, api_status", [("open", 200, 401), ("off", 401, 401)])
def test_open_and_off_are_the_deployers_choice(tiny_chat, tmp_path, page, chat_status, api_status):
    """``open``: the page works without the key (the deployer asked for a public page) while the
    API still needs it; ``off``: no page, and /chat is behind the key like any other path."""
    app, _ = _app(tiny_chat, tmp_path, api_key="sekret-key", chat_page=page)
    with TestClient(app) as client:
        assert client.get("/chat").status_code == chat_status
        assert client.get("/v1/models").status_code == api_status
        if page == "open":
            s = _open(client)
            assert 'content="0"' in s["page"].text
            assert _send(client, s["csrf"], [{"role": "user", "content": "hi"}])["replies"]


def test_limits_hold_before_the_body_is_parsed(tiny_chat, tmp_path):
    """Without a session a POST is 401 before its body is read; a body over the server's limit is
    413; a conversation the API refuses (bad messages, too many) is refused the same way here,
    and an unknown field or a conversation id not made by the server is 400."""
    app, log = _app(tiny_chat, tmp_path, max_request_bytes=2000)
    with TestClient(app) as client:
        r = client.post("/chat/api/send", content=b"{" * 5000, headers={"Content-Type": "application/json"})
        assert r.status_code == 401
        s = _open(client)
        h = {"X-CSRF-Token": s["csrf"]}
        assert (
            client.post(
                "/chat/api/send", json={"messages": [{"role": "user", "content": "x" * 3000}]}, headers=h
            ).status_code
            == 413
        )
        r = client.post("/chat/api/send", json={"messages": [{"role": "robot", "content": "x"}]}, headers=h)
        assert (r.status_code, r.json()["error"]["param"]) == (400, "messages")
        r = client.post("/chat/api/send", json={"messages": [{"role": "user", "content": "x"}], "n": 3}, headers=h)
        assert (r.status_code, r.json()["error"]["param"]) == (400, "n")
        r = client.post(
            "/chat/api/send",
            json={"conversation": "../../etc", "messages": [{"role": "user", "content": "x"}]},
            headers=h,
        )
        assert (r.status_code, r.json()["error"]["param"]) == (400, "conversation")
        assert client.get("/chat/api/conversations").json()["data"] == []


def test_forget_and_redaction_reach_the_pages_conversations(tiny_chat, tmp_path, monkeypatch):
    """Under redaction the page's conversation is stored with personal data replaced and the
    session id hashed, and is still listed for its session; forgetting the id the page shows
    erases the conversation and its feedback."""
    monkeypatch.setenv("RLHFKIT_END_USER_KEY", "k" * 32)
    app, log = _app(tiny_chat, tmp_path, redact=True)
    with TestClient(app) as client:
        s = _open(client)
        got = _send(client, s["csrf"], [{"role": "user", "content": "mail me at ann@example.com"}])
        assert (
            client.post(
                "/chat/api/feedback",
                json={"completion_id": got["id"], "thumbs": "up"},
                headers={"X-CSRF-Token": s["csrf"]},
            ).status_code
            == 200
        )
        stored = log.completion(got["id"])
        assert stored["responses"][0]["end_user"].startswith("hmac:")
        assert "ann@example.com" not in json.dumps(stored) and "[EMAIL_ADDRESS]" in stored["prompt"]
        listed = client.get("/chat/api/conversations").json()["data"]
        assert [c["id"] for c in listed] == [got["conversation"]]
        gone = log.forget(s["end_user"])
        assert (gone["items"], gone["labels"]) == (1, 1)
        assert client.get("/chat/api/conversations").json()["data"] == []
        assert _labels(log) == []


def test_an_account_finds_its_conversations_in_any_browser_until_it_is_deactivated(tiny_chat, tmp_path):
    """Signing in with a store account makes the end-user id ``chat-account:<id>``: a second
    browser signed in as the same account lists the conversation, an anonymous one does not; a
    wrong password is 401 and the sixth wrong one from an address 429 (the app's LoginThrottle);
    an account deactivated by the operator is no session any more; signing out is a fresh
    anonymous session."""
    from rlhfkit.feedback.auth import create_user, update_user

    app, log = _app(tiny_chat, tmp_path)
    uid = log.store.write(lambda c: create_user(c, "ann", "ann-password-1", "labeler"))
    with TestClient(app) as one, TestClient(app) as two, TestClient(app) as stranger:
        a = _open(one)
        r = one.post(
            "/chat/api/login",
            json={"username": "ann", "password": "ann-password-1"},
            headers={"X-CSRF-Token": a["csrf"]},
        )
        assert r.status_code == 200 and r.json()["end_user"] == f"chat-account:{uid}"
        a = _open(one)
        assert a["end_user"] == f"chat-account:{uid}" and "Signed in as <strong>ann</strong>" in a["page"].text
        sent = _send(one, a["csrf"], [{"role": "user", "content": "ann's question"}])
        assert log.completion(sent["id"])["responses"][0]["end_user"] == f"chat-account:{uid}"
        b = _open(two)
        for _ in range(5):
            bad = two.post(
                "/chat/api/login",
                json={"username": "ann", "password": "wrong-password"},
                headers={"X-CSRF-Token": b["csrf"]},
            )
            assert (bad.status_code, bad.json()["error"]["code"]) == (401, "invalid_login")
        bad = two.post(
            "/chat/api/login",
            json={"username": "ann", "password": "ann-password-1"},
            headers={"X-CSRF-Token": b["csrf"]},
        )
        assert bad.status_code == 429 and int(bad.headers["retry-after"]) > 0  # even the right one, for a while
        log.store.write(lambda c: c.exec_driver_sql("DELETE FROM login_throttle"))  # the window passed
        assert (
            two.post(
                "/chat/api/login",
                json={"username": "ann", "password": "ann-password-1"},
                headers={"X-CSRF-Token": b["csrf"]},
            ).status_code
            == 200
        )
        assert [c["id"] for c in two.get("/chat/api/conversations").json()["data"]] == [sent["conversation"]]
        _open(stranger)
        assert stranger.get("/chat/api/conversations").json()["data"] == []
        b = _open(two)
        out = two.post("/chat/api/logout", headers={"X-CSRF-Token": b["csrf"]})
        assert out.status_code == 200 and out.json()["end_user"].startswith("chat:")
        assert two.get("/chat/api/conversations").json()["data"] == []
        log.store.write(lambda c: update_user(c, uid, active=False))
        r = one.get("/chat/api/conversations")
        assert (r.status_code, r.json()["error"]["code"]) == (401, "no_session")
        assert _open(one)["end_user"].startswith("chat:")  # the page starts an anonymous session


def test_wrong_api_keys_are_limited_like_wrong_passwords(tiny_chat, tmp_path):
    """The page's key form allows five wrong keys per address in a window, then answers 429
    (Retry-After) even for the right key."""
    app, _ = _app(tiny_chat, tmp_path, api_key="sekret-key")
    with TestClient(app) as client:
        s = _open(client)
        h = {"X-CSRF-Token": s["csrf"]}
        assert [client.post("/chat/api/key", json={"key": f"guess-{i}"}, headers=h).status_code for i in range(5)] == [
            401
        ] * 5
        r = client.post("/chat/api/key", json={"key": "sekret-key"}, headers=h)
        assert r.status_code == 429 and "retry-after" in r.headers
