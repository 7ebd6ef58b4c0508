"""JSON API: queues with overlap and gold, every task type end to end, exports that
rlhfkit.data.read_records reads back, imports that fail cleanly, migrations, CLI."""

import json
from collections import Counter

import pytest
from sqlalchemy import func, select

from rlhfkit.data import read_records
from rlhfkit.feedback import db
from rlhfkit.feedback.export import export_hf, export_records

from .conftest import BOTH_BACKENDS, make_project


def pair_items(n, gold=0):
    items = [
        {"prompt": f"question {i}", "responses": [f"first {i}", f"second {i}"], "models": ["m1", "m2"]}
        for i in range(n)
    ]
    items += [{"prompt": f"gold {i}", "responses": [f"good {i}", f"bad {i}"], "gold": "first"} for i in range(gold)]
    return items


def label_all(client, headers, verdict_fn, project_id=None):
    """Label until nothing is left; returns the tasks seen."""
    seen = []
    while True:
        r = client.post("/api/tasks/next", params={"project_id": project_id} if project_id else None, headers=headers)
        if r.status_code == 204:
            return seen
        assert r.status_code == 200, r.text
        t = r.json()
        seen.append(t)
        r = client.post(f"/api/tasks/{t['task_id']}/label", json=verdict_fn(t), headers=headers)
        assert r.status_code == 200, r.text


def test_openapi_lists_the_api(env):
    spec = env.client.get("/openapi.json").json()
    for path in (
        "/api/tasks/next",
        "/api/tasks/{task_id}/label",
        "/api/tasks/{task_id}/skip",
        "/api/auth/login",
        "/api/admin/projects/{project_id}/export",
        "/api/admin/projects/{project_id}/dashboard",
        "/api/admin/projects/{project_id}/import",
    ):
        assert path in spec["paths"], path


@BOTH_BACKENDS
def test_overlap_never_twice_and_hidden_models(env):
    pid = make_project(env.client, env.admin, "pairwise", pair_items(6), overlap=2)
    per_user = {}
    for name in ("ann", "bob", "cat"):
        tasks = label_all(env.client, getattr(env, name), lambda t: {"choice": "A"}, pid)
        per_user[name] = [t["prompt"] for t in tasks]
        assert len(set(per_user[name])) == len(per_user[name])  # never the same item twice
        for t in tasks:
            assert "model" not in json.dumps(t["responses"]) and "m1" not in json.dumps(t)
    counts = Counter(p for ps in per_user.values() for p in ps)
    assert set(counts.values()) == {2} and len(counts) == 6  # each item judged by exactly k=2
    with env.store.read() as c:
        assert c.execute(select(func.count()).select_from(db.labels)).scalar() == 12
        assert c.execute(select(db.projects.c.n_labels)).scalar() == 12


def test_pairwise_order_randomised_and_mapped_back(env):
    pid = make_project(env.client, env.admin, "pairwise", pair_items(40), overlap=1)
    firsts = []
    tasks = label_all(env.client, env.ann, lambda t: {"choice": "A", "strength": 3}, pid)
    for t in tasks:
        firsts.append(t["responses"][0]["text"].startswith("first"))
    assert 5 < sum(firsts) < 35  # both screen orders happen
    with env.store.read() as c:
        rows = c.execute(
            select(db.labels.c.item_id, db.labels.c.payload, db.items.c.prompt).select_from(
                db.labels.join(db.items, db.items.c.id == db.labels.c.item_id)
            )
        ).all()
    shown_first = {t["prompt"]: t["responses"][0]["text"] for t in tasks}
    for _, payload, prompt in rows:  # "A" was whatever was shown on the left
        expected = "first" if shown_first[prompt].startswith("first") else "second"
        assert payload == {"verdict": expected, "strength": 3}
    recs = export_records(env.store.read(), pid, "pairs")
    assert all(r.chosen == shown_first[r.prompt] and r.margin == 3.0 for r in recs)


