"""Browser tests in headless Chromium (Debian's /usr/bin/chromium, driven by Python Playwright; no
browser download): log-in, a pairwise verdict by keyboard, a ranking, a rewrite, an export."""

import os
import re
import time

import pytest
from sqlalchemy import select

from rlhfkit.data import read_records
from rlhfkit.feedback import db
from rlhfkit.feedback.auth import create_user
from rlhfkit.feedback.queue import add_items
from rlhfkit.feedback.tasks import parse_items

from ..loopback import CHROMIUM

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent (apt-get install chromium)")


@pytest.fixture
def site(live_server):
    base, app = live_server
    store = app.state.store
    store.write(lambda c: create_user(c, "boss", "boss-password", "admin"))
    store.write(lambda c: create_user(c, "lena", "lena-password", "labeler"))
    return base, store


def _project(store, name, ttype, items, **kw):
    from sqlalchemy import insert

    def job(c):
        pid = c.execute(
            insert(db.projects).values(
                name=name,
                task_type=ttype,
                instructions=kw.get("instructions", "Pick the better answer."),
                overlap=1,
                gold_rate=0.0,
                scale_min=1,
                scale_max=7,
                active=True,
                n_items=0,
                n_labels=0,
                created_at=time.time(),
            )
        ).inserted_primary_key[0]
        add_items(c, pid, parse_items(items, ttype))
        return pid

    return store.write(job)


def _login(page, base, user, password):
    page.goto(f"{base}/login")
    page.fill("#username", user)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")


def _labels(store):
    with store.read() as c:
        return c.execute(
            select(db.labels.c.payload, db.items.c.prompt, db.items.c.responses)
            .select_from(db.labels.join(db.items, db.items.c.id == db.labels.c.item_id))
            .order_by(db.labels.c.id)
        ).all()


def test_login_and_pairwise_verdict_by_keyboard(browser, site):
    base, store = site
    pid = _project(
        store,
        "pairs",
        "pairwise",
        [
            {"prompt": "Say hi", "responses": ["Hello there!", "Go away."], "models": ["nice", "rude"]},
            {
                "messages": [
                    {"role": "user", "content": "2+2?"},
                    {"role": "assistant", "content": "5"},
                    {"role": "user", "content": "Sure?"},
                ],
                "responses": ["Sorry, it is 4.", "Yes."],
            },
        ],
    )
    page = browser.new_context().new_page()
    page.goto(f"{base}/label/{pid}")
    assert "/login" in page.url  # not signed in: sent to the log-in page
    page.fill("#username", "lena")
    page.fill("#password", "wrong-password")
    page.click("button[type=submit]")
    assert "Wrong user name or password" in page.text_content(".error")
    _login(page, base, "lena", "lena-password")
    assert "pairs" in page.text_content("main")
    page.goto(f"{base}/label/{pid}")
    page.wait_for_selector(".pair .response")
    assert "nice" not in page.content() and "rude" not in page.content()  # model identity hidden
    first_prompt = page.text_content(".conversation")
    left = page.text_content(".pair .response[data-key=A] .content")
    page.keyboard.press("w")  # strength: clearly better
    page.keyboard.press("1")  # A (left) is better
    page.locator("#status", has_text=re.compile(r"^Saved")).wait_for()  # no eval: the CSP forbids it
    # the second task is a conversation, shown turn by turn
    page.wait_for_selector(".conversation .turn.assistant")
    assert page.locator(".conversation .turn").count() == 3
    assert "1 / 2" in page.text_content("#progress-text")
    page.keyboard.press("4")  # both bad
    page.wait_for_selector(".done")
    rows = _labels(store)
    assert len(rows) == 2
    payload, prompt, responses = next(r for r in rows if r.prompt in first_prompt)
    expected = "first" if responses[0]["text"] == left else "second"
    assert payload == {"verdict": expected, "strength": 2}
    assert rows[1].payload["verdict"] == "both_bad"


