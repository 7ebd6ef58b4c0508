"""Abandoned tasks: an open task older than the lease is reassigned to another labeler who asks
for work -- never to one who already labeled, skipped or holds that item -- with a controllable
clock. On SQLite and PostgreSQL."""

import pytest
from sqlalchemy import func, select

from rlhfkit.feedback import db
from rlhfkit.feedback.queue import next_task, submit_label

from .conftest import BOTH_BACKENDS, add_labelers, make_project

LEASE = 30 * 60


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def app_kwargs(clock):
    return {"clock": clock, "lease_s": LEASE}


def _next(env, who):
    r = env.client.post("/api/tasks/next", headers=getattr(env, who))
    assert r.status_code in (200, 204), r.text
    return None if r.status_code == 204 else r.json()


@BOTH_BACKENDS
def test_abandoned_task_goes_to_another_labeler_after_the_lease(env, clock):
    c = env.client
    make_project(c, env.admin, "thumbs", [{"prompt": "p", "completion": "c"}], overlap=1)
    t_cat = _next(env, "cat")
    assert c.post(f"/api/tasks/{t_cat['task_id']}/skip", headers=env.cat).status_code == 200
    t_ann = _next(env, "ann")  # ann takes it ... and walks away
    assert t_ann["prompt"] == "p"
    clock.t += LEASE - 60
    assert _next(env, "bob") is None  # still within ann's lease
    clock.t += 120
    assert _next(env, "ann")["task_id"] == t_ann["task_id"]  # expiry is lazy: still hers if she is back
    assert _next(env, "cat") is None  # cat skipped the item: never back to cat
    t_bob = _next(env, "bob")  # past the lease: bob gets the item, as a new task
    assert t_bob["prompt"] == "p" and t_bob["task_id"] != t_ann["task_id"]
    assert _next(env, "bob")["task_id"] == t_bob["task_id"]  # and it is his open task now
    assert _next(env, "ann") is None  # ann never gets the same item again
    r = c.post(f"/api/tasks/{t_ann['task_id']}/label", json={"label": True}, headers=env.ann)
    assert r.status_code == 409 and "expired" in r.json()["detail"]
    r = c.post(f"/api/tasks/{t_bob['task_id']}/label", json={"label": False}, headers=env.bob)
    assert r.status_code == 200 and r.json()["duplicate"] is False
    with env.store.read() as conn:
        A = db.assignments
        st = dict(conn.execute(select(A.c.status, func.count()).group_by(A.c.status)).all())
        assert st == {"skipped": 1, "expired": 1, "done": 1}
        assert conn.execute(select(db.items.c.n_assigned)).scalar() == 1  # the slot moved, not doubled
        assert conn.execute(select(db.projects.c.n_labels)).scalar() == 1
        assert conn.execute(select(db.labels.c.payload)).scalar() == {"label": False}
    # the export has the one label
    assert len(c.get("/api/admin/projects/1/export?kind=thumbs", headers=env.admin).text.splitlines()) == 1


@BOTH_BACKENDS
def test_reclaim_never_to_someone_who_labeled_the_item(env, clock):
    """overlap 2: ann labels, bob abandons; after the lease ann gets nothing, cat gets bob's slot."""
    make_project(env.client, env.admin, "thumbs", [{"prompt": "p", "completion": "c"}], overlap=2)
    t = _next(env, "ann")
    assert env.client.post(f"/api/tasks/{t['task_id']}/label", json={"label": True}, headers=env.ann).status_code == 200
    t_bob = _next(env, "bob")
    clock.t += LEASE + 1
    assert _next(env, "ann") is None
    t_cat = _next(env, "cat")
    assert t_cat is not None and t_cat["task_id"] != t_bob["task_id"]
    r = env.client.post(f"/api/tasks/{t_cat['task_id']}/label?next=true", json={"label": False}, headers=env.cat)
    assert r.status_code == 200 and r.json()["next"] is None
    with env.store.read() as conn:
        assert conn.execute(select(db.projects.c.n_labels)).scalar() == 2
        assert conn.execute(select(db.items.c.n_assigned)).scalar() == 2


def test_lease_in_the_queue_api_and_disabled(env):
    """The queue functions take the clock and the lease directly; lease None never reclaims."""
    uid_ann, uid_bob = add_labelers(env.store, ["dan", "eve"])
    make_project(env.client, env.admin, "rating", [{"prompt": "p", "completion": "c"}], overlap=1)
    t0 = 5_000.0
    a = env.store.write(lambda c: next_task(c, uid_ann, now=t0, lease_s=LEASE))
    assert env.store.write(lambda c: next_task(c, uid_bob, now=t0 + 10 * LEASE, lease_s=None)) is None
    assert env.store.write(lambda c: next_task(c, uid_bob, now=t0 + LEASE - 1, lease_s=LEASE)) is None
    b = env.store.write(lambda c: next_task(c, uid_bob, now=t0 + LEASE + 1, lease_s=LEASE))
    assert b["prompt"] == "p" and b["task_id"] != a["task_id"]
    res = env.store.write(lambda c: submit_label(c, uid_bob, b["task_id"], {"rating": 5}, now=t0 + LEASE + 61))
    with env.store.read() as conn:
        dur = conn.execute(select(db.labels.c.duration_ms).where(db.labels.c.id == res["label_id"])).scalar()
    assert dur == 60_000  # measured on the same clock
