"""``--method kto | dpo``: the policy trained straight from the feedback, without the defence's
weight-0 users."""

import json

import pytest

from rlhfkit.learn.inputs import held_out
from rlhfkit.learn.run import run
from rlhfkit.models import versions

from .conftest import TEST_KEY, PROMPTS, fill, tiny_config


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    db = tmp_path_factory.mktemp("methods") / "fb.db"
    fill(str(db), {"alice": "honest", "bob": "honest", "eve": "inverted"})
    return db


@pytest.mark.parametrize("method, per_prompt", [("kto", 4), ("dpo", 1)])
def test_a_direct_method_trains_on_the_trusted_users_feedback(store, tmp_path, tiny_base, method, per_prompt):
    """KTO trains on each trusted user's two thumbs and their choice split in two (4 examples a
    prompt), DPO on their choice (1 a prompt); the inverted user (weight 0) gives none. The
    round promotes v1, an adapter that changes the policy, with the method in its lineage."""
    learn = tmp_path / "learn"
    [outcome] = run(
        tiny_config(learn, store, tiny_base, method=method, **{"policy.max_steps": 3, "policy.learning_rate": 1e-2})
    )
    stage = json.loads((learn / "rounds" / "round-1" / "policy" / "stage.json").read_text())
    usable = sum(not held_out(p, 0.25, TEST_KEY) for p in PROMPTS[:12])
    assert stage["outputs"]["method"] == method and stage["outputs"]["examples"] == 2 * usable * per_prompt
    assert outcome["outcome"] == "promoted"
    info = versions.version_info(learn, "v1")
    assert info["method"] == method and info["feedback"]["per_user"]["eve"]["weight"] == 0.0
    from safetensors.torch import load_file

    weights = load_file(str(learn / "versions" / "v1" / "adapter" / "adapter_model.safetensors"))
    assert any(float(t.abs().max()) > 0 for k, t in weights.items() if "lora_B" in k)  # B starts at 0
