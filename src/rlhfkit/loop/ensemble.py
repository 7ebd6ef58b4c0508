"""A small reward-model ensemble: M reward models (the ``reward`` recipe, unchanged) trained on
bootstrap resamples of the labels so far, each from its own seed (its own head initialisation and
data order). Member 0 trains on all the labels (no resample), so the ensemble's mean is never
worse off than a single model for lack of data; members 1..M-1 on resamples drawn with
replacement (Efron's bootstrap; Lakshminarayanan et al. 2017 use seeds alone, which on a small
data set gives too little disagreement, so both are used).

The policy's reward is the ensemble mean ``(1/M) sum_m r_m`` (``rewards.build_reward`` weighted
sum of ``rm:`` terms): averaging also makes the reward harder to exploit than any one member
(Coste et al. 2023, "Reward Model Ensembles Help Mitigate Overoptimization").
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Sequence

import torch


def bootstrap_file(pairs: list[dict], path: Path, seed: int, resample: bool) -> None:
    rows = pairs
    if resample:
        rng = random.Random(seed)
        rows = [pairs[rng.randrange(len(pairs))] for _ in range(len(pairs))]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def train_ensemble(
    pairs: list[dict],
    out: Path,
    reward_config,
    size: int,
    seed: int,
    bootstrap: bool = True,
    eval_file: str = "",
    threads: int = 0,
) -> list[str]:
    """Train ``size`` members under ``out/member-i/`` (a finished member, ``model/`` present, is
    kept: a restarted stage trains only the missing ones, and the recipe resumes a half-trained
    one from its checkpoint). Returns the model folders."""
    from rlhfkit.recipes import reward

    out.mkdir(parents=True, exist_ok=True)
    dirs = []
    for m in range(size):
        d = out / f"member-{m}"
        model = d / "model"
        dirs.append(str(model))
        if (model / "config.json").is_file() and (d / "final_metrics.json").is_file():
            continue
        d.mkdir(parents=True, exist_ok=True)
        data = d / "pairs.jsonl"
        bootstrap_file(pairs, data, seed * 1000 + m, resample=bootstrap and m > 0)
        cfg = copy.deepcopy(reward_config)
        cfg.data, cfg.output_dir, cfg.seed = str(data), str(d), seed * 1000 + m
        cfg.eval_data = eval_file
        cfg.eval_fraction = 0.0
        cfg.drop_duplicates = False  # a bootstrap resample's repeats are its weights
        if threads:
            cfg.threads = threads
        reward.run(cfg)
    return dirs


def ensemble_spec(model_dirs: Sequence[str]) -> str:
    """The reward spec of the ensemble mean: ``w*rm:A + w*rm:B + ...``."""
    w = 1.0 / len(model_dirs)
    return " + ".join(f"{w!r}*rm:{d}" for d in model_dirs)


@torch.no_grad()
def ensemble_scores(
    model_dirs: Sequence[str],
    prompts: Sequence[str],
    responses: Sequence[str],
    max_length: int = 512,
    batch_size: int = 32,
) -> torch.Tensor:
    """``[M, N]``: every member's score of every (prompt, response)."""
    from rlhfkit.rewards.sources import RewardModelSource

    rows = []
    for d in model_dirs:
        src = RewardModelSource.load(d, max_length=max_length, batch_size=batch_size)
        rows.append(src(list(prompts), list(responses)).float())
        del src
    return torch.stack(rows)
