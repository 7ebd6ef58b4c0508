"""A discriminator reward refitted during RL (``--adversarial.discriminator``, GAIL / AIRL)
against the same discriminator kept fixed (``--reward rm:...``), on a task whose imitation
quality can be computed.

    .venv/bin/python benchmarks/adversarial_vs_static.py --seeds 0,1,2 [--steps 60] [--sft_steps 80] [--out outputs/adv_bench]

Task: 64 prompts of five random words; each prompt's demonstration is " so the answer is W ."
with W the prompt's last word (a rule a person follows). Per seed: a tiny tokenizer, a tiny
random Llama as the policy, and a tiny encoder discriminator trained by ``rlhfkit reward
discriminator`` on the demonstrations against the policy's own samples. Then GRPO twice from the
same policy and seed, the reward the discriminator's logit alone: once fixed, once refitted after
every step. Gold (logged, never the reward): the unigram F1 of a response against its prompt's
demonstration, and whether it holds the demonstration's answer word in the right place ("is W").
Reported per seed and on average: the gold of the last ``--last`` steps of each run, and the
discriminator logit the fixed run ends with (what exploiting a fixed reward looks like).
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
WORDS = (
    "the cat dog bird sat ran on under a mat log tree happy sad quick slow red blue green "
    "big small old new good bad sun moon star sky sea land"
).split()


def demonstration(prompt: str) -> str:
    return f" so the answer is {prompt.split()[-1]} ."


def _f1(a: list[str], b: list[str]) -> float:
    from collections import Counter

    common = sum((Counter(a) & Counter(b)).values())
    if not common:
        return 0.0
    p, r = common / len(a), common / len(b)
    return 2 * p * r / (p + r)


def demo_f1(prompts, responses):
    """Gold: unigram F1 of each response against its prompt's demonstration."""
    return [_f1(r.split(), demonstration(p).split()) for p, r in zip(prompts, responses)]


def demo_answer(prompts, responses):
    """Gold: 1 when the response says "is W" with W the prompt's last word."""
    return [float(f"is {p.split()[-1]}" in r) for p, r in zip(prompts, responses)]


def run_seed(seed: int, out: Path, steps: int, threads: int, sft_steps: int) -> dict:
    import torch

    from rlhfkit.models import tiny_causal_lm, tiny_reward_model, tiny_tokenizer
    from rlhfkit.recipes import discriminator, grpo, sft
    from rlhfkit.training.config import load_config

    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    prompts = [" ".join(rng.choice(WORDS) for _ in range(5)) for _ in range(64)]
    demos = out / "demos.jsonl"
    demos.write_text("".join(json.dumps({"prompt": p, "completion": demonstration(p)}) + "\n" for p in prompts))
    tok = tiny_tokenizer([p + demonstration(p) for p in prompts] * 4, vocab_size=300)
    policy_dir, disc_base = out / "policy0", out / "disc_base"
    tiny_causal_lm(tok, hidden_size=32, num_layers=2, num_heads=2, seed=seed).save_pretrained(policy_dir)
    tok.save_pretrained(policy_dir)
    tiny_reward_model(tok, kind="encoder", hidden_size=32, num_layers=2, seed=seed).save_pretrained(disc_base)
    tok.save_pretrained(disc_base)
    if sft_steps:  # behaviour cloning first (GAIL's usual start): the policy half-knows the rule
        scfg = load_config(
            sft.SFTConfig,
            None,
            [
                "--data",
                str(demos),
                "--model",
                str(policy_dir),
                "--output_dir",
                str(out / "sft"),
                "--max_steps",
                str(sft_steps),
                "--batch_size",
                "8",
                "--micro_batch_size",
                "8",
                "--learning_rate",
                "3e-3",
                "--eval_fraction",
                "0",
                "--save_every",
                "0",
                "--seed",
                str(seed),
                "--threads",
                str(threads),
                "--tensorboard",
                "false",
            ],
        )
        sft.run(scfg)
        policy_dir = out / "sft" / "model"
    disc_out = out / "disc"
    dcfg = load_config(
        discriminator.DiscriminatorConfig,
        None,
        [
            "--data",
            str(demos),
            "--policy",
            str(policy_dir),
            "--output_dir",
            str(disc_out),
            "--samples_per_prompt",
            "2",
            "--max_new_tokens",
            "8",
            "--eval_fraction",
            "0.25",
            "--reward.model",
            str(disc_base),
            "--reward.epochs",
            "4",
            "--reward.learning_rate",
            "2e-3",
            "--reward.max_length",
            "48",
            "--seed",
            str(seed),
            "--threads",
            str(threads),
        ],
    )
    discriminator.run(dcfg)
    disc_report = json.loads((disc_out / "discriminator.json").read_text())
    sys.path.insert(0, str(ROOT / "benchmarks"))
    common = [
        "--model",
        str(policy_dir),
        "--prompts",
        str(demos),
        "--max_new_tokens",
        "8",
        "--num_generations",
        "4",
        "--batch_size",
        "16",
        "--micro_batch_size",
        "16",
        "--learning_rate",
        "3e-3",
        "--kl_coef",
        "0.0",
        "--max_steps",
        str(steps),
        "--seed",
        str(seed),
        "--threads",
        str(threads),
        "--tensorboard",
        "false",
        "--sample_every",
        "0",
        "--save_every",
        "0",
        "--reward_batch_size",
        "32",
        "--gold_reward",
        "fn:adversarial_vs_static:demo_f1",
    ]
    runs = {
        "fixed": ["--reward", f"rm:{disc_out / 'model'}"],
        "refitted": [
            "--reward",
            "",
            "--adversarial.discriminator",
            str(disc_out / "model"),
            "--adversarial.demos",
            str(demos),
            "--adversarial.batch_size",
            "16",
            "--adversarial.learning_rate",
            "2e-3",
            "--adversarial.max_length",
            "48",
        ],
    }
    result = {"seed": seed, "discriminator_heldout_accuracy": disc_report["accuracy"]}
    for name, extra in runs.items():
        o = out / name
        cfg = load_config(grpo.GRPOConfig, None, [*common, "--output_dir", str(o), *extra])
        t0 = time.perf_counter()
        grpo.run(cfg)
        rows = [json.loads(x) for x in (o / "metrics.jsonl").read_text().splitlines()]
        result[name] = {
            "seconds": round(time.perf_counter() - t0, 1),
            "gold_curve": [round(r["gold"], 4) for r in rows],
            "reward_curve": [round(r["reward"], 4) for r in rows],
        }
    return result


