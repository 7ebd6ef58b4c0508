"""A user forgotten in the store (``feedback forget``) contributes nothing to any later round."""

import json

from rlhfkit.feedback.enduser import FeedbackLog
from rlhfkit.learn.inputs import ids_of_ranges
from rlhfkit.learn.run import run
from rlhfkit.models import versions

from .conftest import PROMPTS, fill, tiny_config

SECRET = [f"Mallory's private question {i} about her health?" for i in range(6)]


def test_a_forgotten_user_is_gone_from_every_later_round(tmp_path, tiny_base):
    """Round 1 trains on alice, bob and mallory (with prompts only mallory sent). Mallory is then
    forgotten in the store and alice and bob send more. Round 2 sees that verdicts it trained on
    are gone: it rebuilds -- its reward model starts from the backbone, not round 1's (which
    learned from mallory), its adapter is trained on v0, not on v1 -- on every verdict still
    stored; nothing of mallory is in its inputs, lineage or held-out prompts, and her verdicts and
    prompts are taken out of round 1's saved inputs too."""
    db, learn = tmp_path / "fb.db", tmp_path / "learn"
    ids = fill(str(db), {"alice": "honest", "bob": "honest"})
    mallory = fill(str(db), {"mallory": "honest"}, prompts=SECRET, start=100)["mallory"]
    config = tiny_config(learn, db, tiny_base)
    [first] = run(config)
    assert first["outcome"] == "promoted"
    r1 = json.loads((learn / "rounds" / "round-1" / "inputs" / "inputs.json").read_text())
    assert any(e["end_user"] == "mallory" for e in r1["train"])  # round 1 did learn from her
    assert "mallory" in versions.version_info(learn, "v1")["feedback"]["per_user"]

    log = FeedbackLog(str(db))
    gone = log.forget("mallory")
    log.close()
    assert gone["labels"] == len(mallory)
    more = fill(str(db), {"alice": "honest", "bob": "honest"}, prompts=PROMPTS[12:18], start=12)
    [second] = run(config)

    r2 = json.loads((learn / "rounds" / "round-2" / "inputs" / "inputs.json").read_text())
    assert r2["rebuild"] and r2["forgotten"] == len(ids_of_ranges(first["trained_ids"]) & set(mallory))
    assert r2["previous_reward_model"] is None and r2["adapter_on"] == "v0"
    reward_stage = json.loads((learn / "rounds" / "round-2" / "reward" / "stage.json").read_text())
    assert reward_stage["outputs"]["start"] == str(tiny_base)
    assert not any(e["end_user"] == "mallory" for e in r2["train"])
    assert not set(SECRET) & set(r2["train_prompts"] + r2["holdout_prompts"])
    # every verdict still stored that is not held out trains round 2: the old ones too
    old = {i for v in ids.values() for i in v} | {i for v in more.values() for i in v}
    assert {e["id"] for e in r2["train"]} <= old and ids_of_ranges(first["trained_ids"]) - set(mallory) <= {
        e["id"] for e in r2["train"]
    }
    if second["outcome"] == "promoted":
        info = versions.version_info(learn, second["version"])
        assert "mallory" not in info["feedback"]["per_user"] and info["adapter_on"] == "v0"
    r1_after = json.loads((learn / "rounds" / "round-1" / "inputs" / "inputs.json").read_text())
    assert not any(e["end_user"] == "mallory" for e in r1_after["train"])
    assert not set(SECRET) & set(r1_after["train_prompts"] + r1_after["holdout_prompts"])
    assert "Mallory" not in (learn / "rounds" / "round-1" / "inputs" / "inputs.json").read_text()
    assert "mallory" not in (learn / "rounds" / "round-1" / "inputs" / "inputs.json").read_text()  # nor who sent what
    assert "mallory" not in json.dumps(r2["prompt_senders"])
    state = json.loads((learn / "learn_state.json").read_text())
    assert not ids_of_ranges(state["trained"]) & set(mallory)
    # nor in any record the learner keeps: round 1's defence (her weight, her kept verdicts, the
    # cross-fitted scores of her verdicts) and v1's lineage
    d1 = json.loads((learn / "rounds" / "round-1" / "defence" / "defence.json").read_text())
    assert "mallory" not in d1["per_user"] and not set(d1["kept_ids"]) & set(mallory)
    for scores in (learn / "rounds" / "round-1" / "defence").glob("crossfit-*/scores.json"):
        assert not {int(k) for k in json.loads(scores.read_text())} & set(mallory)
    assert "mallory" not in versions.version_info(learn, "v1")["feedback"]["per_user"]
    texts = [p for p in learn.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl", ".txt", ".yaml", ".html")]
    assert texts and not [str(p) for p in texts if "mallory" in p.read_text(encoding="utf-8", errors="replace").lower()]


HANA = [f"Hana asks privately about thing {i}?" for i in (0, 2, 6)]  # all held out under the tests' key


def test_a_forgotten_user_who_trained_nothing_leaves_no_trace_either(tmp_path, tiny_base):
    """Hana's verdicts were all on held-out prompts: no round trained on them, so her erasure
    forces no rebuild -- yet round 1's saved inputs name her as the sender of her prompts. After
    `forget`, round 2 (no rebuild: it starts from v1) takes her and her prompts out of them: her
    id and her words are in no file the learner keeps."""
    from rlhfkit.learn.inputs import held_out

    from .conftest import TEST_KEY

    assert all(held_out(p, 0.25, TEST_KEY) for p in HANA)
    db, learn = tmp_path / "fb.db", tmp_path / "learn"
    fill(str(db), {"alice": "honest", "bob": "honest"})
    fill(str(db), {"hana": "honest"}, prompts=HANA, start=200)
    config = tiny_config(learn, db, tiny_base)
    [first] = run(config)
    r1 = learn / "rounds" / "round-1" / "inputs" / "inputs.json"
    assert "hana" in r1.read_text() and "Hana" in r1.read_text()
    log = FeedbackLog(str(db))
    log.forget("hana")
    log.close()
    fill(str(db), {"alice": "honest", "bob": "honest"}, prompts=PROMPTS[12:18], start=12)
    [second] = run(config)
    r2 = json.loads((learn / "rounds" / "round-2" / "inputs" / "inputs.json").read_text())
    assert not r2["rebuild"] and r2["forgotten"] == 0 and r2["adapter_on"] == first["version"] == "v1"
    texts = [p for p in learn.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl", ".txt", ".yaml", ".html")]
    assert not [str(p) for p in texts if "hana" in p.read_text(encoding="utf-8", errors="replace").lower()]


def test_a_changed_mind_is_no_erasure(tmp_path, tiny_base):
    """Alice turns a thumbs-up round 1 trained on into a thumbs-down: the store deletes the old
    verdict and gives the new one a new id, as a `forget` would delete it. Round 2 tells the two
    apart (the same reply, user and kind is there under a new id): no rebuild, it starts from v1
    and round 1's reward model, and trains on the new verdict; round 1's record of the old one
    stays (it is what round 1 trained on)."""
    db, learn = tmp_path / "fb.db", tmp_path / "learn"
    ids = fill(str(db), {"alice": "honest", "bob": "honest"})
    config = tiny_config(learn, db, tiny_base)
    [first] = run(config)
    trained = ids_of_ranges(first["trained_ids"])
    old = ids["alice"][0]  # her thumbs on the good reply to PROMPTS[0] (not held out)
    assert old in trained
    log = FeedbackLog(str(db))
    new = log.feedback("alice-g-0-0", thumbs=False, user="alice")["thumbs_label_id"]
    log.close()
    fill(str(db), {"alice": "honest", "bob": "honest"}, prompts=PROMPTS[12:18], start=12)
    [second] = run(config)
    r2 = json.loads((learn / "rounds" / "round-2" / "inputs" / "inputs.json").read_text())
    assert (r2["rebuild"], r2["forgotten"], r2["replaced"]) == (False, 0, 1)
    assert r2["adapter_on"] == "v1" and r2["previous_reward_model"] == "rounds/round-1/reward/model"
    assert new > old and new in {e["id"] for e in r2["train"]} and old not in {e["id"] for e in r2["train"]}
    r1 = json.loads((learn / "rounds" / "round-1" / "inputs" / "inputs.json").read_text())
    assert old in {e["id"] for e in r1["train"]}