def test_ranking_by_keyboard(browser, site):
    base, store = site
    pid = _project(store, "rank", "ranking", [{"prompt": "Best poem?", "responses": ["alpha", "beta", "gamma"]}])
    page = browser.new_context().new_page()
    _login(page, base, "lena", "lena-password")
    page.goto(f"{base}/label/{pid}")
    page.wait_for_selector(".ranking .response")
    shown = {k: page.text_content(f".ranking .response[data-key={k}] .content") for k in "ABC"}
    page.keyboard.press("c")
    page.keyboard.press("a")
    assert "C > A" in page.text_content("#ranking-order")
    page.keyboard.press("Enter")  # B is implied last
    page.wait_for_selector(".done")
    ((payload, _, responses),) = _labels(store)
    texts = [r["text"] for r in responses]
    ranks = {t: r for t, r in zip(texts, payload["ranks"])}
    assert (ranks[shown["C"]], ranks[shown["A"]], ranks[shown["B"]]) == (0, 1, 2)


def test_rewrite(browser, site):
    base, store = site
    pid = _project(store, "fix", "rewrite", [{"prompt": "Capital of France?", "completion": "Lyon."}])
    page = browser.new_context().new_page()
    _login(page, base, "lena", "lena-password")
    page.goto(f"{base}/label/{pid}")
    page.wait_for_selector("#rewrite")
    assert page.input_value("#rewrite") == "Lyon."
    page.fill("#rewrite", "Paris is the capital of France.")
    page.focus("#rewrite")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector(".done")
    ((payload, prompt, _),) = _labels(store)
    assert payload == {"rewrite": "Paris is the capital of France."} and prompt == "Capital of France?"


def test_export_from_dashboard(browser, site, tmp_path):
    base, store = site
    pid = _project(store, "thumbs", "thumbs", [{"prompt": "q", "completion": "a"}, {"prompt": "r", "completion": "b"}])
    page = browser.new_context().new_page()
    _login(page, base, "lena", "lena-password")
    page.goto(f"{base}/label/{pid}")
    page.wait_for_selector(".response")
    page.keyboard.press("ArrowUp")
    page.locator("#status", has_text=re.compile(r"^Saved")).wait_for()  # no eval: the CSP forbids it
    page.keyboard.press("ArrowDown")
    page.wait_for_selector(".done")
    assert page.goto(f"{base}/admin").status == 403  # a labeler cannot open the dashboard

    admin = browser.new_context(accept_downloads=True).new_page()
    _login(admin, base, "boss", "boss-password")
    admin.goto(f"{base}/admin/projects/{pid}")
    assert "lena" in admin.text_content("#labelers-table")
    with admin.expect_download() as dl:
        admin.click("#export-thumbs")
    path = tmp_path / "export.jsonl"
    dl.value.save_as(path)
    recs = read_records(path, "thumbs").records
    assert sorted((r.prompt, r.label) for r in recs) == [("q", True), ("r", False)]


def test_pages_work_under_their_content_security_policy(browser, site):
    """Every page loads its script and styles with no Content-Security-Policy violation, and an
    admin deactivates a labeler from the admin page (whose session then ends)."""
    base, store = site
    pid = _project(store, "csp", "pairwise", [{"prompt": "Hi", "responses": ["a", "b"]}])
    admin = browser.new_context().new_page()
    violations = []
    admin.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    _login(admin, base, "boss", "boss-password")
    lena = browser.new_context().new_page()
    lena.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    _login(lena, base, "lena", "lena-password")
    lena.goto(f"{base}/label/{pid}")
    lena.wait_for_selector(".pair .response")
    for path in ("/", "/admin", f"/admin/projects/{pid}"):
        assert admin.goto(f"{base}{path}").status == 200
    assert violations == []
    admin.goto(f"{base}/admin")
    row = admin.locator("#users-table tr", has_text="lena")
    row.locator("select[name=active]").select_option("inactive")
    row.locator("button[type=submit]").click()
    admin.wait_for_selector(".msg")
    assert "lena saved" in admin.text_content(".msg")
    lena.goto(f"{base}/")
    assert "/login" in lena.url  # her session ended
