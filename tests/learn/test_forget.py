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
