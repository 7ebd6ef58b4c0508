"""The end users' web chat in headless Chromium (Debian's /usr/bin/chromium driven by Python
Playwright), against a real ``rlhfkit serve`` process on loopback with a tiny model: a streamed
reply, every feedback kind landing in the SQLite store, the two-reply choice, another session
seeing nothing, and the whole flow by keyboard."""

import contextlib
import json
import os
import re
import sqlite3

import pytest

from ..loopback import CHROMIUM, serve_process

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent (apt-get install chromium)")
pytest.importorskip("itsdangerous")


@contextlib.contextmanager
def serving(model_dir, folder, *flags):
    """A real ``rlhfkit serve`` process on a free loopback port: ``(base URL, SQLite path)``."""
    db = folder / "fb.db"
    flags = ("--db", str(db), "--max_new_tokens", "12", *flags)
    with serve_process(model_dir, *flags, env={"RLHFKIT_API_KEY": None}) as (_, base):
        yield base, db


@pytest.fixture(scope="module")
def server(tiny_chat_dir, tmp_path_factory):
    with serving(tiny_chat_dir, tmp_path_factory.mktemp("webchat")) as s:
        yield s


def _rows(db, sql, *args) -> list:
    with contextlib.closing(sqlite3.connect(db)) as c:
        return c.execute(sql, args).fetchall()


def _labels(db, suffix) -> list[dict]:
    """The payloads of the labels in project serve-SUFFIX, in id order."""
    return [
        json.loads(p)
        for (p,) in _rows(
            db,
            "SELECT l.payload FROM labels l JOIN projects p ON p.id = l.project_id WHERE p.name = ? ORDER BY l.id",
            f"serve-{suffix}",
        )
    ]


def _completions(db, end_user) -> list[dict]:
    """The stored replies served to ``end_user``: ``{"id", "messages", **response}`` in id order."""
    out = []
    for ext, messages, responses in _rows(
        db,
        "SELECT i.external_id, i.messages, i.responses FROM items i JOIN projects p "
        "ON p.id = i.project_id WHERE p.name = 'serve-thumbs' ORDER BY i.id",
    ):
        r = json.loads(responses)[0]
        if r.get("end_user") == end_user:
            out.append({"id": ext, "messages": json.loads(messages), **r})
    return out


def _page(browser, base):
    page = browser.new_context(viewport={"width": 1200, "height": 800}).new_page()
    page.goto(f"{base}/chat")
    page.wait_for_selector("#conversations li")  # the list was loaded: the script runs
    return page, page.text_content("#end-user")


def _finished(page, n):
    """Wait for the ``n``-th assistant turn to be finished (its controls or its two choices shown)."""
    page.locator(".turn.assistant").nth(n - 1).locator(".controls, .choices").first.wait_for()


def test_a_reply_streams_in_and_every_feedback_kind_reaches_the_store(browser, server):
    """A message sent with Enter is answered in pieces (the reply grows on the page), and thumbs
    up with a reason, a rating, an edited reply and a regenerated reply are stored for the
    page's end-user id, in SQLite; the conversation is listed by its first message."""
    base, db = server
    page, me = _page(browser, base)
    page.evaluate("""() => { window.seen = []; new MutationObserver((records) => { for (const r of records)
        for (const n of r.addedNodes) if (n.classList && n.classList.contains('assistant'))
          window.seen.push(n.querySelector('.reply') ? n.querySelector('.reply').textContent : ''); })
        .observe(document.querySelector('#messages'), {childList: true}); }""")
    page.fill("#prompt", "Hello there, assistant")
    page.press("#prompt", "Enter")
    _finished(page, 1)
    reply = page.text_content(".turn.assistant .reply")
    seen = [t for t in page.evaluate("window.seen") if t]
    assert len(set(seen)) >= 2 and all(reply.startswith(t) for t in seen), seen  # shown as it grew

    page.click("button[aria-label='Thumbs up']")
    page.fill(".reason", "friendly")
    page.click("text=Send reason")
    page.locator("#status", has_text="Saved: your reason").wait_for()
    page.click("button[aria-label='Rate 4 of 5']")
    page.locator("#status", has_text="rated 4 of 5").wait_for()
    page.click("button.edit")
    page.fill(".edit-text", "Hello! How can I help you today?")
    page.click("text=Save better reply")
    page.locator("#status", has_text="your better reply").wait_for()
    page.click("button.regenerate")
    page.locator("#status", has_text="Reply finished").wait_for()

    stored = _completions(db, me)
    assert len(stored) == 2 and stored[0]["text"] == (reply or "(empty response)")
    assert stored[0]["conversation"] == stored[1]["conversation"]
    assert [m["content"] for m in stored[1]["messages"]] == ["Hello there, assistant"]  # the same question again
    assert [(p["label"], p["reason"], p["end_user"]) for p in _labels(db, "thumbs") if p["end_user"] == me] == [
        (True, "friendly", me)
    ]
    assert [p["rating"] for p in _labels(db, "ratings") if p["end_user"] == me] == [4]
    assert [p["rewrite"] for p in _labels(db, "edits") if p["end_user"] == me] == ["Hello! How can I help you today?"]
    assert page.text_content("#conversations").strip().startswith("Hello there, assistant")


