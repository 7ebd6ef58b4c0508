"""Learning benchmark: synthetic human feedback -> reward model -> PPO / GRPO, judged by a gold scorer.

    .venv/bin/python benchmarks/rl_learning_sentiment.py --quick                  # tiny model, minutes
    .venv/bin/python benchmarks/rl_learning_sentiment.py --model smollm2-135m --rm_model minilm-l6 \\
        --budget_minutes 20 --trl

1. Prompts: the first 8 words of the movie reviews (shared data); a fixed held-out set.
2. Simulated labelers: two samples of the policy per prompt; the labeler prefers the one with
   the higher VADER compound + Gaussian noise (``--label_noise``) -> preference pairs.
3. A reward model is trained on those pairs (``rlhfkit reward train``).
4. PPO and GRPO optimise that reward model with a KL penalty (wall-clock budget each); the
   policy never sees VADER. With ``--trl``, TRL's GRPOTrainer runs against the same reward
   model for the same wall-clock.
5. Held-out: mean VADER of greedy-free samples (temperature 1) before / after, and the KL to the
   reference per sequence (sum over tokens of log pi - log ref on the policy's own samples).
Prints one JSON line per method and a markdown table; plots gold vs KL over training.
Goal (issue 3): +0.3 held-out VADER within 20 minutes at KL <= 5 nats / sequence.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import torch


def sample_texts(model, tokenizer, prompts, max_new_tokens, seed, batch=32):
    from rlhfkit.rollout import SamplingConfig, make_sampler, rollout

    gen = make_sampler(
        model,
        SamplingConfig(max_new_tokens=max_new_tokens, temperature=1.0),
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    out = []
    for i in range(0, len(prompts), batch):
        out.append(rollout(gen, model, tokenizer, prompts[i : i + batch], seed=seed + i, logprob_batch_size=batch))
    return out


@torch.no_grad()
def evaluate(model, reference, tokenizer, prompts, max_new_tokens, seed=123) -> dict:
    """Held-out mean VADER of the policy's samples and mean per-sequence KL(pi || ref)."""
    from rlhfkit.rewards import build_reward
    from rlhfkit.rollout import response_logprobs

    vader = build_reward("vader")
    golds, kls = [], []
    for ro in sample_texts(model, tokenizer, prompts, max_new_tokens, seed):
        golds.append(vader(ro.prompts, ro.responses))
        ref = response_logprobs(reference, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask, 1.0)
        kls.append(((ro.logprobs - ref) * ro.response_mask).sum(1))
    return {"gold": float(torch.cat(golds).mean()), "kl": float(torch.cat(kls).mean())}


