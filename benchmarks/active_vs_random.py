"""Active (reward-model-ensemble uncertainty) vs random selection of the pairs to label.

    python benchmarks/active_vs_random.py --quick           # tiny model built from config, minutes
    python benchmarks/active_vs_random.py                   # SmolLM2-135M, configs/loop_sentiment.yaml
    python benchmarks/active_vs_random.py --pool            # policy-free check of the selection alone

Loop mode: for every seed, ``rlhfkit loop`` runs twice with the same config, seed and label budget,
``selection: random`` and ``selection: uncertainty`` (round 1 is random in both, so they share
it), on the sentiment task (movie-review openings, gold judge VADER, simulated labelers = VADER +
Gaussian noise). Each run records the held-out gold score vs the number of labels after every
round (``curve.json``). Per seed: target = the random run's final gold score;
``labels_needed(run)`` = labels at which its curve first reaches the target, linearly
interpolated between rounds (``loop.pool.labels_to_reach``); ratio = labels_needed(random) /
labels_needed(active) (> 1: active needs fewer labels). An active run that never reaches the
target counts as ratio 0 (conservative); a seed whose random run ends no better than the initial
policy has no ratio (nothing to reach). The median over seeds is reported.

Pool mode: a fixed pool of candidate pairs (4 continuations of each of 150 prompts, sampled once
from the initial policy in loop mode's setup; here synthetic sentences over a sentiment lexicon
so it needs no model), gold judge + noise labels, a cheap linear BoW ensemble (anchored members,
``--prior_std``; 0 = every member anchored at 0, under which the committee cannot disagree about
words no label has touched); held-out pair accuracy of the all-labels member vs labels for both
selections (``loop.pool.pool_curve``), same ratio on accuracy.

Both modes also report the ratio on the curves averaged over seeds (``ratio_of_mean_curves``),
loop mode on the gold score and on the ensemble's accuracy on gold-judged held-out pairs
(``rm_accuracy``), pool mode on accuracy and best-of-4 gold. Results: ``OUT/results.json``, and in
loop mode the plot ``OUT/curves.png``.

Loop mode computes each seed's setup and round 1 once: the random run makes them, and the active
run starts from hard-linked copies of them (same fingerprints, so its loop skips them;
``rlhfkit.loop.run.share_first_round``). Seeds can run in parallel processes (``--seeds 0`` in one, ``--seeds 1`` in
another, same ``--out``); a last call with all the seeds finds every run cached and writes the
summary over all of them.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ratio_for(random_curve: list[dict], active_curve: list[dict], key: str) -> dict:
    from rlhfkit.loop.pool import labels_to_reach

    target = random_curve[-1][key]
    need_r = labels_to_reach(random_curve, target, key)
    need_a = labels_to_reach(active_curve, target, key)
    if not need_r:  # reached at 0 labels: the random run did not improve on the start
        return {"target": target, "random": need_r, "active": need_a, "ratio": None}
    ratio = (need_r / need_a if need_a else float("inf")) if need_a is not None else 0.0
    return {"target": target, "random": need_r, "active": need_a, "ratio": ratio}


def run_loop_mode(args) -> dict:
    import torch

    from rlhfkit.loop.config import LoopConfig
    from rlhfkit.loop.run import run, share_first_round
    from rlhfkit.training.config import load_config

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))  # a config's gold judge may be a benchmarks module (fn:benchmarks.lexicon_task:gold)
    per_seed = []
    for seed in args.seeds:
        curves = {}
        for sel in ("random", "uncertainty"):
            over = {
                "seed": seed,
                "selection": sel,
                "threads": args.threads,
                "quick": args.quick,
                "output_dir": str(Path(args.out) / f"seed{seed}-{sel}"),
            }
            if args.rounds:
                over["rounds"] = args.rounds
            if args.uncertainty:  # the random run's stages do not depend on it (they stay cached)
                over["uncertainty"] = args.uncertainty
            cfg = load_config(LoopConfig, args.config, over)
            if sel == "uncertainty" and args.share_first_round:
                share_first_round(Path(args.out) / f"seed{seed}-random", Path(cfg.output_dir))
            t0 = time.perf_counter()
            curves[sel] = run(cfg)["curve"]
            print(
                f"active_vs_random: seed {seed} {sel}: {time.perf_counter() - t0:.0f} s, gold vs labels "
                + ", ".join(f"{p['labels']}: {p['gold']:.4f}" for p in curves[sel]),
                flush=True,
            )
        r = ratio_for(curves["random"], curves["uncertainty"], "gold")
        ra = ratio_for(*common_points([{"curves": curves}], "rm_accuracy")[0]["curves"].values(), "rm_accuracy")
        per_seed.append({"seed": seed, **r, "rm_accuracy": ra, "curves": curves})
        print(
            f"active_vs_random: seed {seed}: target gold {r['target']:.4f}; labels needed random {r['random']}, "
            f"active {r['active']}; ratio {r['ratio']}",
            flush=True,
        )
    return {
        "mode": "loop",
        "config": args.config,
        "quick": args.quick,
        "uncertainty": args.uncertainty,
        "per_seed": per_seed,
    }


def run_pool_mode(args) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from rlhfkit.loop.pool import pool_curve
    from rlhfkit.loop.selection import candidate_pairs

    torch.set_num_threads(args.threads)
    pos = "good great happy wonderful love fine funny best excellent".split()
    neg = "bad awful sad boring hate dull slow worst poor".split()
    neu = "the film movie story actor plot scene was is a an and but very really quite it this".split()

    def make(rng, n, offset=0):
        texts, groups, gold = [], [], []
        for g in range(n):
            for _ in range(4):
                w = [rng.choice(neu + pos + neg if rng.random() < 0.5 else neu) for _ in range(8)]
                texts.append(" ".join(w))
                groups.append(g + offset)
                gold.append((sum(x in pos for x in w) - sum(x in neg for x in w)) / 3)
        return texts, groups, gold

    per_seed = []
    for seed in args.seeds:
        rng = random.Random(seed)
        t, g, go = make(rng, 150)
        ht, hg, hgo = make(rng, 100, offset=10_000)
        off = len(t)
        held = [
            (a + off, b + off) if hgo[a] > hgo[b] else (b + off, a + off)
            for a, b in candidate_pairs(hg, ht)
            if hgo[a] != hgo[b]
        ]
        curves = {
            m: pool_curve(
                t + ht,
                g + hg,
                go + hgo,
                candidate_pairs(g, t),
                held,
                m,
                start=20,
                step=20,
                n_steps=6,
                ensemble_size=args.ensemble_size,
                noise=args.noise,
                seed=seed,
                measure=args.measure,
                prior_std=args.prior_std,
                max_per_group=args.max_per_prompt,
                bon_candidates=range(off, off + len(ht)),
            )
            for m in ("random", "uncertainty")
        }
        r = ratio_for(curves["random"], curves["uncertainty"], "accuracy")
        rb = ratio_for(curves["random"], curves["uncertainty"], "bon_gold")
        per_seed.append({"seed": seed, **r, "bon_gold": rb, "curves": curves})
        print(
            f"active_vs_random --pool: seed {seed}: accuracy random "
            + " ".join(f"{p['accuracy']:.3f}" for p in curves["random"])
            + " | active "
            + " ".join(f"{p['accuracy']:.3f}" for p in curves["uncertainty"])
            + f" | ratio {r['ratio']}",
            flush=True,
        )
    return {
        "mode": "pool",
        "noise": args.noise,
        "prior_std": args.prior_std,
        "max_per_prompt": args.max_per_prompt,
        "ensemble_size": args.ensemble_size,
        "measure": args.measure,
        "per_seed": per_seed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny model built from config (loop --quick)")
    ap.add_argument("--pool", action="store_true", help="policy-free check of the selection alone")
    ap.add_argument("--config", default=str(ROOT / "configs" / "loop_sentiment.yaml"))
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    ap.add_argument("--rounds", type=int, default=0, help="override the config's rounds (0 = keep)")
    ap.add_argument(
        "--uncertainty",
        default="",
        help="loop mode: override the config's uncertainty measure (variance, bald, margin, dts; empty = keep)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--noise", type=float, default=0.3, help="--pool: label noise std")
    ap.add_argument(
        "--prior_std",
        type=float,
        default=0.3,
        help="--pool: anchored-ensemble prior std of the members' weights (0 = all anchored at 0)",
    )
    ap.add_argument("--ensemble_size", type=int, default=4, help="--pool: reward models in the ensemble")
    ap.add_argument("--measure", default="variance", help="--pool: uncertainty measure (variance, bald, margin)")
    ap.add_argument(
        "--max_per_prompt",
        type=int,
        default=0,
        help="--pool: at most this many pairs of one prompt per round, in both selections (0 = no cap)",
    )
    ap.add_argument(
        "--share_first_round",
        type=int,
        default=1,
        help="loop mode: the active run reuses the random run's setup and round 1 (1) or recomputes them (0)",
    )
    ap.add_argument(
        "--include",
        default="",
        help="loop mode: a JSON file of per-seed curves of an earlier run of the same config to summarise "
        "together with the seeds run here (benchmarks/results/loop_sentiment_seeds0-5.json)",
    )
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.out = args.out or str(
        ROOT
        / "outputs"
        / ("bench_active_pool" if args.pool else "bench_active_quick" if args.quick else "bench_active")
    )
    Path(args.out).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = run_pool_mode(args) if args.pool else run_loop_mode(args)
    if args.include:
        if args.pool:
            raise SystemExit("--include: loop mode only")
        earlier = included_seeds(args.include)
        clash = {s["seed"] for s in earlier} & {s["seed"] for s in res["per_seed"]}
        if clash:
            raise SystemExit(f"--include {args.include}: seeds {sorted(clash)} are also run here")
        res["per_seed"] = earlier + res["per_seed"]
        res["included"] = args.include
    if not res["per_seed"]:
        raise SystemExit("no seeds: give --seeds (or --include in loop mode)")
    ratios = [s["ratio"] for s in res["per_seed"] if s["ratio"] is not None]
    res["median_ratio"] = statistics.median(ratios) if ratios else None
    # the same ratio on the seed-averaged curves (one noisy final point per seed no longer decides),
    # with a 95% bootstrap interval over seeds; pool mode also on the best-of-n gold score
    keys = ["accuracy", "bon_gold"] if args.pool else ["gold", "rm_accuracy"]
    res["summary"] = {key: summarise(res["per_seed"], key, seed=0) for key in keys}
    main_key = keys[0]
    res["mean_curves"] = res["summary"][main_key]["mean_curves"]
    res["ratio_of_mean_curves"] = res["summary"][main_key]["ratio_of_mean_curves"]
    res["seconds"] = round(time.perf_counter() - t0, 1)
    res["command"] = "python " + " ".join(sys.argv)
    name = "results_with_included" if args.include else "results"
    (Path(args.out) / f"{name}.json").write_text(json.dumps(res, indent=1), encoding="utf-8")
    if not args.pool:
        plot_loop(res, Path(args.out) / ("curves_with_included.png" if args.include else "curves.png"))
    what = "held-out RM accuracy" if args.pool else "gold score"
    print(
        f"active_vs_random: labels_needed(random) / labels_needed(active) to reach the random run's final "
        f"{what}: median {res['median_ratio']} over {len(ratios)} seeds "
        f"(per seed {[None if s['ratio'] is None else round(s['ratio'], 3) for s in res['per_seed']]}); "
        f"{res['seconds']} s; {Path(args.out) / (name + '.json')}"
    )
    for key, sm in res["summary"].items():
        m = sm["ratio_of_mean_curves"]
        lo, hi = sm["ratio_ci95"]
        print(
            f"active_vs_random [{key}]: on the curves averaged over {len(res['per_seed'])} seeds: target "
            f"{m['target']:.4f}, labels needed random {m['random']}, active {m['active']}, ratio {m['ratio']} "
            f"(95% bootstrap over seeds {lo:.3f} to {hi:.3f})"
        )
        for sel, c in sm["mean_curves"].items():
            print(f"  mean {sel:12}" + " ".join(f"{p['labels']}:{p[key]:.3f}" for p in c))
        print(
            "  active - random "
            + " ".join(
                f"{d['labels']}:{d['mean']:+.4f} [{d['ci95'][0]:+.4f},{d['ci95'][1]:+.4f}]"
                for d in sm["paired_difference"]
            )
        )


def plot_loop(res: dict, path: Path) -> None:
    """Loop mode: gold score and ensemble accuracy vs labels, each seed thin, the seed mean thick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    import yaml

    gold = (
        (yaml.safe_load(Path(res["config"]).read_text()) or {}).get("gold", "vader") if res.get("config") else "vader"
    )
    titles = {
        "gold": f"held-out gold score ({gold}) of the policy",
        "rm_accuracy": "ensemble accuracy, gold-judged pairs",
    }
    measure = res.get("uncertainty") or "variance"
    active = "active (ensemble variance)" if measure == "variance" else f"active ({measure})"
    for ax, (key, title) in zip(axes, titles.items()):
        for color, sel in (("C0", "random"), ("C3", "uncertainty")):
            for s in res["per_seed"]:
                c = defined(s["curves"][sel], key)
                ax.plot([p["labels"] for p in c], [p[key] for p in c], color=color, alpha=0.2, lw=0.8)
            m = res["summary"][key]["mean_curves"][sel]
            ax.plot(
                [p["labels"] for p in m],
                [p[key] for p in m],
                "o-",
                color=color,
                lw=2,
                label=f"{active if sel == 'uncertainty' else 'random'}, mean of {len(res['per_seed'])} seeds",
            )
        r = res["summary"][key]["ratio_of_mean_curves"]["ratio"]
        lo, hi = res["summary"][key]["ratio_ci95"]
        ax.set_title(
            f"{title}\nlabel ratio {r if r is None else round(r, 2)} (95% CI {lo:.2f} to {hi:.2f})", fontsize=9
        )
        ax.set_xlabel("labels (pairs) so far")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def defined(curve: list[dict], key: str) -> list[dict]:
    """The points of a curve that have ``key`` (a loop's round 0 has no reward model to score)."""
    return [p for p in curve if p.get(key) is not None]


