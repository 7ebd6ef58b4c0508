"""``rlhfkit serve`` following a learner's folder answers from the version the learner promotes,
with feedback given through the server's own API (a real server process on loopback)."""

import time

import pytest

from rlhfkit.learn.run import run
from rlhfkit.models import versions

from ..loopback import launch_serve, stop_serve
from .conftest import PROMPTS, tiny_config

pytest.importorskip("fastapi")


def test_serve_answers_from_the_promoted_version_after_a_round(tmp_path, tiny_base):
    """Two users chat with ``rlhfkit serve --model LEARN_DIR`` (v0) and give thumbs through
    /v1/feedback; ``learn run --once`` reads that feedback from the store serve writes, promotes
    v1, and the running server swaps to it: /health names v1, and a new reply names v1 in the
    response and in the store."""
    import httpx

    from rlhfkit.feedback.enduser import feedback_events

    learn, db = tmp_path / "learn", tmp_path / "fb.db"
    versions.init_learn_dir(learn, str(tiny_base))
    flags = ("--db", str(db), "--max_new_tokens", "6", "--reload_every", "0.2", "--log_level", "warning")
    proc, base = launch_serve(learn, *flags)
    try:
        with httpx.Client(base_url=base, timeout=60) as http:
            assert http.get("/health").json()["version"] == "v0"
            for k, prompt in enumerate(PROMPTS[:12]):
                for user in ("ann", "ben"):
                    r = http.post(
                        "/v1/chat/completions",
                        json={"messages": [{"role": "user", "content": prompt}], "user": user, "seed": k},
                    )
                    assert r.status_code == 200 and r.json()["rlhfkit"]["version"] == "v0"
                    f = http.post(
                        "/v1/feedback",
                        json={"completion_id": r.json()["id"], "thumbs": "up" if k % 2 else "down", "user": user},
                    )
                    assert f.status_code == 200, f.text

            config = tiny_config(
                learn,
                db,
                tiny_base,
                **{"gate.min_win_rate": 0.0, "gate.max_runaway_increase": 1.0, "gate.max_toxicity_increase": 1.0},
            )
            [outcome] = run(config)
            assert outcome["outcome"] == "promoted" and versions.current_version(learn) == "v1"
            info = versions.version_info(learn, "v1")
            assert set(info["feedback"]["per_user"]) == {"ann", "ben"}

            end = time.monotonic() + 60
            while http.get("/health").json()["version"] != "v1":
                assert time.monotonic() < end, "the server did not swap to v1"
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.1)
            r = http.post(
                "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hello again"}], "user": "ann"}
            )
            assert r.status_code == 200 and r.json()["rlhfkit"]["version"] == "v1"
            assert (
                http.post(
                    "/v1/feedback", json={"completion_id": r.json()["id"], "thumbs": "up", "user": "ann"}
                ).status_code
                == 200
            )
        last = feedback_events(str(db))[-1]
        assert (last.completion_id, last.versions) == (r.json()["id"], ("v1",))
    finally:
        stop_serve(proc)
