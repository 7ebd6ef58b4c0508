"""Bad input answers 422 naming the field; user and project management; security headers; the
log-in throttle's rules (the attacks on a real server process are in test_hardening_server.py)."""

import base64
import hashlib
import html
import json
import re
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, insert, select

from rlhfkit.feedback import db
from rlhfkit.feedback.app import create_app
from rlhfkit.feedback.web.flash import FLASH_COOKIE, sign

from .conftest import ADMIN_PW, BOTH_BACKENDS, LAB_PW, add_labelers, bearer, make_project


def _items(n=3):
    return [{"prompt": f"p{i}", "responses": [f"a{i}", f"b{i}"]} for i in range(n)]


def _count(store, table, *where) -> int:
    with store.read() as c:
        return c.execute(select(func.count()).select_from(table).where(*where)).scalar()


def _browser_login(client, username, password):
    r = client.get("/login")
    csrf = r.text.split('name="csrf_token" value="')[1].split('"')[0]
    r = client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": csrf, "next": "/"},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    return client.get("/").text.split('name="csrf-token" content="')[1].split('"')[0]


def _shown(client, redirect) -> dict:
    """The messages (``msg``, ``error``) on the page a form's redirect leads to."""
    page = client.get(redirect.headers["location"]).text
    return {
        k: html.unescape(m.group(1))
        for k in ("msg", "error")
        if (m := re.search(rf'<p class="{k}"[^>]*>(.*?)</p>', page, re.S))
    }


def _user_id(env, name) -> int:
    return {u["username"]: u["id"] for u in env.client.get("/api/admin/users", headers=env.admin).json()}[name]


