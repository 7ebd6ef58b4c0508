"""Live generation for the feedback app (``serve/live.py``): a policy folder, or the current
policy of an ``rlhfkit loop`` followed round after round; items generated through the admin API;
``feedback serve --policy`` refuses a bad one with the field's name."""

import json
import shutil

import pytest

from rlhfkit.feedback.live import NoPolicyYet, PolicyGenerator, current_policy

pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def second_model_dir(tmp_path_factory, tiny_chat_dir):
    """The tiny chat model's tokenizer with other weights (a later policy)."""
    from transformers import AutoTokenizer

    from rlhfkit.models import tiny_causal_lm

    tok = AutoTokenizer.from_pretrained(tiny_chat_dir)
    out = tmp_path_factory.mktemp("later_policy")
    tiny_causal_lm(tok, hidden_size=32, num_layers=2, num_heads=2, seed=5).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_a_policy_folder_answers_n_times_per_prompt_seeded_per_call(tiny_chat_dir):
    gen = PolicyGenerator(str(tiny_chat_dir), max_new_tokens=6)
    out = gen(["the film was", "a story"], 3)
    assert [len(r) for r in out] == [3, 3]
    assert all(isinstance(r["text"], str) and r["model"] == str(tiny_chat_dir) for rows in out for r in rows)
    again = PolicyGenerator(str(tiny_chat_dir), max_new_tokens=6)
    assert again(["the film was", "a story"], 3) == out  # same seed, same first call
    second = gen(["the film was", "a story"], 3)
    assert [r["text"] for rows in second for r in rows] != [r["text"] for rows in out for r in rows]


def test_a_loop_folder_is_followed_to_its_newest_policy(tmp_path, tiny_chat_dir, second_model_dir):
    loop = tmp_path / "loop"
    (loop / "setup").mkdir(parents=True)
    _state(loop, 0)
    with pytest.raises(NoPolicyYet, match="no policy yet"):
        current_policy(str(loop))
    waiting = PolicyGenerator(str(loop), max_new_tokens=6)  # a loop in its setup: served, loads later
    with pytest.raises(LookupError):
        waiting(["the film was"], 2)
    assert current_policy(str(tiny_chat_dir)) == str(tiny_chat_dir)  # not a loop: the model itself
    shutil.copytree(tiny_chat_dir, loop / "setup" / "model")
    _state(loop, 0)
    gen = PolicyGenerator(str(loop), max_new_tokens=6)
    assert gen.loaded == str(loop / "setup" / "model")
    first = gen(["the film was"], 2)
    assert {r["model"] for r in first[0]} == {str(loop / "setup" / "model")}
    # round 1 finishes: the next call is answered by its policy, as a generator of it alone would
    shutil.copytree(second_model_dir, loop / "round-1" / "policy" / "model")
    _state(loop, 1)
    gen.calls = 0  # the same seed as a fresh generator's first call
    moved = gen(["the film was"], 2)
    assert gen.loaded == str(loop / "round-1" / "policy" / "model")
    assert {r["model"] for r in moved[0]} == {gen.loaded}
    assert [r["text"] for r in moved[0]] == [
        r["text"] for r in PolicyGenerator(str(second_model_dir), max_new_tokens=6)(["the film was"], 2)[0]
    ]


def _state(loop, rounds_done):
    (loop / "loop_state.json").write_text(json.dumps({"rounds_done": rounds_done, "policy": None}))


def test_items_generated_through_the_admin_api(tmp_path, tiny_chat_dir):
    from fastapi.testclient import TestClient

    from rlhfkit.feedback import db
    from rlhfkit.feedback.app import create_app
    from rlhfkit.feedback.auth import create_user
    from sqlalchemy import select

    app = create_app(str(tmp_path / "fb.db"), generator=PolicyGenerator(str(tiny_chat_dir), max_new_tokens=6))
    app.state.store.write(lambda c: create_user(c, "admin", "a-long-admin-password", "admin"))
    with TestClient(app) as client:
        r = client.post("/api/auth/login", json={"username": "admin", "password": "a-long-admin-password"})
        headers = {"Authorization": f"Bearer {r.json()['token']}"}
        pid = client.post(
            "/api/admin/projects", json={"name": "live", "task_type": "pairwise"}, headers=headers
        ).json()["id"]
        r = client.post(
            f"/api/admin/projects/{pid}/generate", json={"prompts": ["the film was", "a story"]}, headers=headers
        )
        assert r.status_code == 200, r.text
        assert r.json()["imported"] == 2
    with app.state.store.read() as c:
        rows = c.execute(select(db.items.c.prompt, db.items.c.source)).all()
    assert sorted(rows) == [("a story", "generated"), ("the film was", "generated")]
    app.state.store.close()