def test_another_session_cannot_see_the_conversation(browser, server):
    """A second browser context (another session) lists none of the first one's conversations
    and is answered 404 for its id; the first one, reloaded, finds it again."""
    base, db = server
    page, me = _page(browser, base)
    page.fill("#prompt", "a private question")
    page.press("#prompt", "Enter")
    _finished(page, 1)
    conversation = _completions(db, me)[0]["conversation"]
    other, them = _page(browser, base)
    assert them != me
    assert "None yet." in other.text_content("#conversations")
    assert other.context.request.get(f"{base}/chat/api/conversations/{conversation}").status == 404
    assert page.context.request.get(f"{base}/chat/api/conversations/{conversation}").status == 200
    page.reload()
    page.click("#conversations button")
    page.locator(".turn.user", has_text="a private question").wait_for()


def test_the_two_reply_choice_is_a_preference_and_the_conversation_goes_on_with_it(browser, tiny_chat_dir, tmp_path):
    """With comparisons on, a reply comes as two; picking the second by its button stores a
    preference pair for it, the next message continues with that reply, and a reload shows it."""
    with serving(tiny_chat_dir, tmp_path, "--compare_share", "1") as (base, db):
        page, me = _page(browser, base)
        page.fill("#prompt", "Which is better?")
        page.press("#prompt", "Enter")
        page.wait_for_selector(".choices")
        second = page.text_content(".choice:nth-child(2) .reply")
        page.fill("#prompt", "next")
        page.press("#prompt", "Enter")
        page.locator("#status", has_text="Pick one of the two replies first").wait_for()
        page.click("button[aria-label='Prefer reply 2']")
        page.locator("#status", has_text="you prefer reply 2").wait_for()
        assert [p["verdict"] for p in _labels(db, "choices") if p["end_user"] == me] == ["second"]
        page.press("#prompt", "Enter")  # "next" is still in the box
        _finished(page, 2)
        follow_up = _completions(db, me)[-1]
        assert [m["content"] for m in follow_up["messages"]] == [
            "Which is better?",
            second or "(empty message)",
            "next",
        ]
        page.reload()
        page.click("#conversations button")
        page.locator(".turn.user", has_text="next").wait_for()
        assert page.locator(".turn.assistant >> nth=0").locator(".reply").text_content() == second


