"""Conservative ensemble rewards (mean / min / uwo) as best-of-n choosers, on the reward-model
ensembles that ``rlhfkit loop`` runs trained, judged by the loop's gold judge.

    .venv/bin/python benchmarks/ensemble_reward_bon.py outputs/al_loop3/seed*-*/ [--round 4] [--rules mean,min,uwo=0.5,uwo=2]

For each loop folder: the round's ensemble members (``round-R/reward``) score every held-out
sample of the initial policy (the distinct texts of ``setup/heldout_pairs.jsonl``: 4 samples of
each of 64 held-out openings, never labelled); each rule (``core.reward_shaping.combine_ensemble``)
picks one sample per opening; the gold judge (VADER) scores the picks; the mean over openings is
that rule's best-of-n gold. Reported: each rule's mean over folders, and its paired difference
from ``mean`` with a 95% bootstrap interval over folders (2,000 resamples), and the oracle (the
gold-best sample) and a random pick for scale.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import torch


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--round", type=int, default=4)
    ap.add_argument("--rules", default="mean,min,uwo=0.5,uwo=2")
    ap.add_argument("--gold", default="vader")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from rlhfkit.core.reward_shaping import combine_ensemble
    from rlhfkit.loop.ensemble import ensemble_scores
    from rlhfkit.rewards import build_reward
    from rlhfkit.rewards.sources import parse_ensemble_term

    rules = [r.strip() for r in a.rules.split(",")]
    gold_fn = build_reward(a.gold)
    per_rule: dict[str, list[float]] = defaultdict(list)
    for folder in map(Path, a.folders):
        stage = folder / f"round-{a.round}" / "reward" / "stage.json"
        if not stage.is_file():
            continue
        members = json.loads(stage.read_text())["outputs"]["members"]
        samples: dict[str, list[str]] = {}
        for line in (folder / "setup" / "heldout_pairs.jsonl").read_text(encoding="utf-8").splitlines():
            p = json.loads(line)
            for t in (p["chosen"], p["rejected"]):
                if t not in samples.setdefault(p["prompt"], []):
                    samples[p["prompt"]].append(t)
        prompts = [p for p in samples if len(samples[p]) >= 2]
        flat_p = [p for p in prompts for _ in samples[p]]
        flat_r = [t for p in prompts for t in samples[p]]
        scores = ensemble_scores(members, flat_p, flat_r, max_length=96)  # [M, N]
        gold = gold_fn(flat_p, flat_r).float()
        groups, at = [], 0
        for p in prompts:
            groups.append(list(range(at, at + len(samples[p]))))
            at += len(samples[p])
        rng = random.Random(0)
        row = {"folder": str(folder), "prompts": len(prompts), "samples": len(flat_r)}
        for rule in rules + ["oracle", "random"]:
            if rule == "oracle":
                combined = gold
            elif rule == "random":
                combined = torch.tensor([rng.random() for _ in flat_r])
            else:
                how, lam, _ = parse_ensemble_term(f"{rule}:x")
                combined = combine_ensemble(scores, how, lam)
            picks = [max(g, key=lambda i: float(combined[i])) for g in groups]
            value = float(gold[picks].mean())
            per_rule[rule].append(value)
            row[rule] = round(value, 4)
        print(json.dumps(row), flush=True)
    n = len(per_rule["mean"])
    print(
        f"\n{n} ensembles (round {a.round})\n| rule | best-of-n gold, mean over ensembles | minus mean (95% CI) |\n|---|---|---|"
    )
    rng = random.Random(1)
    for rule in rules + ["oracle", "random"]:
        diffs = [x - y for x, y in zip(per_rule[rule], per_rule["mean"])]
        boots = sorted(statistics.fmean(rng.choices(diffs, k=n)) for _ in range(2000))
        ci = f"{statistics.fmean(diffs):+.4f} [{boots[49]:+.4f}, {boots[1949]:+.4f}]" if rule != "mean" else "-"
        print(f"| {rule} | {statistics.fmean(per_rule[rule]):.4f} | {ci} |")


if __name__ == "__main__":
    main(sys.argv[1:])