@BOTH_BACKENDS
def test_gold_mixed_in_and_scored(env):
    pid = make_project(env.client, env.admin, "pairwise", pair_items(20, gold=5), overlap=3, gold_rate=0.3)

    # ann answers gold correctly, bob always says "second"
    def truthful(t):
        for r in t["responses"]:
            if r["text"].startswith("good"):
                return {"choice": r["key"]}
        return {"choice": "A"}

    ta = label_all(env.client, env.ann, truthful, pid)
    tb = label_all(
        env.client,
        env.bob,
        lambda t: {"choice": "B" if t["responses"][0]["text"].startswith(("first", "good")) else "A"},
        pid,
    )
    assert sum(t["prompt"].startswith("gold") for t in ta) >= 1
    assert len([t for t in ta if not t["prompt"].startswith("gold")]) == 20
    d = env.client.get(f"/api/admin/projects/{pid}/dashboard", headers=env.admin).json()
    acc = {l["username"]: l["gold_accuracy"] for l in d["labelers"]}
    assert acc["ann"] == 1.0
    if any(t["prompt"].startswith("gold") for t in tb):
        assert acc["bob"] == 0.0
    assert d["progress"]["labels"] == 40 and d["progress"]["required"] == 60
    # agreement from stored labels: ann says "first" on regular items? ann picks A (random side);
    # bob always says "second": kappa and alpha are computed over the 20 shared regular items
    k = d["agreement"]["kappas"]
    assert [(x["a"], x["b"]) for x in k] == [("ann", "bob")] and k[0]["n"] >= 20
    assert d["agreement"]["alpha"] is not None
    # gold items are not exported by default
    recs = env.client.get(f"/api/admin/projects/{pid}/export?kind=pairs", headers=env.admin).text.splitlines()
    assert len(recs) == 40 and not any("gold" in r for r in recs)


@BOTH_BACKENDS
def test_skip_frees_the_slot_and_idempotent_submit(env):
    make_project(env.client, env.admin, "thumbs", [{"prompt": "p", "completion": "c"}], overlap=1)
    t = env.client.post("/api/tasks/next", headers=env.ann).json()
    assert env.client.post("/api/tasks/next", headers=env.ann).json()["task_id"] == t["task_id"]  # same open task
    assert env.client.post("/api/tasks/next", headers=env.bob).status_code == 204  # slot taken
    assert env.client.post(f"/api/tasks/{t['task_id']}/skip", headers=env.ann).status_code == 200
    assert env.client.post("/api/tasks/next", headers=env.ann).status_code == 204  # never back to the skipper
    tb = env.client.post("/api/tasks/next", headers=env.bob).json()
    assert tb["prompt"] == "p"
    r1 = env.client.post(f"/api/tasks/{tb['task_id']}/label", json={"label": True}, headers=env.bob).json()
    r2 = env.client.post(f"/api/tasks/{tb['task_id']}/label", json={"label": False}, headers=env.bob).json()
    assert r1["duplicate"] is False and r2 == {**r1, "duplicate": True}
    assert env.client.post(f"/api/tasks/{t['task_id']}/label", json={"label": True}, headers=env.ann).status_code == 409
    with env.store.read() as c:
        assert c.execute(select(func.count()).select_from(db.labels)).scalar() == 1
        assert c.execute(select(db.labels.c.payload)).scalar() == {"label": True}


@pytest.mark.parametrize(
    "body",
    [{"choice": "C"}, {"choice": "A", "strength": 7}, {"rating": 3}, {"choice": 1}, {"choice": "A", "unknown": 1}],
)
def test_bad_verdicts_are_422(env, body):
    make_project(env.client, env.admin, "pairwise", pair_items(1))
    t = env.client.post("/api/tasks/next", headers=env.ann).json()
    assert env.client.post(f"/api/tasks/{t['task_id']}/label", json=body, headers=env.ann).status_code == 422
    with env.store.read() as c:
        assert c.execute(select(func.count()).select_from(db.labels)).scalar() == 0


