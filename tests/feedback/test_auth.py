"""Authorisation: who may do what; forged / expired sessions; CSRF; log-in rate limiting."""

import time

import pytest
from sqlalchemy import func, select, update

from rlhfkit.feedback import db
from rlhfkit.feedback.app import COOKIE
from rlhfkit.feedback.auth import LoginLimits, LoginThrottle, Throttled, hash_password, verify_password

from .conftest import ADMIN_PW, BOTH_BACKENDS, LAB_PW, make_project


def _items(n=3):
    return [{"prompt": f"p{i}", "responses": ["a", "b"]} for i in range(n)]


def test_password_hashing():
    h1, h2 = hash_password("correct horse"), hash_password("correct horse")
    # argon2id at OWASP's parameters (m=19 MiB, t=2, p=1), a salt per hash
    assert h1 != h2 and h1.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert verify_password("correct horse", h1) and not verify_password("wrong", h1)
    assert not verify_password("x", "garbage") and not verify_password("\ud800", h1)


def test_not_signed_in_is_401(env):
    client = env.client
    client.cookies.clear()
    r = client.post("/api/tasks/next")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert client.post("/api/tasks/1/label", json={"choice": "A"}).status_code == 401
    assert client.get("/api/admin/projects").status_code == 401
    r = client.get("/admin", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")


@BOTH_BACKENDS
def test_labeler_cannot_reach_admin(env):
    pid = make_project(env.client, env.admin, "pairwise", _items())
    for method, path in [
        ("GET", "/api/admin/projects"),
        ("POST", "/api/admin/projects"),
        ("GET", f"/api/admin/projects/{pid}/dashboard"),
        ("GET", f"/api/admin/projects/{pid}/export?kind=pairs"),
        ("GET", f"/api/admin/projects/{pid}/labels"),
        ("GET", "/api/admin/users"),
        ("POST", "/api/admin/users"),
        ("POST", f"/api/admin/projects/{pid}/items"),
        ("PATCH", f"/api/admin/projects/{pid}"),
        ("GET", "/admin"),
        ("GET", f"/admin/projects/{pid}"),
    ]:
        r = env.client.request(method, path, headers=env.ann, json={})
        assert r.status_code == 403, (method, path, r.status_code)
    with env.store.read() as c:
        assert c.execute(select(func.count()).select_from(db.users)).scalar() == 4


@BOTH_BACKENDS
def test_labeler_cannot_touch_another_labelers_task(env):
    make_project(env.client, env.admin, "pairwise", _items())
    t = env.client.post("/api/tasks/next", headers=env.ann).json()
    tid = t["task_id"]
    assert env.client.get(f"/api/tasks/{tid}", headers=env.bob).status_code == 404
    assert env.client.post(f"/api/tasks/{tid}/label", json={"choice": "A"}, headers=env.bob).status_code == 404
    assert env.client.post(f"/api/tasks/{tid}/skip", headers=env.bob).status_code == 404
    assert env.client.get(f"/api/tasks/{tid}", headers=env.ann).status_code == 200
    with env.store.read() as c:
        assert c.execute(select(func.count()).select_from(db.labels)).scalar() == 0
        assert c.execute(select(db.assignments.c.status)).scalar() == "open"


@BOTH_BACKENDS
def test_forged_and_expired_sessions_refused(env):
    c = env.client
    make_project(c, env.admin, "pairwise", _items())
    assert c.post("/api/tasks/next", headers={"Authorization": "Bearer forged-token"}).status_code == 401
    c.cookies.set(COOKIE, "forged-cookie")
    assert c.post("/api/tasks/next").status_code == 401
    c.cookies.clear()
    assert c.get("/api/me", headers=env.ann).status_code == 200
    env.store.write(lambda conn: conn.execute(update(db.sessions).values(expires_at=time.time() - 1)))
    assert c.get("/api/me", headers=env.ann).status_code == 401
    assert c.post("/api/tasks/next", headers=env.admin).status_code == 401


def test_logout_ends_the_session(env):
    assert env.client.post("/api/auth/logout", headers=env.bob).status_code == 200
    assert env.client.get("/api/me", headers=env.bob).status_code == 401


def _browser_login(client, username, password):
    r = client.get("/login")
    csrf = r.text.split('name="csrf_token" value="')[1].split('"')[0]
    return client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": csrf, "next": "/"},
        follow_redirects=False,
    )


