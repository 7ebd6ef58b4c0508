"""Several runs of the deployment simulation per condition, and the share of the clean gain kept.

One run of ``benchmarks/deploy_sim.py`` per (seed, condition): ``clean`` and ``adversarial``
(``--adversarial_share``), the same seed for both conditions of a replicate, one after the other
(each needs the machine to itself: about 50 minutes for 100 users x 45 minutes). A run whose
``summary.json`` exists is not run again, so the command resumes after a stop. Then the share of
the clean gain kept under adversaries: the mean adversarial gold gain over the mean clean gain
(each run's gain: last version - v0 on its held-out prompts), with a 95% interval from a
two-level bootstrap (runs resampled within each condition, then each run's prompts), because in
docs/BENCHMARKS.md two adversarial runs of one seed gave +0.024 and +0.189: the run-to-run
spread is the largest part of the uncertainty, and one pair of runs says little.

    PYTHONPATH=src .venv/bin/python benchmarks/deploy_sim_repeat.py --seeds 1,2,3 --out /tmp/repeat \\
        --adversarial_share 0.2 -- --model smollm2-135m --users 100 --minutes 45 ... --learn "..."

(everything after ``--`` goes to each run of deploy_sim.py as given, ``--seed``, ``--out`` and
``--adversarial_share`` aside). Writes ``OUT/repeat.json`` and prints the ratio.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from deploy_sim import paired  # noqa: E402  (the sibling benchmark: its summary pairs prompts so)


def run_diffs(evals_path: Path) -> list[float]:
    """Per-prompt gold differences, last evaluated version - v0, on the prompts answered in both
    (``deploy_sim.paired``, as the run's own ``gold_last_minus_first``)."""
    rows = [json.loads(line) for line in Path(evals_path).read_text(encoding="utf-8").splitlines() if line.strip()]
    first, last = paired(rows[0]["per_prompt"], rows[-1]["per_prompt"])
    return [b - a for a, b in zip(first, last)]


def kept_share(clean: list[list[float]], adversarial: list[list[float]], n_boot: int = 2000, seed: int = 0) -> dict:
    """``{"ratio", "ci_low", "ci_high", "clean_mean", "adversarial_mean", "clean_runs",
    "adversarial_runs"}``: the mean of the adversarial runs' gains over the mean of the clean
    runs' (a run's gain: the mean of its per-prompt differences), and the 2.5 / 97.5 percentiles
    of the same ratio over ``n_boot`` two-level resamples (runs with replacement within each
    condition, then each drawn run's prompts). None for the bounds where the resampled clean
    mean is not above 0 in more than 2.5% of draws (the ratio is then unbounded); fewer such
    draws are left out."""

    def gain(diffs: list[float]) -> float:
        return sum(diffs) / len(diffs)

    def mean_gain(runs: list[list[float]], rng: random.Random | None) -> float:
        if rng is None:
            return sum(gain(r) for r in runs) / len(runs)
        drawn = [runs[rng.randrange(len(runs))] for _ in runs]
        return sum(gain([d[rng.randrange(len(d))] for _ in d]) for d in drawn) / len(drawn)

    rng = random.Random(seed)
    ratios, unbounded = [], 0
    for _ in range(n_boot):
        c, a = mean_gain(clean, rng), mean_gain(adversarial, rng)
        if c <= 0:
            unbounded += 1
            continue
        ratios.append(a / c)
    ratios.sort()
    c0, a0 = mean_gain(clean, None), mean_gain(adversarial, None)
    bounded = unbounded <= 0.025 * n_boot and ratios
    return {
        "ratio": a0 / c0 if c0 > 0 else None,
        "ci_low": ratios[int(0.025 * len(ratios))] if bounded else None,
        "ci_high": ratios[min(len(ratios) - 1, int(0.975 * len(ratios)))] if bounded else None,
        "clean_mean": c0,
        "adversarial_mean": a0,
        "clean_runs": [gain(r) for r in clean],
        "adversarial_runs": [gain(r) for r in adversarial],
    }


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="1,2,3", help="simulation seeds, comma-separated: one replicate each")
    ap.add_argument("--adversarial_share", type=float, default=0.2)
    ap.add_argument("--out", required=True, help="folder of the runs (OUT/clean-SEED, OUT/adversarial-SEED)")
    ap.add_argument("--summarise_only", action="store_true", help="run nothing; summarise the runs there")
    args = ap.parse_args(own)
    out = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    runs: dict[str, list[list[float]]] = {"clean": [], "adversarial": []}
    for seed in seeds:
        for condition in ("clean", "adversarial"):
            folder = out / f"{condition}-{seed}"
            if not (folder / "summary.json").is_file() and not args.summarise_only:
                extra = ["--adversarial_share", str(args.adversarial_share)] if condition == "adversarial" else []
                command = [sys.executable, str(HERE / "deploy_sim.py"), *passthrough, "--seed", str(seed)]
                print(f"deploy_sim_repeat: {condition}, seed {seed} -> {folder}", flush=True)
                subprocess.run([*command, *extra, "--out", str(folder)], check=True)
            if (folder / "evals.jsonl").is_file():
                runs[condition].append(run_diffs(folder / "evals.jsonl"))
    if not runs["clean"] or not runs["adversarial"]:
        raise SystemExit(f"deploy_sim_repeat: no finished runs of both conditions under {out}")
    result = {"seeds": seeds, **kept_share(runs["clean"], runs["adversarial"])}
    (out / "repeat.json").write_text(json.dumps(result, indent=1), encoding="utf-8")

    def show(x):
        return "unbounded" if x is None else f"{x:.2f}"

    print(
        f"kept under adversaries: {show(result['ratio'])} [{show(result['ci_low'])}, {show(result['ci_high'])}] "
        f"(adversarial {result['adversarial_mean']:+.3f} over clean {result['clean_mean']:+.3f}; "
        f"{len(runs['clean'])} clean and {len(runs['adversarial'])} adversarial runs)"
    )


if __name__ == "__main__":
    main()
