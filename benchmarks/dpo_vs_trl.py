"""Throughput and peak memory of `rlhfkit dpo` against TRL's `DPOTrainer`, one run, same settings.

    python benchmarks/dpo_vs_trl.py --quick                       # tiny model, seconds (smoke test)
    python benchmarks/dpo_vs_trl.py --model smollm2-135m --pairs 256 --batch_size 8 --steps 16

Same model weights (saved once to a folder both load), the same precision (`--precision`: TRL's
`DPOConfig` is given `bf16` explicitly; its default is bf16 autocast), same HH-RLHF harmless pairs (the first
`--pairs` whose prompt + longer response fit `--max_length` untruncated, so both tokenise the
same text without either truncation rule mattering), same batch (no accumulation), same
learning rate, same number of optimiser steps, sigmoid DPO with beta 0.1.

Each measurement is a fresh subprocess (so peak RSS is its own); implementations alternate,
`--repeats` times, and medians are printed. Samples/s is end to end from data to saved model:
rlhfkit `run(config)` (tokenising, the cached reference pass, training, saving) against TRL
`DPOTrainer(...)` + `train()` + `save_model()` (tokenising, its reference - a second model run at
every step by default, or `--trl_precompute` for its precomputed log-probs - training, saving);
the policy is loaded once before the clock starts in both (rlhfkit loads it again inside `run`). TRL's own
`train_samples_per_second` is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="tiny (random 2-layer Llama) or smollm2-135m, or a HF folder")
    p.add_argument("--pairs", type=int, default=128, help="first N fitting HH-RLHF harmless pairs")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument(
        "--micro_batch_size",
        type=int,
        default=0,
        help="pairs per forward pass inside the same optimiser batch, for both libraries (TRL: "
        "per-device batch with gradient accumulation; 0 = the whole batch at once)",
    )
    p.add_argument("--steps", type=int, default=16, help="optimiser steps (pairs trained = steps x batch)")
    p.add_argument("--max_length", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads in each child (0 = torch default)")
    p.add_argument("--trl_precompute", action="store_true", help="TRL precompute_ref_log_probs=True")
    p.add_argument(
        "--gradient_checkpointing",
        type=int,
        default=1,
        help="activation checkpointing in both libraries (1 = TRL DPOConfig's default)",
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="the same in both: fp32 (TRL bf16=False) or bf16 autocast with float32 master weights "
        "(TRL bf16=True, its DPOConfig default; rlhfkit --precision bf16)",
    )
    p.add_argument("--quick", action="store_true", help="tiny model, 32 pairs, 4 steps, 1 repeat")
    p.add_argument("--child", choices=["rlhfkit", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.pairs, args.steps, args.batch_size, args.repeats, args.max_length = "tiny", 32, 4, 4, 1, 128
    if args.pairs < args.steps * args.batch_size:
        args.pairs = args.steps * args.batch_size  # one epoch covers every step: no pair is seen twice
    return args


# ----------------------------------------------------------------------------- set-up (parent)
def prepare(args, workdir: Path) -> None:
    """Save the model + tokenizer to workdir/model and the pairs to workdir/pairs.jsonl."""
    import torch

    from rlhfkit.data import load_hh_rlhf
    from rlhfkit.models import load_policy, tiny_causal_lm, tiny_tokenizer

    pairs = load_hh_rlhf()
    if args.model == "tiny":
        tokenizer = tiny_tokenizer([p.prompt + p.chosen for p in pairs[:300]], vocab_size=1024)
        model = tiny_causal_lm(tokenizer, hidden_size=64, num_layers=2, num_heads=4, seed=0)
    else:
        model, tokenizer = load_policy(args.model, dtype=torch.float32, padding_side="right")
    model.save_pretrained(workdir / "model")
    tokenizer.save_pretrained(workdir / "model")

    def n_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    kept = []
    for p in pairs:
        # +2 leaves room for a BOS and the EOS either library may add
        if n_tokens(p.prompt) + max(n_tokens(p.chosen), n_tokens(p.rejected)) + 2 <= args.max_length:
            kept.append({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected})
        if len(kept) == args.pairs:
            break
    if len(kept) < args.steps * args.batch_size:
        sys.exit(f"only {len(kept)} HH pairs fit max_length {args.max_length}; lower --steps or raise --max_length")
    (workdir / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")


# ----------------------------------------------------------------------------- children
def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def child_rlhfkit(args, workdir: Path) -> dict:
    from rlhfkit.models import load_policy
    from rlhfkit.recipes.dpo import DPOConfig, run

    # warm-up load outside the clock: transformers imports its model code lazily, which costs
    # seconds; the TRL child pays that before its clock starts too (it loads the model first)
    load_policy(str(workdir / "model"), padding_side="right")

    out = Path(tempfile.mkdtemp(dir=workdir))
    config = DPOConfig(
        model=str(workdir / "model"),
        data=str(workdir / "pairs.jsonl"),
        eval_fraction=0.0,
        loss="sigmoid",
        beta=0.1,
        reference="cached",
        max_length=args.max_length,
        max_prompt_length=args.max_length - 4,
        output_dir=str(out),
        learning_rate=1e-6,
        batch_size=args.batch_size,
        micro_batch_size=args.micro_batch_size or args.batch_size,
        max_steps=args.steps,
        epochs=1.0,
        warmup_ratio=0.0,
        save_every=0,
        tensorboard=False,
        threads=args.threads,
        gradient_checkpointing=bool(args.gradient_checkpointing),
        precision=args.precision,
    )
    t0 = time.perf_counter()
    metrics = run(config)
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "samples_per_s": args.steps * args.batch_size / wall,
        "own_samples_per_s": metrics.get("samples_per_s"),
        "peak_rss_mb": peak_rss_mb(),
    }


def child_trl(args, workdir: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [json.loads(l) for l in (workdir / "pairs.jsonl").read_text().splitlines()]
    dataset = Dataset.from_list(rows)
    tokenizer = AutoTokenizer.from_pretrained(workdir / "model")
    model = AutoModelForCausalLM.from_pretrained(workdir / "model", dtype=torch.float32)
    out = tempfile.mkdtemp(dir=workdir)
    micro = args.micro_batch_size or args.batch_size  # same micro-batch and accumulation as rlhfkit
    config = DPOConfig(
        output_dir=out,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=args.batch_size // micro,
        max_steps=args.steps,
        learning_rate=1e-6,
        lr_scheduler_type="linear",
        warmup_steps=0,
        max_length=args.max_length,
        beta=0.1,
        loss_type=["sigmoid"],
        report_to="none",
        save_strategy="no",
        logging_steps=max(1, args.steps),
        seed=0,
        dataloader_num_workers=0,
        precompute_ref_log_probs=args.trl_precompute,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
        gradient_checkpointing=bool(args.gradient_checkpointing),
        # stated, never left to DPOConfig's default (bf16=True): both libraries run at
        # --precision, or the comparison measures precision instead of the libraries
        bf16=args.precision == "bf16",
        fp16=False,
    )
    t0 = time.perf_counter()
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    trainer.save_model(out)
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "samples_per_s": args.steps * args.batch_size / wall,
        "own_samples_per_s": result.metrics.get("train_samples_per_second"),
        "peak_rss_mb": peak_rss_mb(),
    }


def run_child(name: str, argv: list[str], workdir: Path) -> dict:
    env = {
        **os.environ,
        "RLHFKIT_NO_PROGRESS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    cmd = [sys.executable, __file__, *argv, "--child", name, "--workdir", str(workdir)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{name} run failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child:
        result = (
            child_rlhfkit(args, Path(args.workdir)) if args.child == "rlhfkit" else child_trl(args, Path(args.workdir))
        )
        print(json.dumps(result))
        return 0
    with tempfile.TemporaryDirectory(prefix="dpo_bench_") as tmp:
        workdir = Path(tmp)
        prepare(args, workdir)
        results: dict[str, list[dict]] = {"rlhfkit": [], "trl": []}
        for i in range(args.repeats):
            for name in ("rlhfkit", "trl") if i % 2 == 0 else ("trl", "rlhfkit"):
                results[name].append(run_child(name, argv, workdir))
                print(f"repeat {i + 1} {name}: {json.dumps(results[name][-1])}", flush=True)
    med = {
        name: {k: statistics.median(r[k] for r in rs) for k in ("samples_per_s", "peak_rss_mb", "wall_s")}
        for name, rs in results.items()
    }
    trl_ref = "precomputed" if args.trl_precompute else "reference model at every step"
    micro = args.micro_batch_size or args.batch_size
    print(
        f"\nDPO (sigmoid), model {args.model}, {args.steps} steps x batch {args.batch_size} (both: micro-batch "
        f"{micro}, accumulated), max_length {args.max_length}, precision {args.precision} in both, medians of "
        f"{args.repeats}; TRL reference: {trl_ref}; "
        f"activation checkpointing: {'on' if args.gradient_checkpointing else 'off'} in both"
    )
    print(f"{'':10}{'samples/s':>12}{'peak RSS MB':>14}{'wall s':>10}")
    for name, m in med.items():
        print(f"{name:10}{m['samples_per_s']:12.4f}{m['peak_rss_mb']:14.0f}{m['wall_s']:10.2f}")
    ratio = med["rlhfkit"]["samples_per_s"] / med["trl"]["samples_per_s"]
    mem = med["rlhfkit"]["peak_rss_mb"] / med["trl"]["peak_rss_mb"]
    print(f"throughput ratio rlhfkit / TRL: {ratio:.2f}x (goal >= 1.3x); peak memory ratio: {mem:.2f} (goal <= 1.0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
