"""DPO and KTO of SmolLM2-135M on HH-RLHF harmless pairs, judged by the foundation's reward model.

    .venv/bin/python benchmarks/dpo_kto_hh.py --rm outputs/rm_hh_val/model [--threads 2]

For each of DPO (configs/dpo_smollm2_hh.yaml) and KTO (configs/kto_smollm2_hh.yaml):
1. trains with the recipe (a fresh process; skipped when its model/ folder already exists, so a
   stopped benchmark continues), which reports the held-out implicit-reward accuracy
   (beta * log pi/pi_ref of chosen above rejected, on held-out pairs) before and after;
2. `rlhfkit eval`: the tuned policy and the reference (the untouched SmolLM2) each answer the same
   held-out HH prompts (the prompts of the held-out pairs of the same 80/20 split, which neither
   the policy nor the reward model trained on), and the reward model (`--rm`, trained by
   configs/reward_hh_minilm.yaml on the training part) says which answer it prefers: the win
   rate with a bootstrap 95% interval, plus the KL of the tuned policy to the reference.

Prints one JSON line per method and markdown rows for docs/BENCHMARKS.md. Wall times and the
peak RSS of each child process are measured around it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rlhfkit.training.config import load_config

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"dpo": "configs/dpo_smollm2_hh.yaml", "kto": "configs/kto_smollm2_hh.yaml"}


def _dpo_config():
    from rlhfkit.recipes.dpo import DPOConfig

    return DPOConfig


def _kto_config():
    from rlhfkit.recipes.kto import KTOConfig

    return KTOConfig


CONFIG_CLASSES = {"dpo": _dpo_config, "kto": _kto_config}


def run_child(cmd: list[str], log: Path) -> tuple[float, float]:
    """Run `cmd`, its output to `log`; returns (seconds, peak RSS in MB) via GNU time's format."""
    start = time.perf_counter()
    env = {**os.environ, "RLHFKIT_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as f:
        proc = subprocess.run(
            ["/usr/bin/time", "-f", "PEAK_RSS_KB %M", *cmd], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT
        )
    seconds = time.perf_counter() - start
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log}:\n{text[-3000:]}")
    peak = [line.split()[-1] for line in text.splitlines() if line.startswith("PEAK_RSS_KB")]
    return seconds, (int(peak[-1]) / 1024 if peak else float("nan"))


def heldout_prompts(config_path: str, out: Path, n: int) -> Path:
    """The prompts of the first `n` held-out pairs of the recipe's split, as a JSONL prompt file."""
    from rlhfkit.data.loading import load_training_records
    from rlhfkit.data.splits import split_holdout

    cfg = load_config(_dpo_config(), str(ROOT / config_path), [])
    pairs = load_training_records(cfg.data, "pairs", "raise", ties="drop")
    _, held = split_holdout(pairs, cfg.eval_fraction, cfg.seed)
    out.write_text("".join(json.dumps({"prompt": p.prompt}) + "\n" for p in held[:n]), encoding="utf-8")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rm", default="outputs/rm_hh_val/model", help="the reward model that judges (a folder)")
    p.add_argument("--methods", default="dpo,kto")
    p.add_argument("--prompts", type=int, default=64, help="held-out prompts answered by both policies")
    p.add_argument("--max_new_tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--workdir", default="outputs/dpo_kto_hh")
    args = p.parse_args(argv)
    work = ROOT / args.workdir
    work.mkdir(parents=True, exist_ok=True)
    if not (ROOT / args.rm / "config.json").exists():
        sys.exit(
            f"--rm {args.rm}: no reward model there; train it with "
            "`rlhfkit reward train --config configs/reward_hh_minilm.yaml --output_dir outputs/rm_hh_val`"
        )
    prompts = heldout_prompts(METHODS["dpo"], work / "heldout_prompts.jsonl", args.prompts)
    threads = ["--threads", str(args.threads)] if args.threads else []
    rows = []
    for method in args.methods.split(","):
        config = METHODS[method]
        recipe_config = load_config(CONFIG_CLASSES[method](), str(ROOT / config), [])
        out = ROOT / recipe_config.output_dir
        train_s, train_mb = None, None  # trained by an earlier call: see its log
        if not (out / "model" / "config.json").exists():
            train_s, train_mb = run_child(
                [sys.executable, "-m", "rlhfkit.cli", method, "--config", config, "--tensorboard", "false", *threads],
                work / f"{method}_train.log",
            )
        final = json.loads((out / "final_metrics.json").read_text())
        eval_dir = work / f"{method}_vs_reference"
        eval_s, eval_mb = run_child(
            [
                sys.executable,
                "-m",
                "rlhfkit.cli",
                "eval",
                "--prompts",
                str(prompts),
                "--max_prompts",
                str(args.prompts),
                "--policy",
                str(out / "model"),
                "--reference",
                recipe_config.model,
                "--judge",
                f"rm:{args.rm}",
                "--max_prompt_length",
                str(recipe_config.max_prompt_length),
                "--max_new_tokens",
                str(args.max_new_tokens),
                "--temperature",
                str(args.temperature),
                "--output",
                str(eval_dir),
                *threads,
            ],
            work / f"{method}_eval.log",
        )
        judged = json.loads((eval_dir / "eval.json").read_text())
        wr, kl = judged["win_rate"], judged.get("kl") or {}
        row = {
            "method": method,
            "config": config,
            "train_seconds": None if train_s is None else round(train_s, 1),
            "train_peak_rss_mb": None if train_mb is None else round(train_mb),
            "eval_seconds": round(eval_s, 1),
            "implicit_accuracy_before": final.get("eval_accuracy_before"),
            "implicit_accuracy_after": final.get("eval_accuracy"),
            "held_out_pairs": final.get("eval_pairs", final.get("eval_examples")),
            "rm_win_rate": wr["win_rate"],
            "rm_win_rate_ci": [wr["ci_low"], wr["ci_high"]],
            "wins": wr["wins"],
            "ties": wr["ties"],
            "losses": wr["losses"],
            "prompts": wr["n"],
            "kl_mean": kl.get("mean"),
            "policy_length": judged.get("policy_length"),
            "reference_length": judged.get("reference_length"),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    for r in rows:
        ci = r["rm_win_rate_ci"]
        minutes = "-" if r["train_seconds"] is None else f"{r['train_seconds'] / 60:.1f} min"
        print(
            f"| {r['method']} | {r['implicit_accuracy_before']:.3f} -> {r['implicit_accuracy_after']:.3f} "
            f"({r['held_out_pairs']} held out) | {r['rm_win_rate']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] "
            f"({r['wins']}/{r['ties']}/{r['losses']} of {r['prompts']}) | {(r['kl_mean'] or float('nan')):.2f} | "
            f"{minutes} | {r['train_peak_rss_mb'] or '-'} MB |"
        )


if __name__ == "__main__":
    main()
