"""Tiny pipeline configurations for the pipeline tests: the --quick preset (a tiny Llama built
from config, a few steps per stage) on a synthetic prompt file, so they need no shared data."""

import json
import random

import pytest

WORDS = (
    "the film movie story actor plot scene was is a an and but very really quite good great happy "
    "wonderful love bad awful sad boring hate dull fine ok slow fast funny"
).split()


@pytest.fixture(scope="session")
def pipeline_data(tmp_path_factory):
    rng = random.Random(0)
    d = tmp_path_factory.mktemp("pipeline_data")
    prompts = d / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": " ".join(rng.choice(WORDS) for _ in range(6))}) + "\n" for _ in range(200)),
        encoding="utf-8",
    )
    demos = d / "demos.jsonl"
    demos.write_text(
        "".join(
            json.dumps(
                {"prompt": " ".join(rng.choice(WORDS) for _ in range(5)), "completion": " it was good and happy ."}
            )
            + "\n"
            for _ in range(40)
        ),
        encoding="utf-8",
    )
    return {"prompts": prompts, "demos": demos}


def tiny_config(out, data, **overrides):
    """The --quick preset on the synthetic prompts, one torch thread, plus dotted overrides."""
    from rlhfkit.pipeline import PipelineConfig
    from rlhfkit.training.config import load_config

    base = {
        "quick": True,
        "threads": 1,
        "output_dir": str(out),
        "feedback.prompts": str(data["prompts"]),
        "sft.data": str(data["demos"]),
        "reward.tensorboard": False,
        "grpo.tensorboard": False,
        "sft.tensorboard": False,
        "dpo.tensorboard": False,
        "eval.n_boot": 50,
    }
    base.update(overrides)
    return load_config(PipelineConfig, None, base)
