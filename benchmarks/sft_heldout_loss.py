"""SFT on real demonstrations: held-out loss before and after, wall time and peak memory.

    .venv/bin/python benchmarks/sft_heldout_loss.py --config configs/sft_smollm2_oasst.yaml [--field value ...]

Runs `rlhfkit sft` in this process (it measures the held-out token loss of the untouched
model first, then trains) and prints one JSON line and one markdown row for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch

from rlhfkit.recipes.sft import SFTConfig, run
from rlhfkit.training.config import load_config


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    args, rest = parser.parse_known_args(argv)
    config = load_config(SFTConfig, args.config, rest)
    start = time.perf_counter()
    metrics = run(config)
    seconds = time.perf_counter() - start
    result = {
        "data": config.data,
        "model": config.model,
        "steps": config.max_steps,
        "batch_size": config.batch_size,
        "max_length": config.max_length,
        "learning_rate": config.learning_rate,
        "held_out_loss_before": round(metrics["eval_loss_before"], 4),
        "held_out_loss_after": round(metrics["eval_loss"], 4),
        "held_out_tokens": metrics.get("eval_tokens"),
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result))
    print(
        f"| {config.data} | {config.model} | {config.max_steps} x {config.batch_size} | "
        f"{result['held_out_loss_before']:.3f} -> {result['held_out_loss_after']:.3f} | "
        f"{seconds / 60:.1f} min | {result['peak_rss_mb']} MB |"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