@BOTH_BACKENDS
def test_all_task_types_export_and_read_back(env, tmp_path):
    c, A = env.client, env.admin
    conv = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Name a prime."},
    ]
    p_rank = make_project(c, A, "ranking", [{"prompt": f"r{i}", "responses": ["x", "y", "z"]} for i in range(3)])
    p_rate = make_project(c, A, "rating", [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(3)])
    p_thumb = make_project(c, A, "thumbs", [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(3)])
    p_rw = make_project(
        c, A, "rewrite", [{"prompt": "q0", "completion": "bad answer"}, {"messages": conv, "completion": "Four."}]
    )
    p_pair = make_project(
        c,
        A,
        "pairwise",
        [
            {"messages": conv, "responses": ["7", "8"]},
            {"prompt": "t", "chosen": "c", "rejected": "r"},
            {"prompt": "u", "responses": ["c", "d"]},
        ],
    )
    tasks = label_all(c, env.ann, lambda t: {"ranking": [r["key"] for r in t["responses"]][::-1]}, p_rank)
    assert len(tasks) == 3 and [r["key"] for r in tasks[0]["responses"]] == ["A", "B", "C"]
    label_all(c, env.ann, lambda t: {"rating": 6, "flags": ["untruthful"]}, p_rate)
    label_all(c, env.ann, lambda t: {"label": t["prompt"] != "q1"}, p_thumb)
    rw = label_all(c, env.ann, lambda t: {"rewrite": "better answer"}, p_rw)
    assert any(t["messages"] == conv for t in rw)  # conversations shown as conversations
    verdicts = iter([{"choice": "A"}, {"choice": "tie"}, {"choice": "both_bad"}])
    label_all(c, env.ann, lambda t: next(verdicts), p_pair)

    def fetch(pid, kind, **q):
        r = c.get(f"/api/admin/projects/{pid}/export", params={"kind": kind, **q}, headers=A)
        assert r.status_code == 200, r.text
        path = tmp_path / f"{pid}-{kind}.jsonl"
        path.write_bytes(r.content)
        return read_records(path, kind).records

    rank_pairs = fetch(p_rank, "pairs")
    assert len(rank_pairs) == 9  # 3 items x 3 pairs
    assert len(fetch(p_rank, "rankings")) == 3
    ratings = fetch(p_rate, "ratings")
    assert [(r.rating, r.flags, r.scale_max) for r in ratings] == [(6.0, ["untruthful"], 7.0)] * 3
    thumbs = fetch(p_thumb, "thumbs")
    assert sorted(t.label for t in thumbs) == [False, True, True]
    sft = fetch(p_rw, "sft")
    assert {type(r).__name__ for r in sft} == {"CompletionRecord", "ConversationRecord"}
    assert all((getattr(r, "completion", None) or r.messages[-1]["content"]) == "better answer" for r in sft)
    assert sft[1].messages[:3] == conv if hasattr(sft[1], "messages") else sft[0].messages[:3] == conv
    assert [r.original for r in fetch(p_rw, "rewrites")] == ["bad answer", "Four."]
    pairs = fetch(p_pair, "pairs")
    assert len(pairs) == 2 and sum(p.tie for p in pairs) == 1  # "both bad" gives no pair
    assert any(p.prompt.startswith("User: Hi") for p in pairs)
    # wrong kind for the project type is a clear 422
    assert c.get(f"/api/admin/projects/{p_rate}/export?kind=pairs", headers=A).status_code == 422
    # Hugging Face datasets export reads back through read_records
    datasets = pytest.importorskip("datasets")
    with env.store.read() as conn:
        assert export_hf(conn, p_thumb, "thumbs", tmp_path / "hf_thumbs") == 3
    ds = datasets.load_from_disk(str(tmp_path / "hf_thumbs"))
    assert sorted(r.label for r in read_records(ds, "thumbs").records) == [False, True, True]


