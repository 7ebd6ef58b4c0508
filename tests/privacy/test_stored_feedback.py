"""Personal data and the feedback store: ``rlhfkit serve --redact true`` keeps it out of what is
stored (the caller still gets its reply), and ``rlhfkit feedback export --redact true`` takes it
out of training data from a store that holds it."""

import hashlib
import json

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from rlhfkit.cli import main  # noqa: E402
from rlhfkit.data import read_records  # noqa: E402
from rlhfkit.serve.app import create_app  # noqa: E402
from rlhfkit.feedback.enduser import FeedbackLog, hashed_user  # noqa: E402

ASK = "My email is jane.doe@example.com and my phone is (415) 555-2671; what should I do?"
REPLY = "Write to support@example.org or call +1 917-444-6321."


@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory):
    from rlhfkit.models import tiny_causal_lm, tiny_tokenizer
    from rlhfkit.serve.engine import ChatModel

    tok = tiny_tokenizer()
    out = tmp_path_factory.mktemp("chat_model")
    tiny_causal_lm(tok, hidden_size=32, num_layers=2, num_heads=2, seed=0).save_pretrained(out)
    tok.save_pretrained(out)
    return ChatModel.load(str(out), name="tiny-chat", max_new_tokens=4, temperature=1.0)


def _stored_text(db_path) -> str:
    """Every text the store holds about served completions (items and label payloads)."""
    import sqlite3

    con = sqlite3.connect(db_path)
    try:
        rows = con.execute("SELECT prompt, messages, responses FROM items").fetchall()
        rows += con.execute("SELECT payload, '', '' FROM labels").fetchall()
    finally:
        con.close()
    return json.dumps(rows)


def test_serve_redacts_what_it_stores_not_what_it_sends(tiny_chat, tmp_path, capsys):
    db = str(tmp_path / "fb.db")
    log = FeedbackLog(db, redact=True)
    with TestClient(create_app(tiny_chat, log)) as client:
        r = client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": ASK}], "max_tokens": 3, "seed": 1}
        )
        assert r.status_code == 200, r.text
        cid = r.json()["id"]
        fb = client.post(
            "/v1/feedback",
            json={
                "completion_id": cid,
                "thumbs": "down",
                "rating": 2,
                "comment": "it ignored me; reach me at 020 7946 0958",
                "user": "jane.doe@example.com",
            },
        )
        assert fb.status_code == 200, fb.text
        # an edit and a reason with personal data: stored redacted too
        fb = client.post(
            "/v1/feedback",
            json={
                "completion_id": cid,
                "edit": "Mail jane.doe@example.com now.",
                "reason": "my card is 4111 1111 1111 1111",
            },
        )
        assert fb.status_code == 200, fb.text
    stored = log.completion(cid)
    assert stored["messages"][0]["content"] == (
        "My email is [EMAIL_ADDRESS] and my phone is [PHONE_NUMBER]; what should I do?"
    )
    # a reply with personal data in it (the tiny model's reply has none): stored redacted too
    log.log_completion("cmpl-x", [{"role": "user", "content": "hi"}], REPLY, "tiny-chat")
    assert log.completion("cmpl-x")["responses"][0]["text"] == "Write to [EMAIL_ADDRESS] or call [PHONE_NUMBER]."
    log.close()
    text = _stored_text(db)
    for secret in ("jane.doe@example.com", "555-2671", "7946 0958", "support@example.org", "444-6321", "4111 1111"):
        assert secret not in text
    assert "Mail [EMAIL_ADDRESS] now." in text and "my card is [CREDIT_CARD]" in text
    # the id is kept as an HMAC under a key beside the store (owner-only), not as an unkeyed hash
    # that trying candidate addresses would reverse
    key_file = tmp_path / "fb.db.end_user_key"
    assert key_file.is_file() and key_file.stat().st_mode & 0o777 == 0o600
    key = key_file.read_text().strip().encode()
    assert hashed_user("jane.doe@example.com", key) in text and "[PHONE_NUMBER]" in text
    assert hashlib.sha256(b"jane.doe@example.com").hexdigest()[:16] not in text

    out = tmp_path / "thumbs.jsonl"
    assert (
        main(["feedback", "export", "--db", db, "--project", "serve-thumbs", "--kind", "thumbs", "--out", str(out)])
        == 0
    )
    (rec,) = read_records(out, "thumbs")
    assert "[EMAIL_ADDRESS]" in rec.prompt and "jane.doe" not in rec.prompt and rec.label is False


