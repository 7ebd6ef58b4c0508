"""The end-user side of the feedback store (``feedback.enduser``): every feedback kind stored as a
feedback-app label, exported by ``rlhfkit feedback export``, read back in id order by
``feedback_events`` (the learner's reader), with ids that only grow."""

import json

import pytest

from rlhfkit.cli import main
from rlhfkit.data import read_records
from rlhfkit.feedback.enduser import FeedbackError, FeedbackLog, feedback_events, last_event_id

ASK = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]


@pytest.fixture
def log(tmp_path):
    log = FeedbackLog(str(tmp_path / "fb.db"))
    yield log
    log.close()


def test_every_kind_is_stored_exported_and_read_back_in_id_order(log, tmp_path, capsys):
    log.log_completion("c1", ASK, "Blue.", "m", user="ann", version="v1")
    log.log_choices("c2", ASK, ["Red.", "Green, I think."], "m", user="bob", versions=["v2", "v2"], comparison=True)
    a = log.feedback("c1", thumbs="down", reason="too short", rating=2, user="ann")
    b = log.feedback("c1", edit="Blue, like the sky.", user="ann")
    c = log.feedback("c2", choice=1, thumbs="up", user="bob")  # the thumbs judge the reply picked
    d = log.feedback("c2", choice_index=0, rating=1, comment="wrong colour")

    events = feedback_events(log.db_url)
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert [
        (e.kind, e.completion_id, e.responses, e.versions, e.choice_indices, e.value, e.reason, e.end_user)
        for e in events
    ] == [
        ("thumbs", "c1", ("Blue.",), ("v1",), (0,), False, "too short", "ann"),
        ("rating", "c1", ("Blue.",), ("v1",), (0,), 2, "too short", "ann"),
        ("edit", "c1", ("Blue.",), ("v1",), (0,), "Blue, like the sky.", None, "ann"),
        ("thumbs", "c2", ("Green, I think.",), ("v2",), (1,), True, None, "bob"),
        ("choice", "c2", ("Red.", "Green, I think."), ("v2", "v2"), (0, 1), 1, None, "bob"),
        # no user named in the feedback: the completion's end user
        ("rating", "c2", ("Red.",), ("v2",), (0,), 1, "wrong colour", "bob"),
    ]
    assert [e.id for e in events] == [
        a["thumbs_label_id"],
        a["rating_label_id"],
        b["edit_label_id"],
        c["thumbs_label_id"],
        c["choice_label_id"],
        d["rating_label_id"],
    ]
    first = events[0]
    assert first.messages == tuple(ASK) and first.prompt == "System: Be brief.\n\nUser: Name a colour."
    assert events[1].scale == (1, 5) and first.scale is None and first.response == "Blue." and first.version == "v1"
    assert json.loads(json.dumps(first.to_dict()))["responses"] == ["Blue."]
    # a snapshot "ids <= X" and the rest after it partition the events
    x = events[2].id
    assert feedback_events(log, until_id=x) == events[:3] and log.events(after_id=x) == events[3:]
    assert feedback_events(log.store, after_id=x, limit=1) == events[3:4]
    assert last_event_id(log) == events[-1].id and last_event_id(log.db_url, prefix="other") == 0
    with log.store.read() as conn:  # a connection the caller holds
        assert feedback_events(conn) == events

    # exported with the feedback app's own command: the choice as a preference pair, the edit
    # as a rewrite (and as an SFT conversation)
    db = log.db_url
    for project, kind in (("serve-choices", "pairs"), ("serve-edits", "rewrites"), ("serve-edits", "sft")):
        assert (
            main(
                [
                    "feedback",
                    "export",
                    "--db",
                    db,
                    "--project",
                    project,
                    "--kind",
                    kind,
                    "--out",
                    str(tmp_path / f"{kind}.jsonl"),
                ]
            )
            == 0
        )
    (pair,) = read_records(tmp_path / "pairs.jsonl", "pairs")
    assert (pair.chosen, pair.rejected, pair.prompt) == ("Green, I think.", "Red.", first.prompt)
    (rewrite,) = read_records(tmp_path / "rewrites.jsonl", "rewrites")
    assert (rewrite.original, rewrite.rewrite) == ("Blue.", "Blue, like the sky.")
    sft = [json.loads(line) for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    # every end user's verdict is a label of the one `enduser` account: one labeler pseudonym
    assert [{k: v for k, v in r.items() if k != "labeler"} for r in sft] == [
        {"messages": ASK + [{"role": "assistant", "content": "Blue, like the sky."}]}
    ]
    assert sft[0]["labeler"].startswith("labeler-")
    assert [r.rewrite for r in log.export("rewrites")] == ["Blue, like the sky."]
    assert [(p.chosen, p.rejected) for p in log.export("pairs")] == [("Green, I think.", "Red.")]


def test_a_changed_mind_is_a_new_event_and_ids_are_never_reused(log):
    """Giving feedback again replaces the verdict with a new label of a larger id (a reader
    holding "ids <= X" never sees a verdict change under it), and the id of a deleted newest
    label is not handed out again (SQLite would, without AUTOINCREMENT: migration 0005)."""
    log.log_completion("c1", ASK, "Blue.", "m", user="ann")
    log.log_completion("c2", ASK, "Red.", "m", user="bob")
    up = log.feedback("c1", thumbs="up")["thumbs_label_id"]
    down = log.feedback("c1", thumbs="down")["thumbs_label_id"]
    assert down > up
    assert [(e.id, e.value) for e in feedback_events(log)] == [(down, False)]
    assert feedback_events(log, until_id=up) == []
    newest = log.feedback("c2", thumbs="up")["thumbs_label_id"]
    assert log.forget("bob")["labels"] == 1  # the newest label goes
    after = log.feedback("c1", rating=3)["rating_label_id"]
    assert after > newest
    assert [e.id for e in feedback_events(log, after_id=newest)] == [after]


def test_migration_0005_keeps_the_ids_of_a_store_made_before_it(tmp_path):
    import sqlite3

    from rlhfkit.feedback import db

    path = tmp_path / "old.db"
    engine = db.make_engine(db.default_db_url(path))
    db.upgrade(engine, "0004")
    engine.dispose()
    con = sqlite3.connect(path)
    con.executescript("""
        INSERT INTO users VALUES (1, 'u', 'x', 'labeler', 1, 0);
        INSERT INTO projects VALUES (1, 'p', 'thumbs', '', 1, 0, 1, 7, 1, 1, 3, 0);
        INSERT INTO items (id, project_id, prompt, responses, is_gold, n_assigned, source, created_at)
            VALUES (1, 1, 'a', '[{"text": "x"}]', 0, 1, 'import', 0), (2, 1, 'b', '[{"text": "y"}]', 0, 1, 'import', 0),
                   (3, 1, 'c', '[{"text": "z"}]', 0, 0, 'import', 0);
        INSERT INTO assignments VALUES (1, 1, 1, 1, '[0]', 'done', 0, 0), (2, 1, 2, 1, '[0]', 'done', 0, 0);
        INSERT INTO labels VALUES (5, 1, 1, 1, 1, '{"label": true}', 0, NULL, 0, 0),
                                  (9, 2, 1, 2, 1, '{"label": false}', 0, NULL, 0, 0);
    """)
    con.commit()
    con.close()
    db.Store(path).close()  # migrates to the head
    con = sqlite3.connect(path)
    assert con.execute("SELECT id, payload FROM labels ORDER BY id").fetchall() == [
        (5, '{"label": true}'),
        (9, '{"label": false}'),
    ]
    con.execute("DELETE FROM labels WHERE id = 9")
    con.execute("INSERT INTO assignments VALUES (3, 1, 3, 1, '[0]', 'done', 0, 0)")
    con.execute(
        "INSERT INTO labels (assignment_id, project_id, item_id, user_id, payload, is_gold, created_at) "
        "VALUES (3, 1, 3, 1, '{}', 0, 0)"
    )
    assert con.execute("SELECT max(id) FROM labels").fetchone()[0] == 10  # not 9 again
    con.close()


@pytest.mark.parametrize(
    "kwargs,status,param",
    [
        (dict(thumbs="up", choice=1), 422, "choice"),  # c1 has one reply
        (dict(rating=6), 422, "rating"),
        (dict(rating=True), 422, "rating"),
        (dict(thumbs="sideways"), 422, "thumbs"),
        (dict(), 422, "thumbs"),
        (dict(edit="Blue."), 422, "edit"),  # the reply unchanged
        (dict(edit="  "), 422, "edit"),
        (dict(edit="x" * 100_001), 422, "edit"),
        (dict(edit=5), 422, "edit"),
        (dict(thumbs="up", reason="x" * 10_001), 422, "reason"),
        (dict(thumbs="up", reason=["why"]), 422, "reason"),
        (dict(thumbs="up", reason="a", comment="b"), 422, "comment"),
        (dict(thumbs="up", choice_index=1), 422, "choice_index"),
        (dict(thumbs="up", choice_index=-1), 422, "choice_index"),
        (dict(thumbs="up", choice_index=True), 422, "choice_index"),
        (dict(thumbs="up", user=5), 422, "user"),
    ],
)
def test_bad_feedback_is_refused_with_its_field_and_nothing_is_stored(log, kwargs, status, param):
    log.log_completion("c1", ASK, "Blue.", "m")
    log.log_choices("c2", ASK, ["Red.", "Green."], "m", versions=["v", "v"], comparison=True)
    with pytest.raises(FeedbackError) as e:
        log.feedback("c1", **kwargs)
    assert (e.value.status, e.value.param) == (status, param)
    assert feedback_events(log) == []


def test_choices_need_two_replies_and_an_unknown_completion_is_404(log):
    log.log_choices("c3", ASK, ["a", "b", "c"], "m", versions=["v"] * 3)
    for value in (2, True, "1"):
        with pytest.raises(FeedbackError) as e:
            log.feedback("c3", choice=value)
        assert e.value.param == "choice"
    with pytest.raises(FeedbackError) as e:
        log.feedback("c3", choice=0)
    assert e.value.param == "choice" and "has 3" in str(e.value)
    assert log.feedback("c3", choice_index=2, thumbs="up")["thumbs_label_id"]
    with pytest.raises(FeedbackError) as e:
        log.feedback("chatcmpl-nope", thumbs="up")
    assert (e.value.status, e.value.param) == (404, "completion_id")


def test_a_ratings_project_that_exists_keeps_its_scale(tmp_path):
    db = str(tmp_path / "fb.db")
    FeedbackLog(db, scale=(1, 7)).close()  # made by an older server, 1-7
    log = FeedbackLog(db)  # the default is 1-5 now
    try:
        assert log.scale == (1, 7)
        log.log_completion("c1", ASK, "Blue.", "m")
        log.feedback("c1", rating=6)
        assert [(r.rating, r.scale_max) for r in log.export("ratings")] == [(6.0, 7.0)]
    finally:
        log.close()
    fresh = FeedbackLog(str(tmp_path / "new.db"))
    assert fresh.scale == (1, 5)
    fresh.close()


def test_a_reply_holding_what_no_store_keeps_is_stored_with_replacement_characters(log):
    """A model may draw a NUL or a lone surrogate (PostgreSQL text refuses the one, UTF-8 cannot
    hold the other): the served reply is stored with U+FFFD in their place, never refused after
    it was served."""
    ask = [{"role": "user", "content": "Say\x00 it"}]
    log.log_completion("c1", ask, "a\x00b\ud800c", "m", user="ann", version="v1")
    log.feedback("c1", thumbs="up", user="ann")
    (event,) = feedback_events(log.db_url)
    assert event.responses == ("a\ufffdb\ufffdc",) and event.value is True