def test_a_loop_still_in_its_setup_answers_503(tmp_path):
    from fastapi.testclient import TestClient

    from rlhfkit.feedback.app import create_app
    from rlhfkit.feedback.auth import create_user

    loop = tmp_path / "loop"
    loop.mkdir()
    _state(loop, 0)
    app = create_app(str(tmp_path / "fb.db"), generator=PolicyGenerator(str(loop)))
    app.state.store.write(lambda c: create_user(c, "admin", "a-long-admin-password", "admin"))
    with TestClient(app) as client:
        token = client.post("/api/auth/login", json={"username": "admin", "password": "a-long-admin-password"})
        headers = {"Authorization": f"Bearer {token.json()['token']}"}
        pid = client.post(
            "/api/admin/projects", json={"name": "live", "task_type": "pairwise"}, headers=headers
        ).json()["id"]
        r = client.post(f"/api/admin/projects/{pid}/generate", json={"prompts": ["x"]}, headers=headers)
        assert r.status_code == 503 and "no policy yet" in r.json()["detail"]
    app.state.store.close()


def test_feedback_serve_refuses_a_policy_that_does_not_load(tmp_path, capsys):
    from rlhfkit.cli import main

    assert main(["feedback", "serve", "--db", str(tmp_path / "fb.db"), "--policy", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr()
    assert "policy" in (err.err + err.out) and "Traceback" not in err.err
    assert main(["feedback", "serve", "--db", str(tmp_path / "fb.db"), "--policy", "x", "--workers", "2"]) == 2


def _stage(folder, status, model_from=None):
    """A loop stage folder: ``stage.json`` saying ``status``; with ``model_from`` a copy of that
    model in ``model/``, else only its config.json (a model being written)."""
    (folder / "model").mkdir(parents=True)
    if model_from is not None:
        shutil.rmtree(folder / "model")
        shutil.copytree(model_from, folder / "model")
    else:
        (folder / "model" / "config.json").write_text("{}")
    (folder / "stage.json").write_text(json.dumps({"status": status, "outputs": {"model": str(folder / "model")}}))


def test_a_loop_policy_is_the_newest_finished_round_whatever_loop_state_counts(tmp_path, tiny_chat_dir, capsys):
    """A resumed loop with other settings redoes its rounds while loop_state.json still counts the
    earlier run's: the newest round whose policy stage is done is served, never a policy being
    written (its stage.json says running) nor, when the newest round is gone, the initial policy
    as if no round had finished; serve's start-up line says so."""
    from rlhfkit.models.policy_line import resolve

    loop = tmp_path / "loop"
    _stage(loop / "setup", "done", tiny_chat_dir)
    _stage(loop / "round-1" / "policy", "done", tiny_chat_dir)
    _stage(loop / "round-2" / "policy", "running")  # being rewritten: only its config.json so far
    _state(loop, 2)
    assert current_policy(str(loop)) == str(loop / "round-1" / "policy" / "model")
    line = resolve(str(loop))
    assert (line.path, line.version) == (str(loop / "round-1" / "policy" / "model"), "round-1")
    assert "round 1's policy: round 2's, the newest finished, is not there whole" in line.describe()
    shutil.rmtree(loop / "round-2")  # gone
    assert current_policy(str(loop)) == str(loop / "round-1" / "policy" / "model")
    _stage_done = json.loads((loop / "round-1" / "policy" / "stage.json").read_text())
    (loop / "round-1" / "policy" / "stage.json").write_text(json.dumps({**_stage_done, "status": "running"}))
    assert current_policy(str(loop)) == str(loop / "setup" / "model")
    assert "its initial policy: round 2's, the newest finished, is not there whole" in resolve(str(loop)).describe()
    (loop / "setup" / "stage.json").write_text(json.dumps({"status": "running"}))  # the setup redone too
    with pytest.raises(NoPolicyYet, match="no policy yet"):
        current_policy(str(loop))


def test_a_learner_folder_is_followed_to_its_promoted_version(tmp_path, learner_dir):
    """``feedback serve --policy LEARN_DIR``: items are answered by the promoted version (an
    adapter merged into its base), and by the next one once it is promoted."""
    from rlhfkit.models.versions import promote

    learn = tmp_path / "learn"
    shutil.copytree(learner_dir, learn)
    gen = PolicyGenerator(str(learn), max_new_tokens=6, temperature=0.0)
    assert gen.version.version == "v0"
    before = gen(["the film was"], 1)
    promote(learn, "v1")
    after = gen(["the film was"], 1)
    assert gen.version.version == "v1" and gen.loaded == str(learn / "versions" / "v1")
    assert after[0][0]["model"] == gen.loaded and after[0][0]["text"] != before[0][0]["text"]