def test_export_redacts_a_store_that_holds_personal_data(tiny_chat, tmp_path, capsys):
    db = str(tmp_path / "fb.db")
    log = FeedbackLog(db)  # no redaction when stored
    log.log_completion(
        "c1", [{"role": "system", "content": "Be kind."}, {"role": "user", "content": ASK}], REPLY, "tiny-chat"
    )
    log.feedback("c1", thumbs="up")
    assert "jane.doe@example.com" in log.completion("c1")["messages"][1]["content"]
    log.close()

    plain, redacted = tmp_path / "plain.jsonl", tmp_path / "redacted.jsonl"
    assert (
        main(["feedback", "export", "--db", db, "--project", "serve-thumbs", "--kind", "thumbs", "--out", str(plain)])
        == 0
    )
    assert (
        main(
            [
                "feedback",
                "export",
                "--db",
                db,
                "--project",
                "serve-thumbs",
                "--kind",
                "thumbs",
                "--out",
                str(redacted),
                "--redact",
                "true",
            ]
        )
        == 0
    )
    said = capsys.readouterr().out
    assert "wrote 1 thumbs records" in said and "redacted 2 EMAIL_ADDRESS, 2 PHONE_NUMBER" in said
    (p,) = read_records(plain, "thumbs")
    (r,) = read_records(redacted, "thumbs")
    assert "jane.doe@example.com" in p.prompt and p.completion == REPLY
    assert r.completion == "Write to [EMAIL_ADDRESS] or call [PHONE_NUMBER]."
    assert r.prompt == p.prompt.replace("jane.doe@example.com", "[EMAIL_ADDRESS]").replace(
        "(415) 555-2671", "[PHONE_NUMBER]"
    )
    assert r.label is True

    hf = tmp_path / "hf"
    assert (
        main(
            [
                "feedback",
                "export",
                "--db",
                db,
                "--project",
                "serve-thumbs",
                "--kind",
                "thumbs",
                "--out",
                str(hf),
                "--format",
                "hf",
                "--redact",
                "true",
            ]
        )
        == 0
    )
    import datasets

    assert datasets.load_from_disk(str(hf))[0]["completion"] == r.completion
    code = main(
        [
            "feedback",
            "export",
            "--db",
            db,
            "--project",
            "serve-thumbs",
            "--kind",
            "thumbs",
            "--out",
            str(hf),
            "--format",
            "parquet",
        ]
    )
    assert code == 2 and "field 'format': 'parquet' is not jsonl or hf" in capsys.readouterr().err


def _counts(db_path):
    import sqlite3

    con = sqlite3.connect(db_path)
    try:
        projects = {n: (i, l) for n, i, l in con.execute("SELECT name, n_items, n_labels FROM projects")}
        items = con.execute("SELECT external_id, n_assigned FROM items ORDER BY id").fetchall()
        labels = con.execute("SELECT count(*) FROM labels").fetchone()[0]
        assignments = con.execute("SELECT count(*) FROM assignments").fetchone()[0]
    finally:
        con.close()
    return projects, items, labels, assignments


@pytest.mark.parametrize("redact", [False, True])
def test_forget_erases_one_end_users_completions_and_feedback(tiny_chat, tmp_path, capsys, redact):
    db = str(tmp_path / "fb.db")
    import random

    log = FeedbackLog(db, redact=redact)
    with TestClient(create_app(tiny_chat, log, compare_share=1.0, rng=random.Random(0))) as client:

        def serve(user, compare=False):
            body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}
            if user:
                body["user"] = user
            if compare:
                body["rlhfkit"] = {"compare": True}
            r = client.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            assert len(r.json()["choices"]) == (2 if compare else 1)
            return r.json()["id"]

        jane, bob, nobody, quiet = serve("jane"), serve("bob"), serve(None), serve(None)
        jane_pair, bob_pair = serve("jane", compare=True), serve("bob", compare=True)
        # jane's feedback on a completion served to no one named: the id went only to her
        for cid, user, extra in (
            (jane, "jane", {"thumbs": "up", "rating": 5, "edit": "Hello, Jane!"}),
            (bob, "bob", {"thumbs": "up"}),
            (nobody, "jane", {"thumbs": "up", "rating": 3}),
            (jane_pair, "jane", {"choice": 1}),
            (bob_pair, "bob", {"choice": 0}),
        ):
            r = client.post("/v1/feedback", json={"completion_id": cid, "user": user, **extra})
            assert r.status_code == 200, r.text
        bad = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "user": 7})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "user"
    log.close()
    projects, items, labels, assignments = _counts(db)
    assert (
        projects == {"serve-thumbs": (8, 3), "serve-ratings": (2, 2), "serve-edits": (1, 1), "serve-choices": (2, 2)}
        and labels == 8
        and assignments == 8
    )
    stored = _stored_text(db)  # under redact the ids are kept only hashed, and forget still finds them
    assert ("hmac:" in stored) == redact and ("jane" in stored) != redact

    assert main(["feedback", "forget", "--db", db, "--end_user", "jane"]) == 0
    # her completion, her comparison and the unnamed completion she judged (with their rating,
    # edit and choice copies) and her six labels; bob's completion, his comparison with his
    # choice, and the completion nobody gave feedback on, stay
    said = capsys.readouterr().out
    assert f"erased 3 completions and 6 feedback labels of end user 'jane' from {db}\n" == said
    projects, items, labels, assignments = _counts(db)
    assert projects == {"serve-thumbs": (4, 1), "serve-ratings": (0, 0), "serve-edits": (0, 0), "serve-choices": (1, 1)}
    assert items == [(bob, 1), (quiet, 0), (bob_pair, 0), (bob_pair, 0), (bob_pair, 1)]
    assert labels == 2 and assignments == 2
    assert "Hello, Jane!" not in _stored_text(db)
    import sqlite3

    assert sqlite3.connect(db).execute("PRAGMA wal_checkpoint").fetchone()[1] == 0  # the WAL was emptied
    out = tmp_path / "t.jsonl"
    assert (
        main(["feedback", "export", "--db", db, "--project", "serve-thumbs", "--kind", "thumbs", "--out", str(out)])
        == 0
    )
    assert len(read_records(out, "thumbs")) == 1

    assert main(["feedback", "forget", "--db", db, "--end_user", "jane"]) == 0  # nothing left: no error
    assert "erased 0 completions and 0 feedback labels" in capsys.readouterr().out
    assert main(["feedback", "forget", "--db", db]) == 2
    assert "field 'end_user'" in capsys.readouterr().err
    assert main(["feedback", "forget", "--db", db, "--end_user", "bob", "--project_prefix", "other"]) == 2
    assert "no projects other-thumbs or other-ratings" in capsys.readouterr().err


