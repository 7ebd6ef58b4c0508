"""The web chat's rate limits (``webchat.ChatLimits``), through HTTP in process: messages per
session and minute, new sessions per client address and hour, messages per address and minute
(all its sessions together), feedback per session and minute, each answered 429 with
``Retry-After`` in the chat's JSON error shape, before the body is read; other sessions are not
affected. The page showing the error is in test_webchat_browser.py."""

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("itsdangerous")

from fastapi.testclient import TestClient  # noqa: E402

from rlhfkit.serve.webchat import ChatLimits  # noqa: E402

from .test_webchat import _app, _open, _send  # noqa: E402

HI = [{"role": "user", "content": "hi"}]


def _refused(r, what: str, window_s: int) -> None:
    assert r.status_code == 429, r.text
    # the window began at the first counted hit, seconds ago: the wait is most of the window (a
    # limiter answering "retry in 1 s" to a one-minute window would fail here), at most all of it
    assert window_s // 2 <= int(r.headers["retry-after"]) <= window_s + 1
    error = r.json()["error"]
    assert error["code"] == "rate_limited" and f"too many {what}" in error["message"], error


def test_a_session_sends_at_most_its_messages_per_minute_and_another_is_unaffected(tiny_chat, tmp_path):
    """With 3 messages a minute, a session's fourth message in the minute is 429 (Retry-After, the
    chat's error shape), even one whose body is no JSON (the limit comes before the body); only
    the three answered are stored; a second session still sends."""
    app, log = _app(tiny_chat, tmp_path, chat_limits=ChatLimits(sends_per_minute=3))
    with TestClient(app) as first, TestClient(app) as second:
        s = _open(first)
        for _ in range(3):  # each a new conversation
            _send(first, s["csrf"], HI)
        h = {"X-CSRF-Token": s["csrf"]}
        _refused(first.post("/chat/api/send", json={"messages": HI}, headers=h), "messages", 60)
        _refused(first.post("/chat/api/send", content=b"{" * 100, headers=h), "messages", 60)
        other = _open(second)
        assert _send(second, other["csrf"], HI)["replies"]
        assert len(log.conversations(s["end_user"])) == 3


def test_an_address_opens_at_most_its_new_sessions_per_hour(tiny_chat, tmp_path):
    """With 2 new sessions an hour per address, a third browser without a session is 429; a
    session that exists keeps loading its page; signing out (which makes a new anonymous
    session) counts as a new one."""
    app, _ = _app(tiny_chat, tmp_path, chat_limits=ChatLimits(sessions_per_hour=2))
    with TestClient(app) as a, TestClient(app) as b, TestClient(app) as c:
        s = _open(a)
        _open(b)
        _refused(c.get("/chat"), "new chat sessions", 3600)
        assert "set-cookie" not in c.get("/chat").headers
        assert a.get("/chat").status_code == 200  # its own session: nothing new counted
        _refused(a.post("/chat/api/logout", headers={"X-CSRF-Token": s["csrf"]}), "new chat sessions", 3600)


def test_an_address_sends_at_most_its_messages_per_minute_over_all_its_sessions(tiny_chat, tmp_path):
    """Sessions last 30 days, so an address could hoard them: with 3 messages a minute per
    address (and no per-session limit), two sessions from one address send 3 in all, the fourth
    is 429 whichever session sends it."""
    limits = ChatLimits(sends_per_minute=0, address_sends_per_minute=3)
    app, log = _app(tiny_chat, tmp_path, chat_limits=limits)
    with TestClient(app) as first, TestClient(app) as second:
        a, b = _open(first), _open(second)
        _send(first, a["csrf"], HI)
        _send(second, b["csrf"], HI)
        _send(first, a["csrf"], HI)
        h = {"X-CSRF-Token": b["csrf"]}
        _refused(second.post("/chat/api/send", json={"messages": HI}, headers=h), "messages", 60)
        assert len(log.conversations(a["end_user"])) + len(log.conversations(b["end_user"])) == 3


def test_a_session_gives_at_most_its_feedback_per_minute(tiny_chat, tmp_path):
    """With 2 feedback calls a minute, a session's third thumbs in the minute is 429 (each is a
    write to the store); the first two are answered."""
    app, _ = _app(tiny_chat, tmp_path, chat_limits=ChatLimits(feedback_per_minute=2))
    with TestClient(app) as client:
        s = _open(client)
        sent = _send(client, s["csrf"], HI)
        h = {"X-CSRF-Token": s["csrf"]}
        for thumbs in ("up", "down"):
            r = client.post("/chat/api/feedback", json={"completion_id": sent["id"], "thumbs": thumbs}, headers=h)
            assert r.status_code == 200, r.text
        r = client.post("/chat/api/feedback", json={"completion_id": sent["id"], "thumbs": "up"}, headers=h)
        _refused(r, "feedback", 60)
