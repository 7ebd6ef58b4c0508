"""Fixtures for the feedback app: an app on a fresh database with an admin and three labelers,
API clients, and a real uvicorn server (in a thread) for browser tests.

The database is a SQLite file unless a test parametrises ``backend`` (``@BOTH_BACKENDS``): then it
also runs on a fresh database in a throwaway PostgreSQL cluster (``pg_cluster``, one per session,
started from Debian's postgresql package by ``rlhfkit.feedback.pgtemp``; skipped with the reason
when the server binaries or the psycopg driver are missing)."""

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
            r = c.execute(
                insert(db.users).values(
                    username=n, password_hash=lab_hash(), role="labeler", active=True, created_at=time.time()
                )
            )
            ids.append(int(r.inserted_primary_key[0]))
        return ids

    return store.write(job)


def bearer(client: TestClient, username: str, password: str) -> dict:
    r = client.post("/api/auth/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def make_project(client: TestClient, admin: dict, task_type: str, items: list[dict], **kw) -> int:
    r = client.post(
        "/api/admin/projects",
        json={"name": kw.pop("name", f"{task_type}-project"), "task_type": task_type, **kw},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    r = client.post(f"/api/admin/projects/{pid}/items", json={"items": items}, headers=admin)
    assert r.status_code == 200, r.text
    return pid


@pytest.fixture(scope="session")
def pg_cluster():
    """A throwaway PostgreSQL server for the whole session (skips when it cannot be started here)."""
    from rlhfkit.feedback.pgtemp import TempPostgres, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(f"PostgreSQL variant: {reason}")
    with TempPostgres() as pg:
        yield pg


# run a test on both back ends: @BOTH_BACKENDS (the ``env`` / ``db_url`` fixtures follow ``backend``)
BOTH_BACKENDS = pytest.mark.parametrize("backend", ["sqlite", "postgresql"])


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.fixture
def db_url(backend, tmp_path, request):
    """A fresh empty database of ``backend``: a SQLite file path or a PostgreSQL URL."""
    if backend == "sqlite":
        yield str(tmp_path / "feedback.db")
        return
    import uuid

    pg = request.getfixturevalue("pg_cluster")
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = pg.create_database(name)
    yield url
    try:
        pg.drop_database(name)
    except Exception:  # noqa: BLE001 - a straggling connection: the cluster goes away at session end
        pass


@pytest.fixture
def app_kwargs() -> dict:
    """Extra ``create_app`` arguments for ``env`` (override in a test module, e.g. a fake clock)."""
    return {}


@pytest.fixture
def env(tmp_path, db_url, app_kwargs):
    """app, store, client, and bearer headers for ``admin`` and labelers ``ann``, ``bob``, ``cat``."""
    app = create_app(db_url, **app_kwargs)
    store = app.state.store
    store.write(lambda c: create_user(c, "admin", ADMIN_PW, "admin"))
    add_labelers(store, ["ann", "bob", "cat"])
    with TestClient(app) as client:
        ns = SimpleNamespace(app=app, store=store, client=client, tmp=tmp_path, admin=bearer(client, "admin", ADMIN_PW))
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
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
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