def test_import_redacts_before_labelers_see_it(tmp_path, capsys):
    items = tmp_path / "items.jsonl"
    items.write_text(
        json.dumps(
            {
                "prompt": "Whose number is 212-555-0147?",
                "responses": [
                    {"text": "It is Ann's, ann@example.com."},
                    {"text": "I cannot share that.", "model": "a@b.co"},
                ],
            }
        )
        + "\n"
        + json.dumps(
            {
                "messages": [{"role": "user", "content": "my card is 4111 1111 1111 1111"}],
                "responses": ["Please do not share it.", "Thanks!"],
            }
        )
        + "\n"
        # two answers that differ only in an address: one text once redacted, nothing to compare
        + json.dumps({"prompt": "mail?", "responses": ["mail a@example.com", "mail b@example.com"]})
        + "\n",
        encoding="utf-8",
    )
    db = str(tmp_path / "fb.db")
    assert (
        main(
            [
                "feedback",
                "import",
                "--db",
                db,
                "--project",
                "p",
                "--file",
                str(items),
                "--task_type",
                "pairwise",
                "--redact",
                "true",
            ]
        )
        == 0
    )
    assert (
        "imported 2 items into project 'p' (id 1); redacted 1 CREDIT_CARD, 3 EMAIL_ADDRESS, 1 PHONE_NUMBER; "
        "left out 1 items whose responses became the same text"
    ) in capsys.readouterr().out
    text = _stored_text(db)
    for secret in ("212-555-0147", "ann@example.com", "4111 1111"):
        assert secret not in text
    assert "Whose number is [PHONE_NUMBER]?" in text and "a@b.co" in text  # a model name is a name, not text


