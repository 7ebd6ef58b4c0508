"""Held-out accuracy of single reward models and of their ensemble (mean score) on one split.

    .venv/bin/python benchmarks/reward_ensemble_accuracy.py --config configs/reward_hh_minilm.yaml \
        --seeds 0,1,2 --threads 1 [--field value ...]

Member i is `rlhfkit reward train --config CONFIG --seed i --split_seed S --output_dir OUT/seed-i`
(S = the config's seed, so every member holds out the same pairs; the seed changes the head's
initialisation and the data order only). Members are trained one after another in fresh
processes (skipped when OUT/seed-i/model exists, so several calls can train members in parallel
with --seeds 1 and --seeds 2 and a last call evaluates). Then every member and the ensemble
mean (1/M) sum_m r_m are scored on the held-out split with `rlhfkit reward eval`'s metrics.
Also a uniform weight average of the members (one model of the backbone's size). Nothing is
chosen on the held-out set: every member, the ensemble and the average are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated member seeds")
    p.add_argument("--out", default="outputs/rm_ensemble")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--train_only", action="store_true", help="train the members, do not evaluate")
    args, rest = p.parse_known_args(argv)

    from rlhfkit.rewards.metrics import pair_metrics, score_texts
    from rlhfkit.models import load_reward_model
    from rlhfkit.data.loading import load_training_records
    from rlhfkit.data.splits import split_holdout
    from rlhfkit.recipes.reward import RewardConfig, split_seed
    from rlhfkit.training.config import load_config

    config = load_config(RewardConfig, args.config, rest)
    data_seed = split_seed(config)
    seeds = [int(s) for s in args.seeds.split(",")]
    out = ROOT / args.out
    env = {**os.environ, "RLHFKIT_NO_PROGRESS": "1", "OMP_NUM_THREADS": str(args.threads)}
    timings = {}
    for seed in seeds:
        member = out / f"seed-{seed}"
        if (member / "model" / "config.json").exists():
            continue
        cmd = [
            sys.executable,
            "-m",
            "rlhfkit.cli",
            "reward",
            "train",
            "--config",
            args.config,
            *rest,
            "--seed",
            str(seed),
            "--split_seed",
            str(data_seed),
            "--output_dir",
            str(member),
            "--threads",
            str(args.threads),
            "--tensorboard",
            "false",
        ]
        start = time.perf_counter()
        member.mkdir(parents=True, exist_ok=True)
        with open(member / "train.log", "w") as log:
            subprocess.run(
                ["/usr/bin/time", "-f", "PEAK_RSS_KB %M", *cmd],
                check=True,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )
        timings[seed] = time.perf_counter() - start
    if args.train_only:
        return

    torch.set_num_threads(args.threads)
    pairs = load_training_records(config.data, "pairs", ties=config.ties)
    _, held = split_holdout(pairs, config.eval_fraction, data_seed)
    texts = [(q.prompt, q.chosen) for q in held] + [(q.prompt, q.rejected) for q in held]
    n = len(held)
    flip = torch.rand(n, generator=torch.Generator().manual_seed(0)) < 0.5
    members = [out / f"seed-{seed}" for seed in seeds]
    missing = [str(d) for d in members if not (d / "model" / "config.json").exists()]
    if missing:
        sys.exit(f"members not trained yet: {missing}")
    scores, rows = [], []
    for d in members:
        model, tokenizer = load_reward_model(str(d / "model"))
        s = score_texts(model, tokenizer, texts, config.max_length, 32)
        scores.append(s)
        log = (d / "train.log").read_text(errors="replace") if (d / "train.log").exists() else ""
        peak = [l.split()[-1] for l in log.splitlines() if l.startswith("PEAK_RSS_KB")]
        rows.append(
            {
                "model": d.name,
                **pair_metrics(s[:n], s[n:], flip),
                "peak_rss_mb": round(int(peak[-1]) / 1024) if peak else None,
            }
        )
    mean = torch.stack(scores).mean(0)
    rows.append({"model": f"ensemble of {len(members)} (mean score)", **pair_metrics(mean[:n], mean[n:], flip)})
    # a uniform "model soup" (Wortsman et al. 2022): one model whose weights are the members'
    # mean; all members start from the same pretrained backbone, only the heads' inits differ
    soup, tokenizer = load_reward_model(str(members[0] / "model"))
    states = [load_reward_model(str(d / "model"))[0].state_dict() for d in members]
    soup.load_state_dict(
        {
            k: torch.stack([st[k].float() for st in states]).mean(0).to(v.dtype) if v.is_floating_point() else v
            for k, v in states[0].items()
        }
    )
    s = score_texts(soup, tokenizer, texts, config.max_length, 32)
    rows.append({"model": f"weight average of {len(members)} (one model)", **pair_metrics(s[:n], s[n:], flip)})
    print(json.dumps({"config": args.config, "overrides": rest, "held_out_pairs": n, "rows": rows}))
    print("| model | held-out accuracy | F1 | ECE |")
    print("|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['accuracy']:.3f} ({round(r['accuracy'] * n)} / {n}) | {r['f1']:.3f} | {r['ece']:.3f} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