def common_points(per_seed: list[dict], key: str) -> list[dict]:
    """``per_seed`` with every curve cut to the points that have ``key`` at the label counts
    where every seed's both curves have it (seeds from ``--include`` may lack a point), so the
    seed means below average the same label count, not the same position in the list."""
    cut = [{sel: defined(c, key) for sel, c in s["curves"].items()} for s in per_seed]
    shared = set.intersection(*({p["labels"] for p in c} for s in cut for c in s.values()))
    return [
        {**s, "curves": {sel: [p for p in c if p["labels"] in shared] for sel, c in curves.items()}}
        for s, curves in zip(per_seed, cut)
    ]


def included_seeds(path: str) -> list[dict]:
    """Per-seed curves of an earlier loop-mode run of the same config (``--include``), in the
    form of ``benchmarks/results/loop_sentiment_seeds0-5.json``: ``labels`` and, per seed, the
    gold curve of each selection and optionally the ensemble accuracy (``null`` where not known)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    labels = data["labels"]
    out = []
    for s in data["per_seed"]:
        curves = {}
        for sel in ("random", "uncertainty"):
            acc = s.get(f"rm_accuracy_{sel}") or [None] * len(labels)
            if not len(s[sel]) == len(acc) == len(labels):
                raise ValueError(f"{path}: seed {s['seed']}: {sel} curves must have one value per label count {labels}")
            curves[sel] = [{"labels": n, "gold": g, "rm_accuracy": a} for n, g, a in zip(labels, s[sel], acc)]
        r = ratio_for(curves["random"], curves["uncertainty"], "gold")
        ra = ratio_for(*common_points([{"curves": curves}], "rm_accuracy")[0]["curves"].values(), "rm_accuracy")
        out.append({"seed": s["seed"], **r, "rm_accuracy": ra, "curves": curves, "included_from": path})
    return out


def mean_curves_of(per_seed: list[dict], key: str) -> dict:
    return {
        sel: [
            {"labels": pts[0]["labels"], key: statistics.fmean(p[key] for p in pts)}
            for pts in zip(*(s["curves"][sel] for s in per_seed))
        ]
        for sel in ("random", "uncertainty")
    }


def summarise(per_seed: list[dict], key: str, seed: int, draws: int = 2000) -> dict:
    """Seed-averaged curves of ``key``, the label ratio on them, its 95% percentile-bootstrap
    interval (seeds resampled with replacement), and the paired active - random difference at
    every label count with its interval."""
    per_seed = common_points(per_seed, key)
    mc = mean_curves_of(per_seed, key)
    point = ratio_for(mc["random"], mc["uncertainty"], key)
    rng = random.Random(seed)
    boot = []
    for _ in range(draws):
        sample = [per_seed[rng.randrange(len(per_seed))] for _ in per_seed]
        r = ratio_for(*(mean_curves_of(sample, key)[sel] for sel in ("random", "uncertainty")), key)["ratio"]
        boot.append(0.0 if r is None else r)
    boot.sort()
    diffs = []
    for j, p in enumerate(per_seed[0]["curves"]["random"]):
        d = [s["curves"]["uncertainty"][j][key] - s["curves"]["random"][j][key] for s in per_seed]
        means = sorted(statistics.fmean(d[rng.randrange(len(d))] for _ in d) for _ in range(draws))
        diffs.append(
            {
                "labels": p["labels"],
                "mean": statistics.fmean(d),
                "ci95": [means[int(0.025 * draws)], means[int(0.975 * draws) - 1]],
                "active_better": sum(x > 0 for x in d),
                "ties": sum(x == 0 for x in d),
            }
        )
    return {
        "mean_curves": mc,
        "ratio_of_mean_curves": point,
        "ratio_ci95": [boot[int(0.025 * draws)], boot[int(0.975 * draws) - 1]],
        "paired_difference": diffs,
    }


if __name__ == "__main__":
    main()