def test_forget_mistakes_are_field_errors_and_change_nothing(tmp_path, capsys):
    import sqlite3

    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"prompt": "p", "responses": ["a", "b"]}) + "\n", encoding="utf-8")
    db = str(tmp_path / "fb.db")
    # a project named like the served model's, of another task type
    assert (
        main(
            [
                "feedback",
                "import",
                "--db",
                db,
                "--project",
                "serve-thumbs",
                "--file",
                str(items),
                "--task_type",
                "pairwise",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["feedback", "forget", "--db", db, "--end_user", "jane"]) == 2
    assert "field 'project_prefix': project 'serve-thumbs' exists with task type pairwise" in capsys.readouterr().err
    # only one of the two projects: the other is not created by looking
    log = FeedbackLog(db, prefix="x")
    log.close()
    con = sqlite3.connect(db)
    con.execute("DELETE FROM projects WHERE name = 'x-ratings'")
    con.commit()
    con.close()
    assert main(["feedback", "forget", "--db", db, "--end_user", "jane", "--project_prefix", "x"]) == 0
    names = {n for (n,) in sqlite3.connect(db).execute("SELECT name FROM projects")}
    assert names == {"serve-thumbs", "x-thumbs", "x-edits", "x-choices"}
    not_a_db = tmp_path / "notes.db"
    not_a_db.write_text("just text\n" * 100)
    capsys.readouterr()
    assert main(["feedback", "forget", "--db", str(not_a_db), "--end_user", "jane"]) == 2
    assert "field 'db': cannot open the feedback store" in capsys.readouterr().err


def test_redact_needs_a_key_outside_a_server_database(monkeypatch):
    from rlhfkit.feedback.enduser import end_user_key

    monkeypatch.delenv("RLHFKIT_END_USER_KEY", raising=False)
    with pytest.raises(ValueError, match=r"set \$RLHFKIT_END_USER_KEY"):
        end_user_key("postgresql://u@h/db", required=True)
    assert end_user_key("postgresql://u@h/db", required=False) is None
    monkeypatch.setenv("RLHFKIT_END_USER_KEY", "s3cret")
    assert end_user_key("postgresql://u@h/db", required=True) == b"s3cret"


def test_export_leaves_out_pairs_that_redaction_made_equal(tmp_path, capsys):
    """Two answers that differed only in a phone number are the same text once redacted: the
    pair is left out of the export (and counted), not written as a preference between equals."""
    from rlhfkit.feedback import db as fdb
    from rlhfkit.feedback.auth import create_user
    from rlhfkit.feedback.queue import next_task, submit_label

    items = tmp_path / "items.jsonl"
    items.write_text(
        json.dumps({"prompt": "Number?", "responses": ["Call 212-555-0147.", "Call 212-555-0199."]})
        + "\n"
        + json.dumps({"prompt": "Mail?", "responses": ["Write to a@b.org.", "I cannot say."]})
        + "\n",
        encoding="utf-8",
    )
    db = str(tmp_path / "fb.db")
    assert (
        main(["feedback", "import", "--db", db, "--project", "p", "--file", str(items), "--task_type", "pairwise"]) == 0
    )
    store = fdb.Store(db)
    try:
        uid = store.write(lambda conn: create_user(conn, "ann", "a-long-password", "labeler"))
        for _ in range(2):
            task = store.write(lambda conn: next_task(conn, uid, 1))
            # the answers are shown in a random order: pick the e-mail answer / the first phone one
            first = task["responses"][0]["text"] in ("Write to a@b.org.", "Call 212-555-0147.")
            store.write(
                lambda conn, t=task, v="A" if first else "B": submit_label(conn, uid, t["task_id"], {"choice": v})
            )
    finally:
        store.close()
    out = tmp_path / "pairs.jsonl"
    capsys.readouterr()
    assert main(["feedback", "export", "--db", db, "--project", "p", "--out", str(out), "--redact", "true"]) == 0
    said = capsys.readouterr().out
    assert "wrote 1 pairs records" in said and "left out 1 pairs whose two answers became the same text" in said
    (pair,) = read_records(out, "pairs")
    assert pair.chosen == "Write to [EMAIL_ADDRESS]."


def test_a_lost_or_other_key_is_refused_not_taken_for_nothing_to_erase(tmp_path, capsys, monkeypatch):
    """Ids hashed with a key that is not at hand would match nothing: ``forget`` and a redacting
    server refuse (naming the key ids) instead of reporting "erased 0" or starting a new key."""
    import shutil

    from rlhfkit.feedback.enduser import EndUserKeyError, key_id

    monkeypatch.delenv("RLHFKIT_END_USER_KEY", raising=False)
    db = tmp_path / "fb.db"
    log = FeedbackLog(str(db), redact=True)
    log.log_completion("c1", [{"role": "user", "content": "hi"}], "hello", "m", user="alice")
    log.feedback("c1", thumbs="up", user="alice")
    kid = key_id(log.user_key)
    log.close()
    # the database copied without its key file
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    shutil.copy(db, copy_dir / "fb.db")
    assert main(["feedback", "forget", "--db", str(copy_dir / "fb.db"), "--end_user", "alice"]) == 2
    err = capsys.readouterr().err
    assert f"2 end-user ids in {copy_dir / 'fb.db'} were hashed with another key (key id {kid})" in err
    assert "no key was found" in err and "nothing was changed" in err
    with pytest.raises(EndUserKeyError):  # a redacting server there would start a new key: refused
        FeedbackLog(str(copy_dir / "fb.db"), redact=True)
    # another key given through the environment
    monkeypatch.setenv("RLHFKIT_END_USER_KEY", "not-the-key")
    assert main(["feedback", "forget", "--db", str(db), "--end_user", "alice"]) == 2
    assert "this key's id is" in capsys.readouterr().err
    # the right key (the file beside the store): erased
    monkeypatch.delenv("RLHFKIT_END_USER_KEY")
    assert main(["feedback", "forget", "--db", str(db), "--end_user", "alice"]) == 0
    assert "erased 1 completions and 1 feedback labels" in capsys.readouterr().out