def plot(results: list[dict], path: Path) -> None:
    """Gold (F1 against the demonstration) and reward over the GRPO steps, mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, title in (
        (axes[0], "gold_curve", "gold: F1 of the response against its demonstration"),
        (axes[1], "reward_curve", "the policy's reward (discriminator logit)"),
    ):
        for color, name, label in (
            ("C3", "fixed", "discriminator fixed (rm:)"),
            ("C0", "refitted", "discriminator refitted every step"),
        ):
            curves = [x[name][key] for x in results]
            mean = [statistics.mean(c[i] for c in curves) for i in range(min(map(len, curves)))]
            ax.plot(range(1, len(mean) + 1), mean, color=color, lw=2, label=f"{label}, mean of {len(curves)} seeds")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("GRPO step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument(
        "--sft_steps", type=int, default=80, help="behaviour-cloning steps before the discriminator (0 = none)"
    )
    ap.add_argument("--last", type=int, default=10, help="steps averaged at the end of each run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="outputs/adv_bench")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    results = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        path = Path(a.out) / f"seed{seed}" / "result.json"
        if path.is_file() and (
            json.loads(path.read_text()).get("steps"),
            json.loads(path.read_text()).get("sft_steps"),
        ) == (a.steps, a.sft_steps):
            res = json.loads(path.read_text())
        else:
            res = {
                **run_seed(seed, Path(a.out) / f"seed{seed}", a.steps, a.threads, a.sft_steps),
                "steps": a.steps,
                "sft_steps": a.sft_steps,
            }
            path.write_text(json.dumps(res))
        results.append(res)
        f, r = (statistics.mean(res[k]["gold_curve"][-a.last :]) for k in ("fixed", "refitted"))
        print(
            f"seed {seed}: discriminator held-out accuracy {res['discriminator_heldout_accuracy']:.3f}; "
            f"gold (last {a.last} steps) fixed {f:.3f}, refitted {r:.3f}; final reward fixed "
            f"{res['fixed']['reward_curve'][-1]:.2f}, refitted {res['refitted']['reward_curve'][-1]:.2f}",
            flush=True,
        )
    diffs = [
        statistics.mean(x["refitted"]["gold_curve"][-a.last :]) - statistics.mean(x["fixed"]["gold_curve"][-a.last :])
        for x in results
    ]
    plot(results, Path(a.out) / "curves.png")
    rng = random.Random(0)  # 95% bootstrap interval of the mean paired difference, over seeds
    boots = sorted(statistics.mean(rng.choices(diffs, k=len(diffs))) for _ in range(10_000))
    gold = {
        k: statistics.mean(statistics.mean(x[k]["gold_curve"][-a.last :]) for x in results)
        for k in ("fixed", "refitted")
    }
    start = statistics.mean(x["fixed"]["gold_curve"][0] for x in results)
    print(
        json.dumps(
            {
                "seeds": len(results),
                "gold_at_start": round(start, 4),
                "gold_end_fixed": round(gold["fixed"], 4),
                "gold_end_refitted": round(gold["refitted"], 4),
                "mean_gold_refitted_minus_fixed": round(statistics.mean(diffs), 4),
                "ci95": [round(boots[249], 4), round(boots[9749], 4)],
                "refitted_better": sum(d > 0 for d in diffs),
                "per_seed": [round(d, 4) for d in diffs],
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
