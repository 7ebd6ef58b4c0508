"""Personal data in the feedback app's imports and exports: ``rlhfkit feedback serve --redact
true`` (``create_app(redact=True)``) replaces it in every admin import (JSON items, file upload,
the admin page's form) before labelers see it, and in every API export; on a server without it
a request's ``?redact=true`` asks for the same. The store never holds what was replaced."""

import json
import re

import pytest
from sqlalchemy import select

from rlhfkit.feedback import db

from .conftest import ADMIN_PW
from .test_api import label_all

ASK = "Reach me at jane.doe@example.com or (415) 555-2671."
A1 = "Sure, I will mail jane.doe@example.com today."
A2 = "Sure, I will mail bob@example.org today."  # differs from A1 only in the address
A3 = "I cannot help with that."


def _stored(store) -> str:
    with store.read() as c:
        rows = c.execute(select(db.items.c.prompt, db.items.c.messages, db.items.c.responses)).all()
    return json.dumps([list(map(str, r)) for r in rows], ensure_ascii=False)


def _project(client, admin, name="p"):
    r = client.post("/api/admin/projects", json={"name": name, "task_type": "pairwise"}, headers=admin)
    assert r.status_code == 201, r.text
    return r.json()["id"]


@pytest.mark.parametrize("app_kwargs", [{"redact": True}])
def test_a_redacting_server_redacts_every_import(env, app_kwargs):
    c, A = env.client, env.admin
    pid = _project(c, A)
    r = c.post(
        f"/api/admin/projects/{pid}/items",
        json={
            "items": [
                {"prompt": ASK, "responses": [A1, A3]},
                {"messages": [{"role": "user", "content": ASK}], "responses": [A2, A3]},
            ]
        },
        headers=A,
    )
    assert r.status_code == 200, r.text
    # the prompt has one address and one phone, item 1's answer one address; the rendered prompt
    # of item 2 is rendered again from its redacted message (counted once)
    assert r.json() == {"imported": 2, "gold": 0, "redacted": {"EMAIL_ADDRESS": 4, "PHONE_NUMBER": 2}}
    upload = json.dumps({"prompt": "card 4111 1111 1111 1111", "chosen": A3, "rejected": "ssn 123-45-6789"})
    r = c.post(f"/api/admin/projects/{pid}/import", files={"file": ("u.jsonl", upload.encode())}, headers=A)
    assert r.json() == {"imported": 1, "gold": 0, "redacted": {"CREDIT_CARD": 1, "US_SSN": 1}}
    # a request cannot turn it off
    r = c.post(
        f"/api/admin/projects/{pid}/items?redact=false",
        json={"items": [{"prompt": ASK, "responses": [A3, A3 + "!"]}]},
        headers=A,
    )
    assert r.json()["redacted"] == {"EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1}
    stored = _stored(env.store)
    for secret in ("jane.doe@example.com", "555-2671", "bob@example.org", "4111 1111", "123-45-6789"):
        assert secret not in stored
    assert "[EMAIL_ADDRESS]" in stored and "[PHONE_NUMBER]" in stored and "[CREDIT_CARD]" in stored
    # labelers are served the redacted text
    t = c.post("/api/tasks/next", params={"project_id": pid}, headers=env.ann).json()
    assert "[EMAIL_ADDRESS]" in json.dumps(t) and "jane.doe" not in json.dumps(t)


def test_a_request_asks_for_redaction_on_an_ordinary_server(env):
    c, A = env.client, env.admin
    pid = _project(c, A)
    r = c.post(f"/api/admin/projects/{pid}/items", json={"items": [{"prompt": ASK, "responses": [A1, A3]}]}, headers=A)
    assert r.json() == {"imported": 1, "gold": 0}  # no redaction asked: stored as given
    assert "jane.doe@example.com" in _stored(env.store)
    pid2 = _project(c, A, "p2")
    r = c.post(
        f"/api/admin/projects/{pid2}/import?redact=true",
        files={"file": ("u.jsonl", json.dumps({"prompt": ASK, "responses": [A1, A3]}).encode())},
        headers=A,
    )
    assert r.json() == {"imported": 1, "gold": 0, "redacted": {"EMAIL_ADDRESS": 2, "PHONE_NUMBER": 1}}
    with env.store.read() as conn:
        p2 = conn.execute(select(db.items.c.prompt).where(db.items.c.project_id == pid2)).scalar()
    assert p2 == "Reach me at [EMAIL_ADDRESS] or [PHONE_NUMBER]."


def test_export_redacts_and_leaves_out_pairs_that_became_one_text(env):
    c, A = env.client, env.admin
    pid = _project(c, A)
    c.post(
        f"/api/admin/projects/{pid}/items",
        json={
            "items": [
                {"prompt": ASK, "responses": [A1, A2]},  # equal once redacted: no preference left
                {"prompt": ASK, "responses": [A1, A3]},
            ]
        },
        headers=A,
    )
    label_all(c, env.ann, lambda t: {"choice": "A"}, pid)
    plain = c.get(f"/api/admin/projects/{pid}/export", params={"kind": "pairs"}, headers=A)
    assert "X-Redacted" not in plain.headers and plain.text.count("jane.doe@example.com") >= 2
    r = c.get(f"/api/admin/projects/{pid}/export", params={"kind": "pairs", "redact": "true"}, headers=A)
    assert r.status_code == 200
    recs = [json.loads(line) for line in r.text.splitlines()]
    assert len(recs) == 1 and "@" not in r.text and "555" not in r.text
    assert recs[0]["prompt"] == "Reach me at [EMAIL_ADDRESS] or [PHONE_NUMBER]."
    # what was replaced is counted in the records kept and left out alike
    assert json.loads(r.headers["X-Redacted"]) == {"EMAIL_ADDRESS": 5, "PHONE_NUMBER": 2, "pairs_left_out": 1}


@pytest.mark.parametrize("app_kwargs", [{"redact": True}])
def test_admin_page_import_says_what_was_replaced(env, app_kwargs):
    c = env.client
    pid = _project(c, env.admin)
    login = c.get("/login").text.split('name="csrf_token" value="')[1].split('"')[0]
    r = c.post(
        "/login",
        data={"username": "admin", "password": ADMIN_PW, "csrf_token": login, "next": "/"},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    csrf = c.get(f"/admin/projects/{pid}").text.split('name="csrf-token" content="')[1].split('"')[0]
    r = c.post(
        f"/admin/projects/{pid}/import",
        files={"file": ("u.jsonl", json.dumps({"prompt": ASK, "responses": [A1, A3]}).encode())},
        data={"csrf_token": csrf},
        follow_redirects=False,
    )
    assert r.status_code == 303
    page = c.get(r.headers["location"]).text
    assert re.search(
        r'<p class="msg">1 items imported; personal data replaced: 2 EMAIL_ADDRESS, 1 PHONE_NUMBER</p>', page
    ), page
    assert "jane.doe" not in _stored(env.store)
    # the page offers redacted exports
    assert f"/api/admin/projects/{pid}/export?kind=pairs&redact=true" in c.get(f"/admin/projects/{pid}").text


def _echo_generator(prompts, n):
    """A live-generation hook that repeats the user's data back (as a model may)."""
    return [[{"text": f"I will mail jane.doe@example.com ({i})", "model": "echo"} for i in range(n)] for _ in prompts]


@pytest.mark.parametrize("app_kwargs", [{"redact": True, "generator": _echo_generator}])
def test_a_redacting_server_redacts_generated_items_and_label_payloads(env, app_kwargs):
    c, A = env.client, env.admin
    r = c.post("/api/admin/projects", json={"name": "rw", "task_type": "rewrite"}, headers=A)
    pid = r.json()["id"]
    r = c.post(f"/api/admin/projects/{pid}/generate", json={"prompts": [ASK], "n": 1}, headers=A)
    assert r.status_code == 200 and r.json() == {"imported": 1}, r.text
    assert "jane.doe" not in _stored(env.store) and "555-2671" not in _stored(env.store)
    t = c.post("/api/tasks/next", params={"project_id": pid}, headers=env.ann).json()
    assert "[EMAIL_ADDRESS]" in json.dumps(t) and "jane.doe" not in json.dumps(t)
    # a labeler's rewrite holds personal data of its own: the labels endpoint does not hand it out
    r = c.post(f"/api/tasks/{t['task_id']}/label", json={"rewrite": "write to ann@example.com"}, headers=env.ann)
    assert r.status_code == 200, r.text
    labels = c.get(f"/api/admin/projects/{pid}/labels", headers=A).json()
    assert labels[0]["payload"]["rewrite"] == "write to [EMAIL_ADDRESS]"


def test_labels_endpoint_redacts_on_request(env):
    c, A = env.client, env.admin
    r = c.post("/api/admin/projects", json={"name": "rw", "task_type": "rewrite"}, headers=A)
    pid = r.json()["id"]
    c.post(f"/api/admin/projects/{pid}/items", json={"items": [{"prompt": "p", "completion": "a"}]}, headers=A)
    t = c.post("/api/tasks/next", params={"project_id": pid}, headers=env.ann).json()
    c.post(f"/api/tasks/{t['task_id']}/label", json={"rewrite": "call 415-555-2671"}, headers=env.ann)
    assert c.get(f"/api/admin/projects/{pid}/labels", headers=A).json()[0]["payload"]["rewrite"] == "call 415-555-2671"
    r = c.get(f"/api/admin/projects/{pid}/labels", params={"redact": "true"}, headers=A).json()
    assert r[0]["payload"]["rewrite"] == "call [PHONE_NUMBER]"
    assert c.get(f"/api/admin/projects/{pid}/labels", params={"redact": "true"}, headers=env.ann).status_code == 403


def test_an_item_whose_answers_become_one_text_is_not_imported(env):
    c, A = env.client, env.admin
    pid = _project(c, A)
    r = c.post(
        f"/api/admin/projects/{pid}/items?redact=true",
        json={
            "items": [
                {"prompt": "q", "responses": [A1, A2]},  # differ only in the address
                {"prompt": "q", "responses": [A1, A3]},
            ]
        },
        headers=A,
    )
    assert r.json() == {"imported": 1, "gold": 0, "redacted": {"EMAIL_ADDRESS": 3}, "left_out": 1}
