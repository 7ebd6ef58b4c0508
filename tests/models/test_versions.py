"""A learner's folder of versions (``models/versions.py``) and the policy line over it
(``models/policy_line.py``): v0 the base model, later versions LoRA adapters merged in order or
full models, ``current.json`` replaced atomically, broken versions refused with their folder."""

import json
from pathlib import Path

import pytest
import torch

from rlhfkit.models import apply_lora, tiny_causal_lm, tiny_tokenizer
from rlhfkit.models import policy_line, versions
from rlhfkit.models.versions import VersionError


def tiny_model_dir(root: Path, seed: int = 0) -> Path:
    tok = tiny_tokenizer()
    out = root / f"base-{seed}"
    tiny_causal_lm(tok, hidden_size=32, num_layers=2, num_heads=2, seed=seed).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def lora_on(base, seed: int, scale: float = 0.5):
    """A LoRA adapter on ``base`` (a model folder, or a model) with every A and B drawn from
    ``seed`` (B is zero when fresh: the merged model must answer differently)."""
    from rlhfkit.models import load_policy

    model = load_policy(str(base))[0] if isinstance(base, (str, Path)) else base
    peft_model = apply_lora(model, r=4, alpha=8)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return peft_model


def make_learner(root: Path, base_dir: Path) -> Path:
    """``LEARN/`` with v0 (the base) and v1 (an adapter on it), v0 promoted."""
    learn = root / "learn"
    versions.init_learn_dir(learn, str(base_dir))
    versions.save_version(learn, "v1", parent="v0", adapter=lora_on(base_dir, seed=1), info={"note": "round 1"})
    return learn


def greedy(model, tok, text="Hello there, how are you?", n=8) -> list[int]:
    ids = tok(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
    return out[0, ids.shape[1] :].tolist()


def test_versions_load_as_merged_plain_models_and_promote_atomically(tmp_path):
    base = tiny_model_dir(tmp_path)
    learn = make_learner(tmp_path, base)
    assert versions.is_learn_dir(learn) and not versions.is_learn_dir(base)
    assert versions.current_version(learn) == "v0"
    assert [(v["version"], v["parent"], v["current"]) for v in versions.list_versions(learn)] == [
        ("v0", None, True),
        ("v1", "v0", False),
    ]
    assert versions.version_info(learn, "v1")["base"] == str(base)  # lineage: taken from the parent
    assert versions.version_info(learn, "v1")["adapter_on"] == "v0" and versions.version_info(learn, "v1")["note"]

    v0, tok = versions.load_version(learn, "v0")
    v1, _ = versions.load_version(learn, "v1")
    # merged: a plain LlamaForCausalLM (the native sampler runs it), answering as the adapter does
    from rlhfkit.rollout.native import supports

    assert supports(v1) == (True, "")
    unmerged = lora_on(base, seed=1)
    ids = tok("Hello there", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(v1(ids).logits, unmerged(ids).logits, atol=1e-5, rtol=1e-5)
    assert greedy(v1, tok) != greedy(v0, tok)

    # a chain: v2's adapter is trained on v1's weights
    versions.save_version(learn, "v2", parent="v1", adapter=lora_on(base, seed=2, scale=0.1))
    v2, _ = versions.load_version(learn, "v2")
    chained = lora_on(versions.load_version(learn, "v1")[0], seed=2, scale=0.1)
    with torch.no_grad():
        torch.testing.assert_close(v2(ids).logits, chained(ids).logits, atol=1e-5, rtol=1e-5)

    record = versions.promote(learn, "v1")
    assert record["version"] == "v1" and record["previous"] == "v0"
    assert json.loads((learn / "current.json").read_text())["version"] == "v1"
    # no temporary file left; the lock file stays (removing it would race with a waiting locker)
    assert [p.name for p in learn.iterdir() if p.name.startswith(".")] == [".current.lock"]
    with pytest.raises(versions.CurrentMoved, match="names v1, not v0"):  # a round trained on v0
        versions.promote(learn, "v2", expect_current="v0")
    assert versions.current_version(learn) == "v1"
    versions.promote(learn, learn / "versions" / "v2")  # the folder works as well as the name
    assert versions.current_version(learn) == "v2"

    line = policy_line.resolve(str(learn))
    assert (line.kind, line.version, line.path) == ("learner", "v2", str(learn / "versions" / "v2"))
    token = policy_line.change_token(str(learn))
    versions.promote(learn, "v1")
    assert policy_line.change_token(str(learn)) != token and policy_line.resolve(str(learn)).version == "v1"
    assert policy_line.change_token(str(base)) is None and policy_line.resolve(str(base)).kind == "model"


def test_a_full_model_version_and_the_refusals(tmp_path):
    base = tiny_model_dir(tmp_path)
    learn = make_learner(tmp_path, base)
    other = tiny_model_dir(tmp_path, seed=7)
    versions.save_version(learn, "v2", parent="v1", model=str(other))
    m, tok = versions.load_version(learn, "v2")
    from rlhfkit.models import load_policy

    expected, _ = load_policy(str(other))
    assert greedy(m, tok) == greedy(expected, tok)

    with pytest.raises(VersionError, match="exists already"):
        versions.save_version(learn, "v1", parent="v0", model=str(other))
    with pytest.raises(VersionError, match="not a version name"):
        versions.save_version(learn, "../escape", parent="v0", model=str(other))
    with pytest.raises(VersionError, match="one of them"):
        versions.save_version(learn, "v3", parent="v1")
    with pytest.raises(VersionError, match="no such file"):
        versions.promote(learn, "v9")
    assert versions.current_version(learn) == "v0"  # a refused promotion changes nothing

    # a damaged adapter: refused naming its folder, when loaded (the server keeps the old version)
    broken = learn / "versions" / "v1" / "adapter"
    for f in broken.glob("adapter_model*"):
        f.write_bytes(b"not weights")
    with pytest.raises(VersionError, match=str(broken)):
        versions.load_version(learn, "v1")
    (learn / "current.json").write_text("{not json")
    with pytest.raises(VersionError, match="current.json"):
        policy_line.resolve(str(learn))
    (learn / "current.json").write_text(json.dumps({"version": "../v0"}))
    with pytest.raises(VersionError, match="field 'version'"):
        versions.current_version(learn)
