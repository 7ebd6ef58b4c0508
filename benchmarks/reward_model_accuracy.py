"""Reward-model accuracy on real human preferences, with training time and peak memory.

    .venv/bin/python benchmarks/reward_model_accuracy.py --config configs/reward_hh_minilm.yaml [--field value ...]

Trains with `rlhfkit reward train` (in this process), evaluates the held-out split with
`rlhfkit reward eval`'s metrics, and prints one JSON line and one markdown table row for
docs/BENCHMARKS.md. Peak memory is this process's maximum resident set size.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time

import torch

from rlhfkit.rewards.metrics import evaluate_pairs
from rlhfkit.models import load_reward_model
from rlhfkit.data.loading import load_training_records
from rlhfkit.data.splits import first_n, split_holdout
from rlhfkit.recipes.reward import RewardConfig, run, split_seed
from rlhfkit.training.config import load_config


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    args, rest = parser.parse_known_args(argv)
    config = load_config(RewardConfig, args.config, rest)
    start = time.perf_counter()
    run(config)
    train_seconds = time.perf_counter() - start
    # re-evaluate the saved model on exactly the held-out split the recipe used
    pairs = load_training_records(config.data, "pairs", ties=config.ties)
    _, held = split_holdout(pairs, config.eval_fraction, split_seed(config))
    model, tokenizer = load_reward_model(f"{config.output_dir}/model")
    report = evaluate_pairs(model, tokenizer, held, config.max_length, 32)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    train_part = len(pairs) - len(held)
    n_val = int(round(train_part * config.validation_fraction))  # as split_holdout counts
    result = {
        "data": config.data,
        "model": config.model,
        "train_pairs": len(first_n(range(train_part - n_val), config.max_train)),  # as the recipe cuts
        "validation_pairs": n_val,
        "held_out_pairs": len(held),
        "epochs": config.epochs,
        "max_length": config.max_length,
        "best_metric": config.best_metric,
        "learning_rate": config.learning_rate,
        "seed": config.seed,
        "train_seconds": round(train_seconds, 1),
        "peak_rss_mb": round(peak_mb),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in report["overall"].items()},
    }
    print(json.dumps(result))
    print(
        f"| {config.data} | {config.model} | {result['train_pairs']} / {n_val} / {result['held_out_pairs']} | "
        f"{result['accuracy']:.3f} | {result['f1']:.3f} | {result['ece']:.3f} | "
        f"{train_seconds / 60:.1f} min | {result['peak_rss_mb']} MB |"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
