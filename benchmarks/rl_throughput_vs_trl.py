"""Online-RL throughput: rlhfkit `grpo` / `rloo` against TRL `GRPOTrainer` / `RLOOTrainer`.

    .venv/bin/python benchmarks/rl_throughput_vs_trl.py --quick            # tiny model, a minute
    .venv/bin/python benchmarks/rl_throughput_vs_trl.py --model tiny --steps 20 --repeats 3
    .venv/bin/python benchmarks/rl_throughput_vs_trl.py --model smollm2-135m --steps 10 --max_new_tokens 32

Same model, prompts (first words of movie reviews), group size, batch, response length, KL
coefficient, learning rate, reward function (a rule reward, so scoring costs nothing), number
of optimiser steps and activation-checkpointing setting (``--gradient_checkpointing``, on by
default as in TRL; 0 turns it off in both) for both; each run is a fresh process (one torch thread unless --threads),
so its peak resident memory (ru_maxrss) is its own. Reports samples (completions) per second from
the end of step 1 to the end of the last step (setup and the warm-up step excluded for both), median over --repeats, the rlhfkit / TRL ratio and peak RSS, as one
JSON line per algorithm and a markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RULE = "e"


def rule_reward(prompts, completions, **kwargs):
    """The same rule reward for both libraries: character share of the letter 'e'."""
    return [c.count(RULE) / max(1, len(c)) for c in completions]


def make_tiny(folder: Path) -> str:
    from rlhfkit.models import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer(vocab_size=512)
    model = tiny_causal_lm(tok, hidden_size=64, num_layers=2, num_heads=4, seed=0)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def prompts_list(n: int) -> list[str]:
    from rlhfkit.data.shared_sets import load_movie_review_prompts

    return [r.prompt for r in load_movie_review_prompts(n_words=8, limit=n, seed=0)]


def worker(a) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    prompts = prompts_list(a.n_prompts)
    out = tempfile.mkdtemp(prefix=f"bench-{a.impl}-{a.algo}-")
    if a.impl == "rlhfkit":
        from rlhfkit.recipes import grpo, rloo
        from rlhfkit.training.config import load_config

        pfile = Path(out) / "prompts.jsonl"
        pfile.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
        module, cls = (grpo, grpo.GRPOConfig) if a.algo == "grpo" else (rloo, rloo.RLOOConfig)
        cfg = load_config(
            cls,
            None,
            [
                "--model",
                a.model_path,
                "--prompts",
                str(pfile),
                "--output_dir",
                out,
                "--reward",
                "fn:rl_throughput_vs_trl:rule_reward",
                "--num_generations",
                str(a.k),
                "--batch_size",
                str(a.batch_size),
                "--micro_batch_size",
                str(a.batch_size),
                "--max_new_tokens",
                str(a.max_new_tokens),
                "--kl_coef",
                str(a.beta),
                "--learning_rate",
                "1e-5",
                "--max_steps",
                str(a.steps),
                "--tensorboard",
                "false",
                "--sample_every",
                "0",
                "--resume",
                "false",
                "--max_prompt_length",
                "64",
                "--gradient_checkpointing",
                str(bool(a.gradient_checkpointing)).lower(),
            ],
        )
        os.environ["RLHFKIT_NO_PROGRESS"] = "1"
        module.run(cfg)
        stamps = [json.loads(l)["time"] for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    else:
        from datasets import Dataset
        from transformers import AutoTokenizer

        common = dict(
            output_dir=out,
            use_cpu=True,
            bf16=False,
            max_steps=a.steps,
            per_device_train_batch_size=a.batch_size,
            num_generations=a.k,
            max_completion_length=a.max_new_tokens,
            beta=a.beta,
            learning_rate=1e-5,
            logging_steps=10**6,
            save_strategy="no",
            report_to="none",
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            disable_dropout=True,
            dataloader_num_workers=0,
            seed=0,
            gradient_checkpointing=bool(a.gradient_checkpointing),
        )
        tok = AutoTokenizer.from_pretrained(a.model_path, padding_side="left")
        if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
            from rlhfkit.models import ensure_pad_token

            ensure_pad_token(tok)
        data = Dataset.from_dict({"prompt": prompts})
        if a.algo == "grpo":
            from trl import GRPOConfig, GRPOTrainer

            trainer = GRPOTrainer(
                model=a.model_path,
                reward_funcs=rule_reward,
                train_dataset=data,
                processing_class=tok,
                args=GRPOConfig(**common, loss_type="grpo"),
            )
        else:
            from trl import RLOOConfig, RLOOTrainer

            trainer = RLOOTrainer(
                model=a.model_path,
                reward_funcs=rule_reward,
                train_dataset=data,
                processing_class=tok,
                args=RLOOConfig(**common),
            )
        from transformers import TrainerCallback

        stamps = []

        class Stamp(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                stamps.append(time.time())

        trainer.add_callback(Stamp())
        trainer.train()
    # steady state: from the end of step 1 to the end of the last step (setup and the first,
    # warm-up step excluded for both libraries); the time stamps are taken after each step
    seconds = stamps[-1] - stamps[0]
    n = len(stamps) - 1
    return {
        "impl": a.impl,
        "algo": a.algo,
        "seconds": seconds,
        "steps_timed": n,
        "samples_per_s": n * a.batch_size / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="tiny, smollm2-135m, or a folder")
    p.add_argument("--algos", default="grpo,rloo")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch_size", type=int, default=16, help="completions per step")
    p.add_argument("--k", type=int, default=4, help="completions per prompt")
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--beta", type=float, default=0.04, help="KL coefficient (both use a reference model)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n_prompts", type=int, default=256)
    p.add_argument(
        "--gradient_checkpointing",
        type=int,
        default=1,
        help="1: both recompute activations in the backward pass (TRL's default), 0: neither",
    )
    p.add_argument("--quick", action="store_true", help="tiny model, 5 steps, 1 repeat, 16 tokens")
    p.add_argument("--worker", choices=["rlhfkit", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--algo", help=argparse.SUPPRESS)
    p.add_argument("--model_path", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        a.impl = a.worker
        print("RESULT " + json.dumps(worker(a)), flush=True)
        return
    if a.quick:
        a.model, a.steps, a.repeats, a.max_new_tokens = "tiny", 5, 1, 16
    tmp = Path(tempfile.mkdtemp(prefix="rl-bench-"))
    if a.model == "tiny":
        model_path = make_tiny(tmp / "tiny")
    elif a.model == "smollm2-135m":
        # The package ships a GGUF file; both libraries get the same dequantised float32
        # weights and tokenizer (with its distinct pad token) as a plain Hugging Face folder.
        from rlhfkit.models import load_policy

        model, tokenizer = load_policy(a.model)
        model_path = str(tmp / "smollm2")
        model.save_pretrained(model_path)
        tokenizer.save_pretrained(model_path)
        del model
    else:
        model_path = a.model
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(a.threads),
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    }
    rows = []
    for algo in a.algos.split(","):
        results: dict[str, list[dict]] = {"rlhfkit": [], "trl": []}
        for _ in range(a.repeats):
            for impl in ("rlhfkit", "trl"):  # interleaved so drifting machine load hits both
                cmd = [
                    sys.executable,
                    __file__,
                    "--worker",
                    impl,
                    "--algo",
                    algo,
                    "--model_path",
                    model_path,
                    "--steps",
                    str(a.steps),
                    "--batch_size",
                    str(a.batch_size),
                    "--k",
                    str(a.k),
                    "--max_new_tokens",
                    str(a.max_new_tokens),
                    "--beta",
                    str(a.beta),
                    "--threads",
                    str(a.threads),
                    "--n_prompts",
                    str(a.n_prompts),
                    "--gradient_checkpointing",
                    str(a.gradient_checkpointing),
                ]
                r = subprocess.run(cmd, env=env, capture_output=True, text=True)
                line = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
                if r.returncode or not line:
                    sys.exit(f"{impl} {algo} failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
                results[impl].append(json.loads(line[0][7:]))
        med = {impl: statistics.median(x["samples_per_s"] for x in v) for impl, v in results.items()}
        rss = {impl: max(x["peak_rss_mb"] for x in v) for impl, v in results.items()}
        row = {
            "algo": algo,
            "model": a.model,
            "steps": a.steps,
            "batch": a.batch_size,
            "k": a.k,
            "max_new_tokens": a.max_new_tokens,
            "beta": a.beta,
            "threads": a.threads,
            "repeats": a.repeats,
            "gradient_checkpointing": bool(a.gradient_checkpointing),
            "rlhfkit_samples_per_s": round(med["rlhfkit"], 3),
            "trl_samples_per_s": round(med["trl"], 3),
            "speedup": round(med["rlhfkit"] / med["trl"], 3),
            "rlhfkit_peak_rss_mb": round(rss["rlhfkit"]),
            "trl_peak_rss_mb": round(rss["trl"]),
            "machine": platform.processor() or platform.machine(),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| algo | model | rlhfkit samples/s | TRL samples/s | speed-up | rlhfkit peak RSS MB | TRL peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['algo']} | {r['model']} | {r['rlhfkit_samples_per_s']} | {r['trl_samples_per_s']} | "
            f"{r['speedup']}x | {r['rlhfkit_peak_rss_mb']} | {r['trl_peak_rss_mb']} |"
        )
    print(f"\ncommand: {' '.join([Path(sys.executable).name, *sys.argv])}")


if __name__ == "__main__":
    main(sys.argv[1:])
