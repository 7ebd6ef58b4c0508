"""Exports that say who labelled (a pseudonym, stable per store, never the user name) and how far
to trust them (gold accuracy: leave out or weigh), imports that drop exact copies and refuse
oversized fields, and `--format hf` folders that the training commands read."""

import json
import os
import stat

import pytest
from sqlalchemy import select, update

from rlhfkit.cli import main
from rlhfkit.data import read_records
from rlhfkit.feedback import db
from rlhfkit.data.loading import load_training_records

from .conftest import make_project
from .test_api import label_all


def _gold_project(env, n_items=12, n_gold=6):
    """A pairwise project labelled by ann and cat (right on every gold question) and bob (always
    wrong), overlap 3: every regular item gets the same verdict from ann and cat."""
    items = [{"prompt": f"question {i}", "responses": [f"good {i}", f"bad {i}"]} for i in range(n_items)]
    items += [{"prompt": f"gold {i}", "responses": [f"good g{i}", f"bad g{i}"], "gold": "first"} for i in range(n_gold)]
    pid = make_project(env.client, env.admin, "pairwise", items, overlap=3, gold_rate=0.5, name="pw")

    def verdict(truthful):
        def pick(t):
            good = next(r["key"] for r in t["responses"] if r["text"].startswith("good"))
            return {"choice": good if truthful else next(r["key"] for r in t["responses"] if r["key"] != good)}

        return pick

    for name, truthful in (("ann", True), ("bob", False), ("cat", True)):
        label_all(env.client, getattr(env, name), verdict(truthful), pid)
    return pid


def labeler_pseudonym(user_id: int, key: bytes) -> str:
    from rlhfkit.feedback.export import labeler_pseudonym as pseudonym

    return pseudonym(user_id, key)


def export_labels(*args, **kwargs):
    from rlhfkit.feedback.export import export_labels as export

    return export(*args, **kwargs)


def _users(env) -> dict:
    with env.store.read() as c:
        return {u: i for i, u in c.execute(select(db.users.c.id, db.users.c.username))}


def test_exports_carry_a_stable_pseudonym_never_the_user_name(env, tmp_path, capsys):
    _gold_project(env)
    dbp = str(env.tmp / "feedback.db")
    out1, out2 = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for out in (out1, out2):
        assert main(["feedback", "export", "--db", dbp, "--project", "pw", "--kind", "pairs", "--out", str(out)]) == 0
    a, b = [[json.loads(l) for l in p.read_text().splitlines()] for p in (out1, out2)]
    assert a == b and len(a) == 36  # 12 items x 3 labelers; the same pseudonyms in both exports
    key_file = env.tmp / "feedback.db.labeler_key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    users = _users(env)
    expected = {labeler_pseudonym(users[n], key_file.read_text().strip().encode()) for n in ("ann", "bob", "cat")}
    assert {r["labeler"] for r in a} == expected and all(len(x) == len("labeler-") + 12 for x in expected)
    text = out1.read_text()
    assert not any(name in text for name in ("ann", "bob", "cat"))
    # another key (another store, or $RLHFKIT_LABELER_KEY) gives other pseudonyms
    assert labeler_pseudonym(users["ann"], b"another key") not in expected
    # two labelers' identical verdicts are two labels, not duplicates: all 36 train
    capsys.readouterr()
    assert len(load_training_records(str(out1), "pairs")) == 36
    assert "duplicate" not in capsys.readouterr().out
    # without labeler ids they cannot be told from copies: ann's and cat's verdicts collapse
    assert (
        main(
            [
                "feedback",
                "export",
                "--db",
                dbp,
                "--project",
                "pw",
                "--kind",
                "pairs",
                "--out",
                str(out2),
                "--with_labeler",
                "false",
            ]
        )
        == 0
    )
    assert "labeler" not in out2.read_text()
    assert len(load_training_records(str(out2), "pairs")) == 24
    assert "dropped 12 exact duplicate records (24 left)" in capsys.readouterr().out