@BOTH_BACKENDS
def test_majority_export(env):
    pid = make_project(env.client, env.admin, "thumbs", [{"prompt": "q", "completion": "a"}], overlap=3)
    for name, lab in (("ann", True), ("bob", True), ("cat", False)):
        label_all(env.client, getattr(env, name), lambda t, lab=lab: {"label": lab}, pid)
    with env.store.read() as c:
        recs = export_records(c, pid, "thumbs", aggregate="majority")
        assert [r.label for r in recs] == [True]
        assert len(export_records(c, pid, "thumbs")) == 3


def test_bad_imports_name_file_line_field_and_import_nothing(env, tmp_path):
    c, A = env.client, env.admin
    pid = make_project(c, A, "pairwise", pair_items(2))
    good = json.dumps({"prompt": "p", "responses": ["a", "b"]})
    cases = {
        "malformed.jsonl": ([good, '{"prompt": "p", "responses": ["a",'], 2, None, "malformed JSON"),
        "missing.jsonl": ([good, good, json.dumps({"prompt": "p", "responses": ["a"]})], 3, "responses", "2 responses"),
        "nofield.jsonl": ([good, json.dumps({"responses": ["a", "b"]})], 2, "prompt", "missing"),
        "badtype.jsonl": ([json.dumps({"prompt": "p", "responses": ["a", 3]})], 1, "responses[1]", "string"),
        "badgold.jsonl": (
            [good, json.dumps({"prompt": "p", "responses": ["a", "b"], "gold": "maybe"})],
            2,
            "gold",
            "first",
        ),
    }
    for name, (lines, line, field, words) in cases.items():
        path = tmp_path / name
        path.write_text("\n".join(lines) + "\n")
        r = c.post(f"/api/admin/projects/{pid}/import", files={"file": (name, path.read_bytes())}, headers=A)
        assert r.status_code == 422, r.text
        d = r.json()["detail"]
        assert (d["file"], d["line"], d["field"], d["imported"]) == (name, line, field, 0), d
        assert words in d["error"] and d["error"].startswith(f"{name}:{line}")
    r = c.post(
        f"/api/admin/projects/{pid}/items",
        json={"items": [json.loads(good), {"prompt": "x", "completion": "y"}]},
        headers=A,
    )
    assert r.status_code == 422 and r.json()["detail"]["line"] == 1
    with env.store.read() as conn:
        assert conn.execute(select(func.count()).select_from(db.items)).scalar() == 2  # only the first import
    # a good upload goes in
    path = tmp_path / "good.jsonl"
    path.write_text(good + "\n" + json.dumps({"prompt": "q", "responses": ["a", "b"]}) + "\n")
    r = c.post(f"/api/admin/projects/{pid}/import", files={"file": ("good.jsonl", path.read_bytes())}, headers=A)
    assert r.json() == {"imported": 2, "gold": 0}


@BOTH_BACKENDS
def test_import_is_one_transaction_even_when_the_database_refuses(env):
    """If the insert itself fails half-way, no row of the batch stays."""
    from rlhfkit.feedback.queue import add_items
    from rlhfkit.feedback.tasks import parse_items

    pid = make_project(env.client, env.admin, "thumbs", [{"prompt": "p", "completion": "c"}])
    parsed = parse_items([{"prompt": f"q{i}", "completion": "c"} for i in range(5)], "thumbs")

    def job(conn):
        add_items(conn, pid, parsed)
        raise RuntimeError("disk full")  # after the inserts

    with pytest.raises(RuntimeError):
        env.store.write(job)
    with env.store.read() as conn:
        assert conn.execute(select(func.count()).select_from(db.items)).scalar() == 1
        assert conn.execute(select(db.projects.c.n_items)).scalar() == 1


