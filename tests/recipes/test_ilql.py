"""ILQL end to end on a tiny model: rewarded pairs in which the chosen response says 'happy' and
the rejected one 'sad' (``pair_file``); Q / V heads on the frozen random model; decoding with
``beta > 0`` must say 'happy' far more often than the model alone, and ``beta = 0`` must decode
as the model does. The losses themselves are checked by hand in tests/core/test_value_learning.py."""

import json
import random

import pytest
import torch

from rlhfkit.recipes.ilql import ILQLConfig, ilql_generate, load_heads, run
from rlhfkit.training.config import ConfigError

from .conftest import sentence


def happy_minus_sad(prompts, responses):
    """The held-out reward: 'happy' counts +1, 'sad' -1."""
    return torch.tensor([float(r.count("happy") - r.count("sad")) for r in responses])


def test_ilql_learns_which_token_the_reward_wants(tmp_path, pair_file, tiny_policy_dir):
    from rlhfkit.models import load_policy

    cfg = ILQLConfig(
        data=str(pair_file),
        model=str(tiny_policy_dir),
        output_dir=str(tmp_path / "ilql"),
        epochs=4,
        learning_rate=1e-3,
        beta=8.0,
        eval_reward="fn:tests.recipes.test_ilql:happy_minus_sad",
        eval_prompts=32,
        max_new_tokens=8,
        eval_fraction=0.1,
        threads=1,
    )
    metrics = run(cfg)
    saved = json.loads((tmp_path / "ilql" / "ilql.json").read_text())
    assert saved["metrics"] == metrics and metrics["steps"] == 72  # 288 training responses / 16 a step x 4 epochs
    lines = (tmp_path / "ilql" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 72 and json.loads(lines[-1])["loss"] < json.loads(lines[0])["loss"]
    # the held-out reward rises with the advantage in the logits (the model alone rarely says happy)
    assert metrics["eval_reward_beta"] > metrics["eval_reward_beta0"] + 0.2

    model, tok = load_policy(str(tiny_policy_dir))
    heads = load_heads(str(tmp_path / "ilql"))
    prompts = [sentence(random.Random(100 + i), 4) for i in range(100)]

    def happy(beta):
        return sum(
            ilql_generate(model, heads, tok, p, beta, 8, 1.0, seed=i).count("happy") for i, p in enumerate(prompts)
        )

    base, steered = happy(0.0), happy(8.0)
    assert steered >= 3 * max(base, 1), (base, steered)
    # beta 0 is the model itself: greedy decoding is what generate makes
    for p in prompts[:5]:
        ids = tok(p, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=8,
                do_sample=False,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        body = [t for t in out[0, ids.shape[1] :].tolist() if t not in (tok.eos_token_id, tok.pad_token_id)]
        assert ilql_generate(model, heads, tok, p, 0.0, 8, temperature=0) == tok.decode(body, skip_special_tokens=True)
    # the two Q heads started apart and stayed apart (min over equal heads would do nothing)
    assert not torch.equal(heads.q[0].weight, heads.q[1].weight)

    # a finished run started again with the same settings is kept; other settings are refused
    assert run(cfg) == metrics
    cfg.tau = 0.9
    with pytest.raises(ConfigError, match="tau: 0.7 -> 0.9"):
        run(cfg)