def test_an_empty_or_unusable_key_file_is_refused_never_an_empty_key(env, tmp_path, capsys, monkeypatch):
    """An empty key file (a crash before its bytes reached the disk, a truncated copy) is refused
    naming it: pseudonyms keyed by nothing are HMACs anyone can recompute from the user ids. A key
    file that cannot be read is one line too, never a traceback."""
    monkeypatch.delenv("RLHFKIT_LABELER_KEY", raising=False)
    _gold_project(env)
    dbp, out = str(env.tmp / "feedback.db"), tmp_path / "x.jsonl"
    key_file = env.tmp / "feedback.db.labeler_key"
    key_file.write_text("\n")
    assert main(["feedback", "export", "--db", dbp, "--project", "pw", "--kind", "pairs", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"labeler key {key_file} is empty" in err and "Traceback" not in err and not out.exists()
    key_file.unlink()
    key_file.mkdir()
    assert main(["feedback", "export", "--db", dbp, "--project", "pw", "--kind", "pairs", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"labeler key {key_file}" in err and "RLHFKIT_LABELER_KEY" in err and "Traceback" not in err
    # --with_labeler false needs no key
    assert (
        main(
            [
                "feedback",
                "export",
                "--db",
                dbp,
                "--project",
                "pw",
                "--kind",
                "pairs",
                "--out",
                str(out),
                "--with_labeler",
                "false",
            ]
        )
        == 0
    )


def test_processes_making_the_key_at_once_all_read_the_one_key(tmp_path, monkeypatch):
    """Eight processes asking for a new store's key at the same moment, ten times over: each time
    they all get the same key, and never an empty one (no process reads the key file between
    its creation and its write)."""
    import multiprocessing as mp

    from rlhfkit.feedback.export import labeler_key

    monkeypatch.delenv("RLHFKIT_LABELER_KEY", raising=False)
    ctx = mp.get_context("fork")
    for trial in range(10):
        path, barrier, q = str(tmp_path / f"s{trial}.db"), ctx.Barrier(8), ctx.Queue()

        def ask():
            barrier.wait()
            q.put(labeler_key(path))

        procs = [ctx.Process(target=ask) for _ in range(8)]
        for p in procs:
            p.start()
        keys = {q.get(timeout=60) for _ in procs}
        for p in procs:
            p.join()
        assert len(keys) == 1 and len(keys.pop()) == 64, trial
        assert sorted(f.name for f in tmp_path.iterdir() if f.name.startswith(f"s{trial}.")) == [
            f"s{trial}.db.labeler_key"
        ]


def test_labelers_under_a_gold_accuracy_are_left_out_or_weighed(env, tmp_path, capsys):
    pid = _gold_project(env)
    dbp = str(env.tmp / "feedback.db")
    users = _users(env)
    out = tmp_path / "kept.jsonl"
    assert (
        main(
            [
                "feedback",
                "export",
                "--db",
                dbp,
                "--project",
                "pw",
                "--kind",
                "pairs",
                "--out",
                str(out),
                "--min_gold_accuracy",
                "0.6",
            ]
        )
        == 0
    )
    line = capsys.readouterr().out.strip()
    recs = read_records(out, "pairs").records
    assert len(recs) == 24 and all(r.chosen.startswith("good") for r in recs)  # bob's 12 wrong verdicts are out
    key = (env.tmp / "feedback.db.labeler_key").read_text().strip().encode()
    with env.store.read() as c:
        bob_gold = c.execute(
            select(db.labels.c.id).where(db.labels.c.user_id == users["bob"], db.labels.c.is_gold == True)  # noqa: E712
        ).all()
    assert line.endswith(
        f"; left out 12 labels of 1 labeler under gold accuracy 0.6 "
        f"({labeler_pseudonym(users['bob'], key)} 0.000 on {len(bob_gold)} gold answers)"
    ), line
    assert (
        main(
            [
                "feedback",
                "export",
                "--db",
                dbp,
                "--project",
                "pw",
                "--kind",
                "pairs",
                "--out",
                str(out),
                "--weight_by_gold",
                "true",
            ]
        )
        == 0
    )
    weights = {(r.labeler, r.weight) for r in read_records(out, "pairs").records}
    assert weights == {
        (labeler_pseudonym(users["ann"], key), 1.0),
        (labeler_pseudonym(users["cat"], key), 1.0),
        (labeler_pseudonym(users["bob"], key), 0.0),
    }
    # a majority vote has no one labeler to weigh by
    capsys.readouterr()
    assert (
        main(
            [
                "feedback",
                "export",
                "--db",
                dbp,
                "--project",
                "pw",
                "--kind",
                "pairs",
                "--out",
                str(out),
                "--weight_by_gold",
                "true",
                "--aggregate",
                "majority",
            ]
        )
        == 2
    )
    assert "use min_gold_accuracy to keep low-accuracy labelers out of the vote" in capsys.readouterr().err
    # ... but bob can be kept out of the vote: with him, items are 2:1 anyway; the vote is the same
    with env.store.read() as c:
        assert len(export_labels(c, pid, "pairs", aggregate="majority", min_gold_accuracy=0.6).records) == 12


def test_a_labeler_without_gold_answers_counts_at_the_pooled_accuracy(env):
    items = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(4)]
    items += [{"prompt": f"g{i}", "completion": "gold", "gold": True} for i in range(4)]
    pid = make_project(env.client, env.admin, "thumbs", items, overlap=1, gold_rate=0.0)
    # ann answers the regular items while no gold is served; then only gold is left for bob and cat
    label_all(env.client, env.ann, lambda t: {"label": True}, pid)
    env.store.write(lambda c: c.execute(update(db.projects).where(db.projects.c.id == pid).values(gold_rate=1.0)))
    for name, right in (("bob", 3), ("cat", 1)):  # bob 3 of 4 right, cat 1 of 4: pooled 4 / 8
        answers = iter([True] * right + [False] * (4 - right))
        assert len(label_all(env.client, getattr(env, name), lambda t: {"label": next(answers)}, pid)) == 4
    with env.store.read() as c:
        result = export_labels(c, pid, "thumbs", weight_by_gold=True)
        assert result.gold_pooled == pytest.approx(0.5)
        assert [r.weight for r in result.records] == [0.5] * 4  # ann: no gold answers
        assert len(export_labels(c, pid, "thumbs", min_gold_accuracy=0.6).records) == 0
        assert len(export_labels(c, pid, "thumbs", min_gold_accuracy=0.5).records) == 4


def test_the_api_exports_as_the_cli_does(env, tmp_path, capsys, monkeypatch):
    """GET .../export gives the CLI's records: the same labeler pseudonyms (on by default, the
    store's key), the gold-accuracy threshold and weights, with what they did in X-Export-Note;
    the same refusals (a weight per labeler with a majority vote, a threshold out of [0, 1])."""
    monkeypatch.delenv("RLHFKIT_LABELER_KEY", raising=False)
    pid = _gold_project(env)
    dbp = str(env.tmp / "feedback.db")
    url = f"/api/admin/projects/{pid}/export"
    for flags, query in (
        ([], {}),
        (["--min_gold_accuracy", "0.6"], {"min_gold_accuracy": 0.6}),
        (["--weight_by_gold", "true"], {"weight_by_gold": "true"}),
        (["--with_labeler", "false"], {"with_labeler": "false"}),
    ):
        out = tmp_path / "cli.jsonl"
        assert (
            main(["feedback", "export", "--db", dbp, "--project", "pw", "--kind", "pairs", "--out", str(out), *flags])
            == 0
        )
        last = capsys.readouterr().out.strip().splitlines()[-1]
        r = env.client.get(url, params={"kind": "pairs", **query}, headers=env.admin)
        assert r.status_code == 200, r.text
        assert r.text == out.read_text(encoding="utf-8"), flags
        note = r.headers.get("x-export-note")
        assert (note is None) if not flags or flags[0] == "--with_labeler" else last.endswith(note), (flags, note)
    assert "labeler-" in env.client.get(url, params={"kind": "pairs"}, headers=env.admin).text
    r = env.client.get(
        url, params={"kind": "pairs", "weight_by_gold": "true", "aggregate": "majority"}, headers=env.admin
    )
    assert r.status_code == 422 and "use min_gold_accuracy" in r.text
    assert env.client.get(url, params={"kind": "pairs", "min_gold_accuracy": 1.5}, headers=env.admin).status_code == 422


def test_the_api_import_drops_exact_copies_as_the_cli_does(env):
    """JSON items and a file upload: exact copies within one import are dropped and counted."""
    items = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(5)]
    pid = env.client.post(
        "/api/admin/projects", json={"name": "dups", "task_type": "thumbs"}, headers=env.admin
    ).json()["id"]
    r = env.client.post(f"/api/admin/projects/{pid}/items", json={"items": items + items[:3]}, headers=env.admin)
    assert r.status_code == 200 and r.json() == {"imported": 5, "gold": 0, "duplicates_dropped": 3}, r.text
    jsonl = "".join(json.dumps(x) + "\n" for x in items[1:] + items[1:2])
    r = env.client.post(
        f"/api/admin/projects/{pid}/import", files={"file": ("more.jsonl", jsonl.encode())}, headers=env.admin
    )
    assert r.status_code == 200 and r.json()["duplicates_dropped"] == 1, r.text
    with env.store.read() as c:  # copies within one import go; items imported before are another import's
        assert c.execute(select(db.projects.c.n_items).where(db.projects.c.id == pid)).scalar() == 9


def test_gold_options_need_answered_gold_questions(env, tmp_path, capsys):
    make_project(env.client, env.admin, "thumbs", [{"prompt": "q", "completion": "a"}], name="nogold")
    assert (
        main(
            [
                "feedback",
                "export",
                "--db",
                str(env.tmp / "feedback.db"),
                "--project",
                "nogold",
                "--kind",
                "thumbs",
                "--out",
                str(tmp_path / "x.jsonl"),
                "--min_gold_accuracy",
                "0.5",
            ]
        )
        == 2
    )
    assert "project 'nogold' has no answered gold questions" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


def test_an_hf_export_is_training_data(env, tmp_path):
    pytest.importorskip("datasets")
    _gold_project(env)
    folder = tmp_path / "hf"
    assert (
        main(
            [
                "feedback",
                "export",
                "--db",
                str(env.tmp / "feedback.db"),
                "--project",
                "pw",
                "--kind",
                "pairs",
                "--out",
                str(folder),
                "--format",
                "hf",
                "--weight_by_gold",
                "true",
            ]
        )
        == 0
    )
    recs = load_training_records(str(folder), "pairs")
    assert len(recs) == 36 and {r.weight for r in recs} == {0.0, 1.0} and all(r.labeler for r in recs)


def test_import_drops_exact_copies_and_says_so(tmp_path, capsys):
    items = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(5)]
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in items + items[:3] + [{**items[0], "id": "x"}]))
    dbp = str(tmp_path / "f.db")
    assert (
        main(["feedback", "import", "--db", dbp, "--project", "t", "--file", str(path), "--task_type", "thumbs"]) == 0
    )
    assert capsys.readouterr().out.strip() == (
        f"imported 6 items into project 't' (id 1); dropped 3 exact duplicate items of {path}"
    )  # the copy with its own id is an item


