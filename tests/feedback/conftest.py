"""Fixtures for the feedback app: an app on a fresh SQLite file with an admin and three
labelers, API clients, and a real uvicorn server (in a thread) for browser tests."""
from __future__ import annotations

import socket
import threading
import time
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")

from fastapi.testclient import TestClient  # noqa: E402

from rlhfkit.feedback import db  # noqa: E402
from rlhfkit.feedback.app import create_app  # noqa: E402
from rlhfkit.feedback.auth import create_user, hash_password  # noqa: E402

ADMIN_PW = "admin-password"
LAB_PW = "labeler-password"

# one scrypt hash shared by the test labelers (hashing is deliberately slow)
_LAB_HASH: list[str] = []


def lab_hash() -> str:
    if not _LAB_HASH:
        _LAB_HASH.append(hash_password(LAB_PW))
    return _LAB_HASH[0]


def add_labelers(store: db.Store, names: list[str]) -> list[int]:
    from sqlalchemy import insert

    def job(c):
        ids = []
        for n in names:
            r = c.execute(insert(db.users).values(username=n, password_hash=lab_hash(), role="labeler",
                                                  active=True, created_at=time.time()))
            ids.append(int(r.inserted_primary_key[0]))
        return ids
    return store.write(job)


def bearer(client: TestClient, username: str, password: str) -> dict:
    r = client.post("/api/auth/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def make_project(client: TestClient, admin: dict, task_type: str, items: list[dict], **kw) -> int:
    r = client.post("/api/admin/projects", json={"name": kw.pop("name", f"{task_type}-project"),
                                                 "task_type": task_type, **kw}, headers=admin)
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    r = client.post(f"/api/admin/projects/{pid}/items", json={"items": items}, headers=admin)
    assert r.status_code == 200, r.text
    return pid


@pytest.fixture
def env(tmp_path):
    """app, store, client, and bearer headers for ``admin`` and labelers ``ann``, ``bob``, ``cat``."""
    app = create_app(str(tmp_path / "feedback.db"))
    store = app.state.store
    store.write(lambda c: create_user(c, "admin", ADMIN_PW, "admin"))
    add_labelers(store, ["ann", "bob", "cat"])
    with TestClient(app) as client:
        ns = SimpleNamespace(app=app, store=store, client=client, tmp=tmp_path,
                             admin=bearer(client, "admin", ADMIN_PW))
        for n in ("ann", "bob", "cat"):
            setattr(ns, n, bearer(client, n, LAB_PW))
        yield ns


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live_server(tmp_path):
    """A real uvicorn server in a thread: (base_url, app)."""
    import uvicorn

    app = create_app(str(tmp_path / "live.db"))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}", app
    server.should_exit = True
    t.join(timeout=10)
    app.state.store.close()
