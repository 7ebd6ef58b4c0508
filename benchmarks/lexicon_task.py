"""A small sentiment task for ``rlhfkit loop`` runs that take seconds instead of an hour: a tiny
Llama that writes short sentences over a fixed lexicon, and a gold judge that counts the
lexicon's positive and negative words. Used by ``benchmarks/active_vs_random.py --config
configs/loop_lexicon_tiny.yaml`` to compare the selections over many seeds.

    .venv/bin/python benchmarks/lexicon_task.py --out outputs/lexicon_policy    # prompts + policy (about 1 min)

The policy: a byte-level BPE tokenizer and a 2-layer Llama (hidden 64) behaviour-cloned for
``--steps`` SFT steps on prompt -> continuation pairs whose continuations are six words, each
neutral with probability 0.7 and otherwise positive or negative at random; it then writes such
sentences itself, so a round of GRPO has sentiment to find. Gold (``fn:benchmarks.lexicon_task:gold``):
(positive words - negative words) / 3 of the response, the simulated labelers' scorer and the
loop's evaluation, never the policy's reward.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

POSITIVE = "good great happy wonderful love fine funny best excellent".split()
NEGATIVE = "bad awful sad boring hate dull slow worst poor".split()
NEUTRAL = "the film movie story actor plot scene was is a an and but very really quite it this".split()


def gold(prompts, responses):
    """(positive - negative lexicon words in the response) / 3."""
    out = []
    for r in responses:
        words = r.lower().replace(".", " ").split()
        out.append((sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)) / 3)
    return out


def sentence(rng: random.Random, n: int, p_sentiment: float = 0.3) -> str:
    words = []
    for _ in range(n):
        if rng.random() < p_sentiment:
            words.append(rng.choice(POSITIVE if rng.random() < 0.5 else NEGATIVE))
        else:
            words.append(rng.choice(NEUTRAL))
    return " ".join(words)


def make(out: Path, steps: int = 300, seed: int = 0, threads: int = 1) -> Path:
    """Write ``out/prompts.jsonl`` (1,000 prompts of three neutral words) and the behaviour-cloned
    policy ``out/policy`` (HF folder); returns the policy folder. Deterministic for a seed."""
    import torch

    from rlhfkit.models import tiny_causal_lm, tiny_tokenizer
    from rlhfkit.recipes import sft
    from rlhfkit.training.config import load_config

    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    prompts = [" ".join(rng.choice(NEUTRAL) for _ in range(3)) for _ in range(1000)]
    (out / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    demos = [{"prompt": p, "completion": " " + sentence(rng, 6) + " ."} for p in prompts[:600]]
    (out / "demos.jsonl").write_text("".join(json.dumps(d) + "\n" for d in demos))
    corpus = [d["prompt"] + d["completion"] for d in demos] + [" ".join(POSITIVE + NEGATIVE + NEUTRAL)] * 20
    tok = tiny_tokenizer(corpus, vocab_size=300)
    init = out / "init"
    tiny_causal_lm(tok, hidden_size=64, num_layers=2, num_heads=4, seed=seed).save_pretrained(init)
    tok.save_pretrained(init)
    cfg = load_config(
        sft.SFTConfig,
        None,
        [
            "--data",
            str(out / "demos.jsonl"),
            "--model",
            str(init),
            "--output_dir",
            str(out / "sft"),
            "--max_steps",
            str(steps),
            "--batch_size",
            "16",
            "--micro_batch_size",
            "16",
            "--learning_rate",
            "3e-3",
            "--eval_fraction",
            "0.05",
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
    sft.run(cfg)
    return out / "sft" / "model"


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="outputs/lexicon_policy")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    policy = make(Path(a.out), a.steps, a.seed)
    print(f"lexicon task: prompts {Path(a.out) / 'prompts.jsonl'}, policy {policy}")


if __name__ == "__main__":
    main(sys.argv[1:])