@BOTH_BACKENDS
def test_migrations_match_models_and_durable_pragmas(env):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with env.store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), db.metadata) == []
        if conn.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        else:  # PostgreSQL: a COMMIT returns once its WAL is flushed
            assert conn.exec_driver_sql("SHOW fsync").scalar() == "on"
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0005"
        # the partial index the abandoned-task search relies on exists with its condition
        from sqlalchemy import inspect

        ix = {i["name"]: i for i in inspect(conn).get_indexes("assignments")}
        assert ix["ix_assignments_open_lease"]["column_names"] == ["project_id", "created_at"]
        item_ix = {i["name"]: i for i in inspect(conn).get_indexes("items")}
        assert item_ix["ix_items_project_external_id"]["column_names"] == ["project_id", "external_id"]
        if conn.dialect.name == "sqlite":  # serve's completion lookup is an index search, not a scan
            plan = " ".join(
                str(r[-1])
                for r in conn.exec_driver_sql(
                    "EXPLAIN QUERY PLAN SELECT * FROM items WHERE project_id = 1 AND external_id = 'x' "
                    "ORDER BY id DESC LIMIT 1"
                )
            )
            assert "ix_items_project_external_id" in plan, plan
    # re-applying at start is a no-op
    db.upgrade(env.store.engine)


def test_cli_create_user_import_export(tmp_path, capsys):
    from rlhfkit.cli import main

    dbp = str(tmp_path / "cli.db")
    assert (
        main(
            [
                "feedback",
                "create-user",
                "--db",
                dbp,
                "--username",
                "root",
                "--password",
                "long-password",
                "--role",
                "admin",
            ]
        )
        == 0
    )
    items = tmp_path / "items.jsonl"
    items.write_text("\n".join(json.dumps({"prompt": f"p{i}", "completion": f"c{i}"}) for i in range(3)) + "\n")
    assert (
        main(["feedback", "import", "--db", dbp, "--project", "t", "--file", str(items), "--task_type", "thumbs"]) == 0
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "completion": "c"}\n{"prompt": "p"}\n')
    assert main(["feedback", "import", "--db", dbp, "--project", "t", "--file", str(bad)]) == 2
    assert "bad.jsonl:2: field 'responses'" in capsys.readouterr().err
    store = db.Store(dbp)
    try:
        from rlhfkit.feedback.queue import next_task, submit_label

        uid = store.read().execute(select(db.users.c.id)).scalar()
        for _ in range(3):
            t = store.write(lambda c: next_task(c, uid))
            store.write(lambda c: submit_label(c, uid, t["task_id"], {"label": True}))
        with store.read() as conn:
            assert conn.execute(select(db.projects.c.n_items)).scalar() == 3
    finally:
        store.close()
    out = tmp_path / "thumbs.jsonl"
    assert main(["feedback", "export", "--db", dbp, "--project", "t", "--kind", "thumbs", "--out", str(out)]) == 0
    assert len(read_records(out, "thumbs")) == 3
    assert main(["feedback", "export", "--db", dbp, "--project", "t", "--kind", "pairs", "--out", str(out)]) == 2
    assert main(["feedback", "--help"]) == 0
    with pytest.raises(SystemExit):
        main(["feedback", "serve", "--help"])
    assert "--port" in capsys.readouterr().out


def test_generation_hook(env):
    from rlhfkit.feedback.generation import generate_items

    pid = make_project(env.client, env.admin, "pairwise", pair_items(1))
    assert (
        env.client.post(f"/api/admin/projects/{pid}/generate", json={"prompts": ["x"]}, headers=env.admin).status_code
        == 501
    )

    def gen(prompts, n):
        return [[{"text": f"{p} answer {j}", "model": "policy-step-10"} for j in range(n)] for p in prompts]

    assert generate_items(env.store, pid, ["new prompt"], gen, 2) == 1
    with env.store.read() as c:
        assert c.execute(select(db.items.c.source).where(db.items.c.prompt == "new prompt")).scalar() == "generated"