# ----------------------------------------------------------------------------- 3. 422, not 500
@pytest.mark.parametrize(
    "raw, loc",
    [
        (b'{"choice": NaN}', ["body", "choice"]),
        (b'{"choice": "A", "duration_ms": Infinity}', ["body", "duration_ms"]),
        (b'{"choice": "A", "duration_ms": -Infinity}', ["body", "duration_ms"]),
        (b'{"choice": "A", "duration_ms": 1e400}', ["body", "duration_ms"]),
        (b'{"choice": "A", "duration_ms": 1000000000000000000000000000000}', ["body", "duration_ms"]),
        (b'{"choice": "A", "duration_ms": -5}', ["body", "duration_ms"]),
        (b'{"rewrite": "fine", "flags": ["\\ud800"]}', ["body", "flags", 0]),
    ],
)
def test_verdicts_with_values_json_cannot_carry_are_422_naming_the_field(env, raw, loc):
    make_project(env.client, env.admin, "pairwise", _items(1))
    t = env.client.post("/api/tasks/next", headers=env.ann).json()
    r = env.client.post(
        f"/api/tasks/{t['task_id']}/label", content=raw, headers={**env.ann, "Content-Type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == loc
    assert _count(env.store, db.labels) == 0


def test_a_lone_surrogate_in_an_import_is_422_naming_the_field(env, tmp_path):
    """In JSON items and in an uploaded JSONL file alike (``json.loads`` accepts ``"\\ud800"``, but
    no database or export can store it)."""
    pid = make_project(env.client, env.admin, "pairwise", _items(1))
    raw = b'{"items": [{"prompt": "ok", "responses": ["a", "b"]}, {"prompt": "x", "responses": ["a", "\\ud800"]}]}'
    r = env.client.post(
        f"/api/admin/projects/{pid}/items", content=raw, headers={**env.admin, "Content-Type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "items", 1, "responses", 1]
    line = b'{"prompt": "p", "responses": ["a", "\\udc80 b"]}\n'
    r = env.client.post(f"/api/admin/projects/{pid}/import", files={"file": ("s.jsonl", line)}, headers=env.admin)
    assert r.status_code == 422, r.text
    d = r.json()["detail"]
    assert (d["file"], d["line"], d["field"], d["imported"]) == ("s.jsonl", 1, "responses[1]", 0)
    # a key is named escaped
    raw = b'{"items": [{"prompt": "p", "responses": ["a", "b"], "\\ud800": 1}]}'
    r = env.client.post(
        f"/api/admin/projects/{pid}/items", content=raw, headers={**env.admin, "Content-Type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "items", 0, "\\ud800"]
    assert _count(env.store, db.items) == 1


@pytest.mark.parametrize("name", ["..", ".", "a/..", "x\\.."])
def test_an_upload_whose_name_is_no_file_name_is_422(env, name):
    pid = make_project(env.client, env.admin, "thumbs", [{"prompt": "p", "completion": "c"}])
    r = env.client.post(
        f"/api/admin/projects/{pid}/import",
        headers=env.admin,
        files={"file": (name, b'{"prompt": "q", "completion": "d"}\n')},
    )
    assert r.status_code == 422, r.text
    assert r.json()["detail"]["field"] == "file"
    assert _count(env.store, db.items) == 1


def test_an_upload_named_with_a_path_imports_under_its_last_part(env):
    pid = make_project(env.client, env.admin, "thumbs", [{"prompt": "p", "completion": "c"}])
    r = env.client.post(
        f"/api/admin/projects/{pid}/import",
        headers=env.admin,
        files={"file": ("../../etc/x.jsonl", b'{"prompt": "q", "completion": "d"}\n{"prompt": 1}\n')},
    )
    assert r.status_code == 422 and r.json()["detail"]["file"] == "x.jsonl"  # the client's name, its last part
    r = env.client.post(
        f"/api/admin/projects/{pid}/import",
        headers=env.admin,
        files={
            "file": ("C:\\data\\items.jsonl.gz", __import__("gzip").compress(b'{"prompt": "q", "completion": "d"}\n'))
        },
    )
    assert r.status_code == 200 and r.json()["imported"] == 1  # .gz still read as gzip


def test_ids_past_the_integer_columns_are_422(env):
    for method, path in [
        ("GET", f"/api/tasks/{10**30}"),
        ("POST", f"/api/tasks/{2**31}/skip"),
        ("POST", f"/api/tasks/next?project_id={10**30}"),
        ("GET", f"/api/admin/projects/{10**20}/dashboard"),
    ]:
        r = env.client.request(method, path, headers=env.admin)
        assert r.status_code == 422, (path, r.status_code, r.text)


def test_json_that_is_not_text_or_too_deep_is_422(env):
    for raw in (b'{"choice": "A"' + b"\xff" + b"}", b"[" * 100_000 + b"]" * 100_000, b'{"a": ' + b"1" * 5000 + b"}"):
        r = env.client.post("/api/tasks/1/label", content=raw, headers={**env.ann, "Content-Type": "application/json"})
        assert r.status_code == 422, r.text[:200]


@BOTH_BACKENDS
def test_a_nul_character_is_422_naming_the_field_on_every_back_end(env):
    """A NUL character (JSON ``"\u0000"``, a form's ``%00``) is no text PostgreSQL can store: in a
    JSON body, a form field or an imported file it answers 422 naming the field, never a 500 from
    the insert (or from the log-in's look-up of the user name), and nothing is stored."""
    c = env.client
    pid = make_project(c, env.admin, "thumbs", [{"prompt": "p", "completion": "c"}])
    nul = "a\x00b"
    for method, path, body, headers, loc in [
        ("POST", "/api/auth/login", {"username": nul, "password": "whatever1"}, {}, ["body", "username"]),
        ("POST", "/api/admin/users", {"username": nul, "password": "long-enough"}, env.admin, ["body", "username"]),
        ("POST", "/api/admin/projects", {"name": nul, "task_type": "thumbs"}, env.admin, ["body", "name"]),
        ("PATCH", f"/api/admin/projects/{pid}", {"instructions": nul}, env.admin, ["body", "instructions"]),
        ("PUT", f"/api/admin/projects/{pid}/members", {"usernames": ["ann", nul]}, env.admin, ["body", "usernames", 1]),
        (
            "POST",
            f"/api/admin/projects/{pid}/items",
            {"items": [{"prompt": nul, "completion": "c"}]},
            env.admin,
            ["body", "items", 0, "prompt"],
        ),
    ]:
        r = c.request(method, path, json=body, headers=headers)
        assert r.status_code == 422, (path, r.status_code, r.text)
        assert r.json()["detail"][0]["loc"] == loc and "NUL" in r.json()["detail"][0]["msg"], r.text
    # an escaped backslash before "u0000" is no NUL
    r = c.post(
        f"/api/admin/projects/{pid}/items",
        content=b'{"items": [{"prompt": "C:\\\\u0000", "completion": "c"}]}',
        headers={**env.admin, "Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text
    lines = b'{"prompt": "p", "completion": "c"}\n{"prompt": "p", "completion": "x\\u0000"}\n'
    r = c.post(f"/api/admin/projects/{pid}/import", headers=env.admin, files={"file": ("n.jsonl", lines)})
    assert r.status_code == 422 and (r.json()["detail"]["line"], r.json()["detail"]["field"]) == (2, "completion")
    # forms: the log-in page and an admin form
    r = c.get("/login")
    csrf = r.text.split('name="csrf_token" value="')[1].split('"')[0]
    r = c.post("/login", data={"username": nul, "password": "whatever1", "csrf_token": csrf})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "username"], r.text
    csrf = _browser_login(c, "admin", ADMIN_PW)
    r = c.post("/admin/users", data={"csrf_token": csrf, "username": nul, "password": "long-enough"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "username"], r.text
    assert _count(env.store, db.users) == 4 and _count(env.store, db.items) == 2
    assert _count(env.store, db.projects, db.projects.c.instructions != "") == 0


@BOTH_BACKENDS
def test_an_item_id_longer_than_its_column_is_422(env):
    """An item's own ``id`` (string or integer) is at most 200 characters, the column's width: a
    longer one is a 422 naming ``id`` (PostgreSQL would refuse the insert: a 500)."""
    pid = make_project(env.client, env.admin, "thumbs", [{"prompt": "p", "completion": "c", "id": "x" * 200}])
    for ext in ("x" * 201, 10**250):
        r = env.client.post(
            f"/api/admin/projects/{pid}/items",
            json={"items": [{"prompt": "p", "completion": "c", "id": ext}]},
            headers=env.admin,
        )
        assert r.status_code == 422, r.text
        assert "field 'id'" in r.json()["detail"]["error"] and "at most 200 characters" in r.json()["detail"]["error"]
    line = json.dumps({"prompt": "p", "completion": "c", "id": "y" * 300}).encode()
    r = env.client.post(f"/api/admin/projects/{pid}/import", headers=env.admin, files={"file": ("i.jsonl", line)})
    assert r.status_code == 422 and (r.json()["detail"]["line"], r.json()["detail"]["field"]) == (1, "id"), r.text
    assert _count(env.store, db.items) == 1


def test_a_csrf_token_sent_as_a_file_is_refused(env):
    """A form's ``csrf_token`` must be text: a file part of that name answers 403 (not a 500 from
    comparing a file with the token)."""
    _browser_login(env.client, "cat", LAB_PW)
    r = env.client.post("/logout", files={"csrf_token": ("t", b"x")}, follow_redirects=False)
    assert r.status_code == 403, r.text


def test_a_csrf_token_with_characters_past_ascii_is_a_wrong_token(env):
    """A token holding characters past ASCII (log-in form, form field, header, the flash
    cookie's signature) is a wrong token: 403 (the flash: ignored), never a 500."""
    c = env.client
    c.get("/login")  # the log-in form's cookie
    r = c.post("/login", data={"username": "admin", "password": ADMIN_PW, "csrf_token": "\u00e9t\u00e9"})
    assert r.status_code == 403, r.text
    _browser_login(c, "admin", ADMIN_PW)
    assert c.post("/logout", data={"csrf_token": "\u00e9t\u00e9"}, follow_redirects=False).status_code == 403
    r = c.post("/api/auth/logout", headers=[(b"X-CSRF-Token", "\u00e9t\u00e9".encode("latin-1"))])
    assert r.status_code == 403, r.text
    session = c.cookies["rlhf_session"].encode()
    r = c.get(
        "/admin", headers=[(b"Cookie", b"rlhf_session=" + session + b"; " + FLASH_COOKIE.encode() + b"=e30.\xe9")]
    )
    assert r.status_code == 200 and 'class="msg"' not in r.text
    assert c.get("/api/me").status_code == 200  # still signed in: nothing above was accepted


@BOTH_BACKENDS
def test_new_user_names_are_stored_trimmed_and_printable(env):
    """A new user's name loses its surrounding spaces -- so " cat" is cat, who exists: 409, not
    a 500 from the unique constraint -- and may not hold line breaks, tabs, terminal escapes or
    invisible controls (422)."""
    c = env.client
    r = c.post("/api/admin/users", json={"username": " cat ", "password": "long-enough"}, headers=env.admin)
    assert r.status_code == 409 and "'cat' exists" in r.json()["detail"], r.text
    r = c.post("/api/admin/users", json={"username": "  dora ", "password": "long-enough"}, headers=env.admin)
    assert r.status_code == 201 and r.json()["username"] == "dora"
    bearer(c, "dora", "long-enough")
    for name in ("x\ny", "x\ty", "\x1b[31mred", "\u202eevil", "zero\u200bwidth", "a\x7fb"):
        r = c.post("/api/admin/users", json={"username": name, "password": "long-enough"}, headers=env.admin)
        assert r.status_code == 422 and "username may not contain" in r.json()["detail"], (name, r.text)
    for name in ("émile", "日本語", "a b", "-dash", "a,b"):
        assert (
            c.post(
                "/api/admin/users", json={"username": name, "password": "long-enough"}, headers=env.admin
            ).status_code
            == 201
        ), name
    assert _count(env.store, db.users) == 4 + 1 + 5


def test_the_log_in_page_shows_no_text_from_the_link(env):
    """A link to the log-in page cannot put a message on it: ``?error=`` is not read, and the page
    a signed-out visitor came from travels quoted in ``next`` (a path holding ``&error=`` stays
    part of the path)."""
    r = env.client.get("/login?error=Your+account+is+locked.+Call+555-0100")
    assert r.status_code == 200 and "555-0100" not in r.text
    r = env.client.get("/label/%26error=Call%20555-0100", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/login?next=%2Flabel%2F%26error%3DCall%20555-0100"
    page = env.client.get(r.headers["location"]).text
    assert 'class="error"' not in page
    assert 'name="next" value="/label/&amp;error=Call 555-0100"' in page


def test_the_admin_pages_show_no_text_from_the_link(env):
    """A link cannot put a message on an admin page: ``?msg=`` and ``?error=`` are not read, and a
    flash cookie not signed with the session's CSRF token shows nothing. A form's outcome travels
    in an HttpOnly, SameSite=strict cookie the server sets on its redirect (the link itself holds
    no text) and is shown once."""
    c = env.client
    pid = make_project(c, env.admin, "thumbs", [{"prompt": "q", "completion": "a"}])
    csrf = _browser_login(c, "admin", ADMIN_PW)
    lure = "?error=Your+account+is+locked.+Call+555-0100&msg=Call+555-0100"
    for path in ("/admin", f"/admin/projects/{pid}"):
        r = c.get(path + lure)
        assert r.status_code == 200 and "555-0100" not in r.text
        assert 'class="error"' not in r.text and 'class="msg"' not in r.text
    # a planted cookie: signed with this session's token it would show (it reaches the page), with another it does not
    planted = {"domain": "testserver.local", "path": "/admin"}  # where the client keeps the server's cookie
    c.cookies.set(FLASH_COOKIE, sign("someone-elses-token", {"error": "Call 555-0100"}), **planted)
    r = c.get("/admin")
    assert "555-0100" not in r.text and FLASH_COOKIE in r.headers["set-cookie"]  # and it is cleared
    c.cookies.set(FLASH_COOKIE, sign(csrf, {"error": "Call 555-0100"}), **planted)
    assert "555-0100" in c.get("/admin").text
    # the server's own message
    r = c.post(
        "/admin/users",
        data={"csrf_token": csrf, "username": "dora", "password": "long-enough-pw"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/admin"
    cookie = r.headers["set-cookie"]
    assert (
        cookie.startswith(FLASH_COOKIE + "=")
        and "HttpOnly" in cookie
        and "SameSite=strict" in cookie
        and "Path=/admin" in cookie
        and "Max-Age=60" in cookie
    )
    assert _shown(c, r) == {"msg": "user dora created"}
    assert _shown(c, r) == {}  # shown once
    r = c.post(
        "/admin/users",
        data={"csrf_token": csrf, "username": "dora", "password": "long-enough-pw"},
        follow_redirects=False,
    )
    assert _shown(c, r) == {"error": "user 'dora' exists"}


# ----------------------------------------------------------------------------- 6. smaller items
def test_home_and_admin_pages_show_item_counts(env):
    make_project(env.client, env.admin, "pairwise", _items(3), name="three")
    _browser_login(env.client, "admin", ADMIN_PW)
    for page in (env.client.get("/").text, env.client.get("/admin").text):
        assert "built-in method" not in page
    assert "3 items" in env.client.get("/").text
    assert "<td>pairwise</td><td>3</td>" in env.client.get("/admin").text


def test_security_headers_on_every_response(env):
    pid = make_project(env.client, env.admin, "pairwise", _items(1))
    c = env.client
    responses = {
        "login page": c.get("/login"),
        "api 401": c.get("/api/me"),
        "api": c.get("/api/me", headers=env.ann),
        "static": c.get("/static/label.js"),
        "404": c.get("/nowhere"),
        "health": c.get("/healthz"),
        "413": c.post("/api/tasks/1/label", content=b"x" * 1_000_001, headers=env.ann),
        "422": c.post(f"/api/tasks/{10**30}/label", json={}, headers=env.ann),
    }
    _browser_login(c, "ann", LAB_PW)
    responses["label page"] = c.get(f"/label/{pid}")
    for what, r in responses.items():
        h = r.headers
        assert "script-src 'self';" in h.get("content-security-policy", ""), what
        assert "frame-ancestors 'none'" in h["content-security-policy"], what
        assert (h.get("x-frame-options"), h.get("x-content-type-options"), h.get("referrer-policy")) == (
            "DENY",
            "nosniff",
            "same-origin",
        ), what
    assert responses["413"].status_code == 413
    # signed-in pages and API answers are never stored by a cache; static files may be
    for what, r in responses.items():
        assert (r.headers.get("cache-control") == "no-store") == (what != "static"), what
    # the API docs page loads Swagger UI from its CDN: its own policy allows that, and only there
    docs = c.get("/docs")
    assert "https://cdn.jsdelivr.net" in docs.headers["content-security-policy"]
    assert docs.headers["x-frame-options"] == "DENY"


def test_claiming_a_task_needs_a_post(env):
    """GET /api/tasks/next changes nothing (a link on another site must not claim a task): 405."""
    make_project(env.client, env.admin, "pairwise", _items(1))
    r = env.client.get("/api/tasks/next", headers=env.ann)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert _count(env.store, db.assignments) == 0
    assert env.client.post("/api/tasks/next", headers=env.ann).status_code == 200
    assert _count(env.store, db.assignments) == 1


def test_a_deactivated_projects_label_page_is_404(env):
    pid = make_project(env.client, env.admin, "pairwise", _items(1))
    _browser_login(env.client, "ann", LAB_PW)
    assert env.client.get(f"/label/{pid}").status_code == 200
    assert env.client.patch(f"/api/admin/projects/{pid}", json={"active": False}, headers=env.admin).status_code == 200
    assert env.client.get(f"/label/{pid}").status_code == 404
    assert env.client.get("/label/999").status_code == 404


def _scrypt_hash(password: str) -> str:
    """A hash as the app wrote them before argon2 (scrypt N=2**14, r=8, p=1)."""
    salt = b"0123456789abcdef"
    key = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    return f"scrypt$16384$8$1${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


@BOTH_BACKENDS
def test_an_old_scrypt_hash_is_upgraded_at_log_in(env):
    env.store.write(
        lambda c: c.execute(
            insert(db.users).values(
                username="old",
                password_hash=_scrypt_hash("old-password"),
                role="labeler",
                active=True,
                created_at=time.time(),
            )
        )
    )

    def stored():
        with env.store.read() as c:
            return c.execute(select(db.users.c.password_hash).where(db.users.c.username == "old")).scalar()

    assert env.client.post("/api/auth/login", json={"username": "old", "password": "wrong-one"}).status_code == 401
    assert stored().startswith("scrypt$")  # a wrong password changes nothing
    bearer(env.client, "old", "old-password")
    assert stored().startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    bearer(env.client, "old", "old-password")  # and the new hash verifies
    assert env.client.post("/api/auth/login", json={"username": "old", "password": "wrong-one"}).status_code == 401


# ----------------------------------------------------------------------------- 2. lockout
def test_a_flood_from_elsewhere_does_not_lock_the_user_out(tmp_path):
    """Whoever knows a user name can exhaust its buckets from other addresses -- one address (5
    guesses) or many (30 in the hour) -- but the user still logs in from an address they used
    before. (A proxy in front names the addresses, so the test can choose them.)"""
    app = create_app(str(tmp_path / "f.db"), trusted_proxies=["testclient"])
    add_labelers(app.state.store, ["ann"])
    with TestClient(app) as c:

        def login(password, address):
            return c.post(
                "/api/auth/login", json={"username": "ann", "password": password}, headers={"X-Forwarded-For": address}
            ).status_code

        assert login(LAB_PW, "198.51.100.7") == 200  # ann, at home
        assert [login("guess", "203.0.113.5") for _ in range(6)] == [401] * 5 + [429]  # one attacker
        flood = [login("guess", f"203.0.114.{i}") for i in range(30)]  # many attackers
        assert flood == [401] * 25 + [429] * 5  # 30 per hour from addresses that are not ann's
        assert login(LAB_PW, "192.0.2.1") == 429  # ann from a new place waits too ...
        assert login(LAB_PW, "198.51.100.7") == 200  # ... but not at home
        assert [login("typo", "198.51.100.7") for _ in range(6)] == [401] * 5 + [429]  # home has its own 5


# ----------------------------------------------------------------------------- 4. management
@BOTH_BACKENDS
def test_admin_changes_roles_passwords_and_active(env):
    c = env.client
    ann = _user_id(env, "ann")
    assert c.get("/api/admin/users", headers=env.ann).status_code == 403
    assert c.patch(f"/api/admin/users/{ann}", json={"role": "admin"}, headers=env.ann).status_code == 403
    # a role change holds from the next request on
    r = c.patch(f"/api/admin/users/{ann}", json={"role": "admin"}, headers=env.admin)
    assert r.status_code == 200 and r.json()["role"] == "admin"
    assert c.get("/api/admin/users", headers=env.ann).status_code == 200
    c.patch(f"/api/admin/users/{ann}", json={"role": "labeler"}, headers=env.admin)
    assert c.get("/api/admin/users", headers=env.ann).status_code == 403
    # a reset password ends the user's sessions; the new one works, the old one not
    assert c.patch(f"/api/admin/users/{ann}", json={"password": "short"}, headers=env.admin).status_code == 422
    assert c.patch(f"/api/admin/users/{ann}", json={"password": "a-new-password"}, headers=env.admin).status_code == 200
    assert c.get("/api/me", headers=env.ann).status_code == 401
    assert c.post("/api/auth/login", json={"username": "ann", "password": LAB_PW}).status_code == 401
    ann_h = bearer(c, "ann", "a-new-password")
    # deactivate, reactivate
    assert c.patch(f"/api/admin/users/{ann}", json={"active": False}, headers=env.admin).json()["active"] is False
    assert c.get("/api/me", headers=ann_h).status_code == 401
    assert c.post("/api/auth/login", json={"username": "ann", "password": "a-new-password"}).status_code == 401
    c.patch(f"/api/admin/users/{ann}", json={"active": True}, headers=env.admin)
    bearer(c, "ann", "a-new-password")
    # the last active admin can be neither deactivated nor demoted; an unknown user is 404
    admin = _user_id(env, "admin")
    assert c.patch(f"/api/admin/users/{admin}", json={"active": False}, headers=env.admin).status_code == 409
    assert c.patch(f"/api/admin/users/{admin}", json={"role": "labeler"}, headers=env.admin).status_code == 409
    assert c.patch("/api/admin/users/999", json={"active": False}, headers=env.admin).status_code == 404
    assert c.patch(f"/api/admin/users/{ann}", json={"colour": "red"}, headers=env.admin).status_code == 422


def test_users_change_their_own_password(env):
    c = env.client
    other = bearer(c, "bob", LAB_PW)  # bob's second session
    r = c.post(
        "/api/me/password", json={"current_password": "wrong-guess", "new_password": "bobs-new-pw"}, headers=env.bob
    )
    assert r.status_code == 403
    r = c.post("/api/me/password", json={"current_password": LAB_PW, "new_password": "bobs-new-pw"}, headers=env.bob)
    assert r.status_code == 200
    assert c.get("/api/me", headers=env.bob).status_code == 200  # this session stays
    assert c.get("/api/me", headers=other).status_code == 401  # the others end
    bearer(c, "bob", "bobs-new-pw")
    # guessing the current password through this endpoint is throttled like a log-in
    codes = [
        c.post(
            "/api/me/password", json={"current_password": f"g{i}", "new_password": "whatever-pw"}, headers=env.bob
        ).status_code
        for i in range(6)
    ]
    assert codes == [403] * 5 + [429]


@BOTH_BACKENDS
def test_a_project_restricted_to_some_labelers(env):
    c = env.client
    pid = make_project(c, env.admin, "thumbs", [{"prompt": f"q{i}", "completion": "a"} for i in range(4)], overlap=3)
    other = make_project(c, env.admin, "thumbs", [{"prompt": "o", "completion": "a"}], name="other")
    bob_task = c.post("/api/tasks/next", params={"project_id": pid}, headers=env.bob).json()
    assert (
        c.put(
            f"/api/admin/projects/{pid}/members", json={"usernames": ["ann", "nobody"]}, headers=env.admin
        ).status_code
        == 422
    )
    r = c.put(f"/api/admin/projects/{pid}/members", json={"usernames": ["ann", "cat"]}, headers=env.admin)
    assert r.status_code == 200 and [m["username"] for m in r.json()] == ["ann", "cat"]
    assert [m["username"] for m in c.get(f"/api/admin/projects/{pid}/members", headers=env.admin).json()] == [
        "ann",
        "cat",
    ]
    assert [p["id"] for p in c.get("/api/projects", headers=env.bob).json()] == [other]
    assert {p["id"] for p in c.get("/api/projects", headers=env.ann).json()} == {pid, other}
    assert c.post("/api/tasks/next", params={"project_id": pid}, headers=env.bob).status_code == 204
    assert c.post("/api/tasks/next", headers=env.bob).json()["project_id"] == other
    # bob's open task went back to the queue: his late verdict is refused, the slot is free again
    r = c.post(f"/api/tasks/{bob_task['task_id']}/label", json={"label": True}, headers=env.bob)
    assert r.status_code == 409 and "released" in r.text
    with env.store.read() as conn:
        assert conn.execute(select(func.max(db.items.c.n_assigned)).where(db.items.c.project_id == pid)).scalar() == 0
    assert c.post("/api/tasks/next", params={"project_id": pid}, headers=env.ann).json()["project_id"] == pid
    # an empty list opens the project to everyone again
    assert c.put(f"/api/admin/projects/{pid}/members", json={"usernames": []}, headers=env.admin).json() == []
    assert c.post("/api/tasks/next", params={"project_id": pid}, headers=env.bob).status_code == 200


def test_a_restricted_projects_label_page_is_404_for_others(env):
    pid = make_project(env.client, env.admin, "thumbs", [{"prompt": "q", "completion": "a"}])
    env.client.put(f"/api/admin/projects/{pid}/members", json={"usernames": ["ann"]}, headers=env.admin)
    _browser_login(env.client, "bob", LAB_PW)
    assert env.client.get(f"/label/{pid}").status_code == 404
    assert "q" not in env.client.get("/").text.split("<h1>Projects</h1>")[1].split("Change your password")[0]
    env.client.cookies.clear()
    _browser_login(env.client, "ann", LAB_PW)
    assert env.client.get(f"/label/{pid}").status_code == 200


def test_admin_page_forms_manage_users_and_projects(env):
    c = env.client
    pid = make_project(c, env.admin, "thumbs", [{"prompt": "q", "completion": "a"}])
    csrf = _browser_login(c, "admin", ADMIN_PW)
    ann = _user_id(env, "ann")
    page = c.get("/admin").text
    assert f'action="/admin/users/{ann}"' in page
    r = c.post(
        f"/admin/users/{ann}",
        data={"csrf_token": csrf, "role": "labeler", "active": "inactive"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and "saved" in _shown(c, r)["msg"]
    assert c.get("/api/me", headers=env.ann).status_code == 401
    assert c.post(f"/admin/users/{ann}", data={"role": "labeler", "active": "active"}).status_code == 403  # no CSRF
    r = c.post(
        f"/admin/users/{ann}",
        data={"csrf_token": csrf, "role": "admin", "active": "active", "password": "reset-by-admin"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and "password" in _shown(c, r)["msg"]
    assert (
        c.post("/api/auth/login", json={"username": "ann", "password": "reset-by-admin"}).json()["user"]["role"]
        == "admin"
    )
    # members and the project's status
    assert 'name="member" value="bob"' in c.get(f"/admin/projects/{pid}").text
    r = c.post(
        f"/admin/projects/{pid}/members", data={"csrf_token": csrf, "member": ["bob", "cat"]}, follow_redirects=False
    )
    assert r.status_code == 303 and "bob" in _shown(c, r)["msg"]
    assert [m["username"] for m in c.get(f"/api/admin/projects/{pid}/members", headers=env.admin).json()] == [
        "bob",
        "cat",
    ]
    assert (
        c.post(
            f"/admin/projects/{pid}/active", data={"csrf_token": csrf, "active": "false"}, follow_redirects=False
        ).status_code
        == 303
    )
    assert "inactive" in c.get(f"/admin/projects/{pid}").text
    assert c.get(f"/label/{pid}").status_code == 404


def test_the_home_page_changes_ones_password(env):
    c = env.client
    csrf = _browser_login(c, "cat", LAB_PW)
    r = c.post(
        "/account/password", data={"csrf_token": csrf, "current_password": "nope-nope", "new_password": "cats-new-pw"}
    )
    assert r.status_code == 403 and "wrong" in r.text
    r = c.post(
        "/account/password", data={"csrf_token": csrf, "current_password": LAB_PW, "new_password": "cats-new-pw"}
    )
    assert r.status_code == 200 and "password changed" in r.text
    assert c.get("/api/me", headers=env.cat).status_code == 401  # cat's API session ended
    bearer(c, "cat", "cats-new-pw")


# ----------------------------------------------------------------------------- 4. the CLI
def test_cli_manages_users_and_members(tmp_path, capsys, monkeypatch):
    from rlhfkit.cli import main

    path = str(tmp_path / "f.db")
    monkeypatch.setenv("RLHFKIT_PASSWORD", "first-password")
    assert main(["feedback", "create-user", "--db", path, "--username", "root", "--role", "admin"]) == 0
    assert main(["feedback", "create-user", "--db", path, "--username", "lena"]) == 0
    assert "warning" not in capsys.readouterr().err
    items = tmp_path / "i.jsonl"
    items.write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n")
    assert (
        main(["feedback", "import", "--db", path, "--project", "t", "--file", str(items), "--task_type", "thumbs"]) == 0
    )
    capsys.readouterr()

    def run(*args):
        code = main(["feedback", *args, "--db", path])
        out = capsys.readouterr()
        return code, out.out + out.err

    assert run("set-user", "--username", "lena", "--active", "false") == (
        0,
        "'lena': labeler, inactive; sessions ended, open tasks handed back\n",
    )
    assert run("set-user", "--username", "lena", "--active", "true", "--role", "admin")[1] == "'lena': admin, active\n"
    monkeypatch.setenv("RLHFKIT_PASSWORD", "second-password")
    assert (
        run("set-user", "--username", "lena", "--new_password", "true")[1]
        == "'lena': admin, active; password set, sessions ended\n"
    )
    code, out = run("set-user", "--username", "root", "--active", "false")
    assert code == 0  # lena is an admin too now
    code, out = run("set-user", "--username", "lena", "--role", "labeler")
    assert code == 2 and "last active admin" in out
    code, out = run("set-user", "--username", "nobody", "--active", "false")
    assert code == 2 and "field 'username': no user 'nobody'" in out
    code, out = run("set-user", "--username", "lena")
    assert code == 2 and "nothing to change" in out
    code, out = run("set-user", "--username", "lena", "--role", "boss")
    assert code == 2 and "field 'role'" in out
    assert run("members", "--project", "t", "--add", "lena,root")[1] == "project 't': labelers lena, root\n"
    assert run("members", "--project", "t", "--remove", "root")[1] == "project 't': labelers lena\n"
    code, out = run("users")
    assert code == 0 and "lena\tadmin\tactive\tmember of: t" in out and "root\tadmin\tinactive\tmember of: -" in out
    assert run("members", "--project", "t", "--clear", "true")[1] == "project 't': open to every labeler\n"
    code, out = run("members", "--project", "t", "--add", "ghost")
    assert code == 2 and "field 'add': no user 'ghost'" in out
    code, out = run("members", "--project", "nope", "--add", "lena")
    assert code == 2 and "no project named 'nope'" in out
    code, out = run("create-user", "--username", "bad\x1bname")
    assert code == 2 and "field 'username'" in out and "may not contain" in out
    store = db.Store(path)
    try:
        from rlhfkit.feedback.auth import verify_password

        with store.read() as c:
            h = c.execute(select(db.users.c.password_hash).where(db.users.c.username == "lena")).scalar()
        assert verify_password("second-password", h)
    finally:
        store.close()


def test_cli_users_never_prints_a_name_raw_that_holds_control_characters(tmp_path, capsys):
    """Names stored before the printable-name rule (or project names) that hold a tab, a line
    break or a terminal escape are listed escaped: one line per user, five columns, no escape
    sequence reaches the terminal. `set-user` finds a name given with surrounding spaces."""
    from rlhfkit.cli import main

    path = str(tmp_path / "f.db")
    store = db.Store(path)
    try:
        add_labelers(store, ["x\ty", "a\nb", "\x1b[2Jwipe", "plain"])
    finally:
        store.close()
    assert main(["feedback", "users", "--db", path]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == 4 and all(len(line.split("\t")) == 5 for line in lines), out
    assert "\x1b" not in out
    assert lines[0].split("\t")[1] == "'x\\ty'" and lines[2].split("\t")[1] == "'\\x1b[2Jwipe'"
    assert lines[3].split("\t")[1] == "plain"
    assert main(["feedback", "set-user", "--db", path, "--username", "  plain ", "--active", "false"]) == 0
    assert capsys.readouterr().out == "'plain': labeler, inactive; sessions ended, open tasks handed back\n"