@BOTH_BACKENDS
def test_cookie_session_needs_csrf_on_writes(env):
    c = env.client
    make_project(c, env.admin, "pairwise", _items())
    r = _browser_login(c, "ann", LAB_PW)
    assert r.status_code == 303 and COOKIE in r.cookies
    page = c.get("/label/1").text
    csrf = page.split('name="csrf-token" content="')[1].split('"')[0]
    assert c.post("/api/tasks/next").status_code == 403  # claiming a task is a write: CSRF token needed
    t = c.post("/api/tasks/next", headers={"X-CSRF-Token": csrf}).json()
    url = f"/api/tasks/{t['task_id']}/label"
    assert c.post(url, json={"choice": "A"}).status_code == 403  # no CSRF token
    assert c.post(url, json={"choice": "A"}, headers={"X-CSRF-Token": "wrong"}).status_code == 403
    assert c.post(f"/api/tasks/{t['task_id']}/skip").status_code == 403
    assert c.post("/logout", data={}).status_code == 403  # form without csrf_token
    assert c.post(url, json={"choice": "A"}, headers={"X-CSRF-Token": csrf}).status_code == 200
    # log-in form without its CSRF token is refused too
    c.cookies.clear()
    r = c.post("/login", data={"username": "ann", "password": LAB_PW, "next": "/"}, follow_redirects=False)
    assert r.status_code == 403


def test_login_rate_limited(env):
    c = env.client
    for _ in range(5):
        assert c.post("/api/auth/login", json={"username": "cat", "password": "nope"}).status_code == 401
    r = c.post("/api/auth/login", json={"username": "cat", "password": LAB_PW})
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    assert c.post("/api/auth/login", json={"username": "admin", "password": ADMIN_PW}).status_code == 200


@BOTH_BACKENDS
def test_throttle_windows(db_url):
    """Each bucket allows its number of attempts per window and counts nothing it refuses; a
    success hands its slot back and makes the address known, which then only the user-and-address
    bucket limits."""
    now = [1000.0]
    store = db.Store(db_url)
    th = LoginThrottle(
        LoginLimits(
            per_user_address=2,
            user_address_window_s=10,
            per_address=3,
            address_window_s=10,
            per_user=4,
            user_window_s=100,
        ),
        clock=lambda: now[0],
    )

    def reserve(u, a):
        try:
            store.write(lambda c: th.reserve(c, u, a))
            return 0.0
        except Throttled as e:
            return e.retry_after

    try:
        assert reserve("u", "ip") == 0 and reserve("u", "ip") == 0
        assert reserve("u", "ip") == 10  # per user and address: 2 per 10 s
        assert reserve("v", "ip") == 0
        assert reserve("w", "ip") == 10  # per address: 3 per 10 s (the refused "u" was not counted)
        now[0] += 10.5  # the short windows are over; "u" has 2 of 4 in its hour
        known = store.write(lambda c: th.reserve(c, "u", "ip2"))  # 3 of 4 ...
        assert known is False
        store.write(lambda c: th.succeeded(c, "u", "ip2", known))  # ... handed back: 2 of 4; ip2 is u's own
        assert reserve("u", "ip3") == 0 and reserve("u", "ip4") == 0
        assert reserve("u", "ip5") == pytest.approx(89.5)  # per user: 4 per 100 s from addresses not u's own
        assert reserve("u", "ip2") == 0 and reserve("u", "ip2") == 0  # u's own address: only 2 per 10 s
        assert reserve("u", "ip2") == 10
        now[0] += 200  # every window over: expired rows are pruned
        assert reserve("x", "ip9") == 0
        with store.read() as c:
            keys = c.execute(select(db.login_throttle.c.key)).scalars().all()
        assert len(keys) == 4 and all(len(k) == 64 for k in keys)  # x's three buckets + u's known address
    finally:
        store.close()


def test_open_redirect_blocked(env):
    r = env.client.get("/login?next=//evil.example")
    assert 'name="next" value="/"' in r.text