def test_import_refuses_an_oversized_field_by_file_line_and_field(tmp_path, capsys):
    path = tmp_path / "big.jsonl"
    path.write_text(
        json.dumps({"prompt": "p", "responses": ["a", "b"]})
        + "\n"
        + json.dumps({"prompt": "p", "responses": ["ok", "x" * 100_001]})
        + "\n"
    )
    dbp = str(tmp_path / "f.db")
    assert (
        main(["feedback", "import", "--db", dbp, "--project", "t", "--file", str(path), "--task_type", "pairwise"]) == 2
    )
    err = capsys.readouterr().err
    assert (
        f"{path}:2: field 'responses[1]': 100001 characters, more than the limit of 100000 (max_field_chars)" in err
    ), err
    store = db.Store(dbp)
    try:
        with store.read() as c:
            assert c.execute(select(db.items.c.id)).first() is None
    finally:
        store.close()
    # the limit is a setting
    assert (
        main(
            [
                "feedback",
                "import",
                "--db",
                dbp,
                "--project",
                "t",
                "--file",
                str(path),
                "--task_type",
                "pairwise",
                "--max_field_chars",
                "200000",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith("imported 2 items")


def test_an_hf_folder_keeps_a_column_only_later_records_have(tmp_path):
    pytest.importorskip("datasets")
    from rlhfkit.data import ThumbsRecord
    from rlhfkit.feedback.export import write_records

    recs = [ThumbsRecord("p", "a", True), ThumbsRecord("q", "b", False, labeler="labeler-1", weight=0.5)]
    assert write_records(recs, tmp_path / "hf", "hf") == 2
    assert read_records(tmp_path / "hf", "thumbs").records == recs