def make_pairs(model, tokenizer, prompts, max_new_tokens, noise, seed, path: Path) -> dict:
    from rlhfkit.rewards import build_reward

    vader = build_reward("vader")
    rng = random.Random(seed)
    a = sample_texts(model, tokenizer, prompts, max_new_tokens, seed=seed)
    b = sample_texts(model, tokenizer, prompts, max_new_tokens, seed=seed + 10**6)
    rows, agree, decided = [], 0, 0
    for ra, rb in zip(a, b):
        sa, sb = vader(ra.prompts, ra.responses), vader(rb.prompts, rb.responses)
        for p, x, y, gx, gy in zip(ra.prompts, ra.responses, rb.responses, sa.tolist(), sb.tolist()):
            if x == y or not x.strip() or not y.strip():
                continue
            nx, ny = gx + rng.gauss(0, noise), gy + rng.gauss(0, noise)
            chosen, rejected = (x, y) if nx >= ny else (y, x)
            if gx != gy:  # a pair the gold judge scores equal has no right answer: not counted either way
                decided += 1
                agree += (nx >= ny) == (gx > gy)
            rows.append({"prompt": p, "chosen": chosen, "rejected": rejected})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return {
        "pairs": len(rows),
        "labeler_agreement_with_gold": agree / max(1, decided),
        "labeler_agreement_pairs": decided,
        "gold_tie_pairs": len(rows) - decided,
    }


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--rm_model", default="minilm-l6")
    p.add_argument("--out", default="outputs/bench_sentiment")
    p.add_argument("--n_pair_prompts", type=int, default=1024)
    p.add_argument("--n_heldout", type=int, default=128)
    p.add_argument("--label_noise", type=float, default=0.3)
    p.add_argument("--max_new_tokens", type=int, default=24)
    p.add_argument("--kl_coef", type=float, default=0.05)
    p.add_argument("--budget_minutes", type=float, default=20.0, help="wall-clock per RL method")
    p.add_argument("--methods", default="ppo,grpo")
    p.add_argument("--trl", action="store_true", help="also TRL GRPOTrainer, same RM and wall-clock")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny model, few prompts, ~1 minute per method")
    p.add_argument(
        "--from_pipeline",
        default="",
        help="reuse a finished `rlhfkit pipeline` run of the sentiment preset: its simulated-labeler "
        "reward model, training prompts and held-out prompts (steps 1-3 skipped)",
    )
    p.add_argument("--eval_repeats", type=int, default=1, help="samples per held-out prompt in the evaluation")
    p.add_argument("--learning_rate", type=float, default=4e-5, help="every method's learning rate (not --quick)")
    p.add_argument(
        "--batch_size",
        type=int,
        default=16,
        help="completions per optimiser step, every method (GRPO / TRL: batch / 4 prompts x 4 samples)",
    )
    p.add_argument(
        "--checkpoint_every",
        type=int,
        default=0,
        help="rlhfkit methods: also save every N steps and evaluate each checkpoint on the held-out "
        "prompts afterwards (gold and KL against the minutes of training that produced it); "
        "the saving counts against the wall-clock budget",
    )
    p.add_argument(
        "--combine",
        default="",
        help="only merge the results.json of these comma-separated --out folders (methods run as "
        "separate processes, e.g. at the same time on different cores) into --out: one table, one plot",
    )
    a = p.parse_args(argv)
    if a.combine:
        return combine([Path(d) for d in a.combine.split(",") if d], Path(a.out))
    os.environ.setdefault("RLHFKIT_NO_PROGRESS", "1")
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from rlhfkit.data.shared_sets import load_movie_review_prompts
    from rlhfkit.models import load_policy
    from rlhfkit.recipes import grpo, ppo, reward
    from rlhfkit.training.config import load_config

    if a.quick:
        from rlhfkit.models import tiny_causal_lm, tiny_tokenizer

        tok = tiny_tokenizer(vocab_size=512)
        tiny = tiny_causal_lm(tok, hidden_size=64, num_layers=2, num_heads=4)
        a.model = a.rm_model = str(out / "tiny")
        tiny.save_pretrained(a.model)
        tok.save_pretrained(a.model)
        a.n_pair_prompts, a.n_heldout, a.max_new_tokens, a.budget_minutes = 128, 32, 12, 0.5
    if a.from_pipeline:
        pipe = Path(a.from_pipeline)

        def read(f):
            return [json.loads(l)["prompt"] for l in (pipe / "feedback" / f).read_text().splitlines()]

        train, held = read("train_prompts.jsonl"), read("eval_prompts.jsonl")
    else:
        all_prompts = [r.prompt for r in load_movie_review_prompts(n_words=8)]
        random.Random(0).shuffle(all_prompts)
        held, train = all_prompts[: a.n_heldout], all_prompts[a.n_heldout :]
    held = held * a.eval_repeats
    (out / "train_prompts.jsonl").write_text("".join(json.dumps({"prompt": x}) + "\n" for x in train))
    policy, tokenizer = load_policy(a.model)
    if not Path(a.model).is_dir():  # TRL loads by path: the dequantised SmolLM2 as a local folder
        a.model = str(out / "init_model")
        policy.save_pretrained(a.model)
        tokenizer.save_pretrained(a.model)
    reference = policy
    before = evaluate(policy, reference, tokenizer, held, a.max_new_tokens)
    print(json.dumps({"stage": "before", **before, "heldout_samples": len(held)}), flush=True)
    if a.from_pipeline:
        rm_spec = f"rm:{Path(a.from_pipeline) / 'reward' / 'model'}"
    else:
        t = time.perf_counter()
        pair_stats = make_pairs(
            policy, tokenizer, train[: a.n_pair_prompts], a.max_new_tokens, a.label_noise, 1, out / "pairs.jsonl"
        )
        rm_cfg = load_config(
            reward.RewardConfig,
            None,
            [
                "--model",
                a.rm_model,
                "--data",
                str(out / "pairs.jsonl"),
                "--output_dir",
                str(out / "rm"),
                "--epochs",
                "3",
                "--max_length",
                "64",
                "--resume",
                "false",
                "--tensorboard",
                "false",
                "--learning_rate",
                "1e-3" if a.quick else "1e-4",
            ],
        )
        rm_metrics = reward.run(rm_cfg)
        rm_seconds = time.perf_counter() - t
        print(
            json.dumps(
                {
                    "stage": "reward_model",
                    **pair_stats,
                    **{k: v for k, v in rm_metrics.items() if "eval" in k},
                    "seconds": round(rm_seconds, 1),
                }
            ),
            flush=True,
        )
        rm_spec = f"rm:{out / 'rm' / 'model'}"
    common = [
        "--model",
        a.model,
        "--prompts",
        str(out / "train_prompts.jsonl"),
        "--reward",
        rm_spec,
        "--gold_reward",
        "vader",
        "--max_new_tokens",
        str(a.max_new_tokens),
        "--kl_coef",
        str(a.kl_coef),
        "--tensorboard",
        "false",
        "--resume",
        "false",
        "--sample_every",
        "20",
        "--save_every",
        "0",
        "--learning_rate",
        "1e-3" if a.quick else str(a.learning_rate),
    ]
    bs = str(a.batch_size)
    recipes = {
        "ppo": (
            ppo,
            ppo.PPOConfig,
            [
                "--batch_size",
                bs,
                "--micro_batch_size",
                str(a.batch_size // 2),
                "--ppo_epochs",
                "2",
                "--num_minibatches",
                "2",
            ],
        ),
        "grpo": (grpo, grpo.GRPOConfig, ["--batch_size", bs, "--micro_batch_size", "16", "--num_generations", "4"]),
    }
    budget_s = a.budget_minutes * 60
    results = []
    for method in [m for m in a.methods.split(",") if m]:  # --methods "" with --trl: TRL alone
        module, cls, extra = recipes[method]
        # the recipe stops itself after the step that ends the wall-clock budget (max_minutes),
        # as the TRL callback below does; constant learning rate in both (no schedule to finish)
        saving = (
            ["--save_every", str(a.checkpoint_every), "--keep_checkpoints", str(10**6)] if a.checkpoint_every else []
        )
        cfg = load_config(
            cls,
            None,
            [
                *common,
                *extra,
                "--output_dir",
                str(out / method),
                "--max_steps",
                str(10**6),
                "--max_minutes",
                str(a.budget_minutes),
                "--lr_schedule",
                "constant",
                *saving,
            ],
        )
        t, started = time.perf_counter(), time.time()
        module.run(cfg)
        seconds = time.perf_counter() - t
        trained, _ = load_policy(str(out / method / "model"))
        after = evaluate(trained, reference, tokenizer, held, a.max_new_tokens)
        steps = max(json.loads(l).get("step", 0) for l in (out / method / "metrics.jsonl").read_text().splitlines())
        row = {
            "method": f"rlhfkit {method}",
            "steps": steps,
            "minutes": round(seconds / 60, 2),
            "gold_before": round(before["gold"], 4),
            "gold_after": round(after["gold"], 4),
            "gold_gain": round(after["gold"] - before["gold"], 4),
            "kl_after": round(after["kl"], 3),
        }
        if a.checkpoint_every:
            row["checkpoints"] = evaluate_checkpoints(
                out / method, started, a.model, reference, tokenizer, held, a.max_new_tokens, before["gold"]
            )
        results.append(row)
        print(json.dumps(row), flush=True)
    if a.trl:
        results.append(run_trl(a, out, train, held, rm_spec, budget_s, reference, tokenizer, before))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(out, [m for m in a.methods.split(",") if m], results)
    print_tables(results)
    print(f"\ncommand: {' '.join([Path(sys.executable).name, *sys.argv])}")


def print_tables(results: list[dict]) -> None:
    print("\n| method | steps | minutes | held-out VADER before | after | gain | KL nats/seq |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['method']} | {r['steps']} | {r['minutes']} | {r['gold_before']} | {r['gold_after']} | "
            f"{r['gold_gain']} | {r['kl_after']} |"
        )
    for r in results:
        if r.get("checkpoints"):
            print(f"\n{r['method']}, checkpoints (minutes = wall-clock from the start of the run to the save):")
            print("| step | minutes | held-out VADER | gain | KL nats/seq |\n|---|---|---|---|---|")
            for c in r["checkpoints"]:
                print(f"| {c['step']} | {c['minutes']} | {c['gold']} | {c['gold_gain']} | {c['kl']} |")


def combine(dirs: list[Path], out: Path) -> None:
    results, methods, runs = [], [], []
    for d in dirs:
        for r in json.loads((d / "results.json").read_text()):
            results.append(r)
            if r["method"].startswith("rlhfkit "):
                methods.append(r["method"].split()[-1])
                runs.append(d / methods[-1])
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(out, methods, results, runs)
    print_tables(results)
    print(f"\ncommand: {' '.join([Path(sys.executable).name, *sys.argv])}")


def evaluate_checkpoints(
    run_dir: Path, started: float, model_spec: str, reference, tokenizer, held, max_new_tokens: int, gold_before: float
) -> list[dict]:
    """Held-out gold and KL of every ``checkpoint-<step>`` in ``run_dir``; ``minutes`` is the wall
    clock from ``started`` (before the recipe loaded its models) to the metrics line of that step.
    The optimiser state is deleted after each evaluation (a gigabyte per checkpoint on SmolLM2)."""
    from rlhfkit.models import load_policy
    from rlhfkit.training.checkpoint import list_checkpoints

    times = {
        r["step"]: r["time"]
        for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
        if "time" in r
    }
    policy, _ = load_policy(model_spec)
    rows = []
    for ckpt in list_checkpoints(run_dir):
        step = int(ckpt.name.split("-")[1])
        weights = torch.load(ckpt / "model.pt", map_location="cpu", weights_only=True)
        policy.load_state_dict({k.removeprefix("policy."): v for k, v in weights.items() if k.startswith("policy.")})
        res = evaluate(policy, reference, tokenizer, held, max_new_tokens)
        rows.append(
            {
                "step": step,
                "minutes": round((times[step] - started) / 60, 2),
                "gold": round(res["gold"], 4),
                "gold_gain": round(res["gold"] - gold_before, 4),
                "kl": round(res["kl"], 3),
            }
        )
        print(json.dumps({"checkpoint": str(ckpt), **rows[-1]}), flush=True)
        (ckpt / "optimizer.pt").unlink(missing_ok=True)
    return rows


def run_trl(a, out, train, held, rm_spec, budget_s, reference, tokenizer, before) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlhfkit.models import load_policy
    from rlhfkit.rewards import build_reward

    rm = build_reward(rm_spec)

    def rm_reward(prompts, completions, **kw):
        return rm(prompts, completions).tolist()

    class Budget(TrainerCallback):
        def __init__(self):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if time.perf_counter() - self.start > budget_s:
                control.should_training_stop = True

    cfg = GRPOConfig(
        output_dir=str(out / "trl_grpo"),
        use_cpu=True,
        bf16=False,
        max_steps=10**6,
        per_device_train_batch_size=a.batch_size,
        num_generations=4,
        max_completion_length=a.max_new_tokens,
        lr_scheduler_type="constant",
        beta=a.kl_coef,
        learning_rate=1e-3 if a.quick else a.learning_rate,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        loss_type="grpo",
        disable_dropout=True,
        temperature=1.0,
        top_k=0,
        gradient_checkpointing=False,
    )  # rlhfkit does not checkpoint either: same compute per step
    trainer = GRPOTrainer(
        model=a.model,
        reward_funcs=rm_reward,
        args=cfg,
        processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"prompt": train}),
    )
    budget = Budget()
    trainer.add_callback(budget)
    trainer.train()
    minutes = (time.perf_counter() - budget.start) / 60
    trainer.save_model(str(out / "trl_grpo" / "model"))
    trained, _ = load_policy(str(out / "trl_grpo" / "model"))
    after = evaluate(trained, reference, tokenizer, held, a.max_new_tokens)
    row = {
        "method": "TRL GRPOTrainer",
        "steps": trainer.state.global_step,
        "minutes": round(minutes, 2),
        "gold_before": round(before["gold"], 4),
        "gold_after": round(after["gold"], 4),
        "gold_gain": round(after["gold"] - before["gold"], 4),
        "kl_after": round(after["kl"], 3),
    }
    print(json.dumps(row), flush=True)
    return row


