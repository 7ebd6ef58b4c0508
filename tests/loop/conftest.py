"""Tiny loop configurations: the --quick sizes (a tiny Llama built from config) on a synthetic
prompt file, one torch thread, short rounds, so the loop tests need no shared data."""

import json
import random

import pytest

WORDS = (
    "the film movie story actor plot scene was is a an and but very really quite good great happy "
    "wonderful love bad awful sad boring hate dull fine ok slow fast funny"
).split()


@pytest.fixture(scope="session")
def loop_prompts(tmp_path_factory):
    rng = random.Random(0)
    d = tmp_path_factory.mktemp("loop_data")
    path = d / "prompts.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": " ".join(rng.choice(WORDS) for _ in range(6))}) + "\n" for _ in range(120)),
        encoding="utf-8",
    )
    return path


def tiny_loop_config(out, prompts, **overrides):
    from rlhfkit.loop.config import QUICK, LoopConfig
    from rlhfkit.training.config import load_config

    base = {
        **QUICK,
        "threads": 1,
        "output_dir": str(out),
        "prompts": str(prompts),
        "rounds": 2,
        "n_eval_prompts": 8,
        "max_train_prompts": 64,
        "prompts_per_round": 12,
        "labels_per_round": 8,
        "eval_samples": 1,
        "max_new_tokens": 8,
        "ensemble_size": 2,
        "init.hidden_size": 32,
        "init.num_heads": 2,
        "init.vocab_size": 300,
        "reward.epochs": 1.0,
        "reward.batch_size": 8,
        "reward.micro_batch_size": 8,
        "grpo.max_steps": 2,
        "grpo.batch_size": 8,
        "grpo.micro_batch_size": 8,
        "grpo.max_new_tokens": 8,
    }
    base.update(overrides)
    return load_config(LoopConfig, None, base)