def test_the_whole_flow_by_keyboard(browser, server):
    """Keyboard only: the message box has focus on arrival and Tab goes on to Send; Shift+Enter
    is a new line and Enter sends; Shift+Tab from the box reaches the reply's labelled buttons,
    Enter on Thumbs down opens the reason box (focused), Enter sends the reason, and Space on
    "Rate 2 of 5" rates -- all stored."""
    base, db = server
    page, me = _page(browser, base)
    focused = lambda: page.locator("*:focus")  # noqa: E731
    assert focused().get_attribute("id") == "prompt"
    page.keyboard.press("Tab")
    assert focused().get_attribute("id") == "send"
    page.keyboard.press("Shift+Tab")
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    page.keyboard.press("Enter")
    _finished(page, 1)
    assert [m["content"] for m in _completions(db, me)[0]["messages"]] == ["first line\nsecond line"]
    assert focused().get_attribute("id") == "prompt"  # still in the box after sending
    for _ in range(20):
        page.keyboard.press("Shift+Tab")
        if focused().get_attribute("aria-label") == "Thumbs down":
            break
    assert focused().get_attribute("aria-label") == "Thumbs down"
    page.keyboard.press("Enter")
    page.locator("#status", has_text="thumbs down").wait_for()
    assert "reason" in (focused().get_attribute("class") or "")
    page.keyboard.type("off topic")
    page.keyboard.press("Enter")
    page.locator("#status", has_text="your reason").wait_for()
    for _ in range(10):
        page.keyboard.press("Tab")
        if focused().get_attribute("aria-label") == "Rate 2 of 5":
            break
    page.keyboard.press("Space")
    page.locator("#status", has_text="rated 2 of 5").wait_for()
    assert [(p["label"], p["reason"]) for p in _labels(db, "thumbs") if p["end_user"] == me] == [(False, "off topic")]
    assert [p["rating"] for p in _labels(db, "ratings") if p["end_user"] == me] == [2]
    names = [
        re.sub(r"\s+", " ", b)
        for b in page.locator(".turn.assistant button").evaluate_all(
            "bs => bs.map(b => b.getAttribute('aria-label') || b.textContent)"
        )
    ]
    assert names == ["Thumbs up", "Thumbs down"] + [f"Rate {n} of 5" for n in range(1, 6)] + ["Edit", "Regenerate"]


def test_signing_in_brings_an_accounts_conversations_to_another_browser(browser, server):
    """Signed in through the page's form (keyboard: Enter submits), an account's conversation
    written in one browser is listed in another signed in as it; signing out leaves none."""
    from rlhfkit.feedback import db as fdb
    from rlhfkit.feedback.auth import create_user

    base, db = server
    store = fdb.Store(str(db))
    try:
        uid = store.write(lambda c: create_user(c, "omar", "omar-password-1", "labeler"))
    finally:
        store.close()

    def sign_in(page):
        page.click("#show-sign-in")
        page.keyboard.type("omar")  # the user-name box has the focus
        page.fill("#password", "omar-password-1")
        page.press("#password", "Enter")
        page.locator("#signed-in", has_text="omar").wait_for()
        page.wait_for_selector("#conversations li")

    page, _ = _page(browser, base)
    sign_in(page)
    assert page.text_content("#end-user") == f"chat-account:{uid}"
    page.fill("#prompt", "omar asks")
    page.press("#prompt", "Enter")
    _finished(page, 1)
    other, _ = _page(browser, base)
    assert "omar asks" not in other.text_content("#conversations")
    sign_in(other)
    assert other.text_content("#conversations button") == "omar asks"
    other.click("#sign-out")
    other.locator("#show-sign-in").wait_for()
    other.wait_for_selector("#conversations li.empty")


def test_a_message_over_the_sessions_limit_shows_why_on_the_page(browser, tiny_chat_dir, tmp_path):
    """With ``--chat_sends_per_minute 1`` the second message of a minute is refused (429) and the
    page says so in its status line, keeping the message out of the conversation."""
    with serving(tiny_chat_dir, tmp_path, "--chat_sends_per_minute", "1") as (base, db):
        page, me = _page(browser, base)
        page.fill("#prompt", "first")
        page.press("#prompt", "Enter")
        _finished(page, 1)
        page.fill("#prompt", "second")
        page.press("#prompt", "Enter")
        page.locator("#status.error", has_text="No reply: too many messages from this chat session").wait_for()
        assert page.locator(".turn.assistant").count() == 1
        assert len(_completions(db, me)) == 1