def plot(out: Path, methods: list[str], results: list[dict], runs: list[Path] | None = None) -> None:
    """Gold vs KL: rlhfkit's training batches as dots, every method's held-out before -> after as
    arrows (and its held-out checkpoints when evaluated). ``runs``: the folder of each method's
    run (default ``out / method``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for m, run in zip(methods, runs or [out / m for m in methods]):
        rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
        rows = [r for r in rows if "gold" in r and "kl" in r]
        ax.plot(
            [r["kl"] for r in rows], [r["gold"] for r in rows], ".", label=f"rlhfkit {m} (training batches)", alpha=0.35
        )
    for i, r in enumerate(results):
        color = f"C{len(methods) + i}"
        if r.get("checkpoints"):
            cs = r["checkpoints"]
            ax.plot(
                [c["kl"] for c in cs],
                [r["gold_before"] + c["gold_gain"] for c in cs],
                "s--",
                color=color,
                alpha=0.6,
                ms=4,
                label=f"{r['method']}, held-out checkpoints",
            )
        ax.annotate(
            "",
            xy=(r["kl_after"], r["gold_after"]),
            xytext=(0.0, r["gold_before"]),
            arrowprops={"arrowstyle": "->", "color": color, "lw": 2},
        )
        ax.plot(
            [r["kl_after"]],
            [r["gold_after"]],
            "o",
            color=color,
            label=f"{r['method']}, held-out ({r['minutes']:.0f} min)",
        )
    ax.set_xlabel("KL(pi || ref), nats / sequence")
    ax.set_ylabel("gold judge: mean VADER compound")
    ax.set_title("Synthetic human feedback: gold score vs KL")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "gold_vs_kl.png", dpi=120)


if __name__ == "__main__":
    main(sys.argv[1:])
