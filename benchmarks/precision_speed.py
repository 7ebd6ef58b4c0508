"""bf16 autocast against float32 on SmolLM2-135M: the time of a training step, a log-prob pass
and a generation, interleaved in one process (medians of repeats), and how far bf16's numbers are
from float32's.

    .venv/bin/python benchmarks/precision_speed.py [--threads 1] [--repeats 5] [--batch 8] [--length 256]

A training step is what ``fit`` does for SFT: forward in autocast (``core.precision``: the
head kept float32), token-mean cross-entropy, backward, AdamW step, on ``--batch`` x ``--length``
tokens of HH-RLHF dialogues. The log-prob pass is ``rollout.response_logprobs``-style (no grad).
Generation is the native sampler (``--engine hf``: ``model.generate``), greedy, 32 new tokens for ``--batch`` prompts. The two
precisions take turns on the same model and data (the weights are restored after each step), so
machine load falls on both alike.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument(
        "--engine",
        default="native",
        choices=("native", "hf"),
        help="sampler of the generation measure (hf: model.generate on a bf16-wrapped copy)",
    )
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from rlhfkit.models import load_policy
    from rlhfkit.rollout import SamplingConfig, make_sampler
    from rlhfkit.core.precision import autocast, autocast_forward, keep_head_fp32

    model, tok = load_policy(a.model, padding_side="right")
    keep_head_fp32(model)  # no effect in float32
    with gzip.open(a.data, "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["chosen"] for _, line in zip(range(a.batch), f)]
    enc = tok(texts, return_tensors="pt", padding="max_length", truncation=True, max_length=a.length)
    ids, mask = enc.input_ids, enc.attention_mask
    labels = ids.masked_fill(mask == 0, -100)
    start = copy.deepcopy(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    opt_start = copy.deepcopy(opt.state_dict())

    def train_step(precision: str) -> tuple[float, float]:
        opt.load_state_dict(opt_start)
        model.train()
        t0 = time.perf_counter()
        with autocast(precision):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - t0
        model.load_state_dict(start)  # the other passes see the initial weights
        return seconds, float(loss.detach())

    def logprob_pass(precision: str) -> tuple[float, torch.Tensor]:
        model.eval()
        t0 = time.perf_counter()
        with torch.no_grad(), autocast(precision):
            logits = model(input_ids=ids, attention_mask=mask).logits
            lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
        return time.perf_counter() - t0, (lp * mask[:, 1:]).sum(-1)

    gen_tok = copy.copy(tok)
    gen_tok.padding_side = "left"
    prompts = gen_tok([t[:200] for t in texts], return_tensors="pt", padding=True)
    sampler = make_sampler(
        model, SamplingConfig(max_new_tokens=32, temperature=0.0), tok.eos_token_id, tok.pad_token_id, a.engine
    )
    # model.generate calls the module, so the hf engine needs the forward wrapped (a copy, so the
    # other measures keep the plain model); the native sampler reads the flag alone
    bf16_model = None
    if a.engine == "hf":
        bf16_model = copy.deepcopy(model)
        autocast_forward(bf16_model, "bf16")

    def generation(precision: str) -> tuple[float, torch.Tensor]:
        m = bf16_model if (bf16_model is not None and precision == "bf16") else model
        m.eval()
        if bf16_model is None:
            m._rlhfkit_autocast = precision  # what autocast_forward sets; the native sampler reads it
        t0 = time.perf_counter()
        out = sampler.generate(m, prompts.input_ids, prompts.attention_mask, seed=0)
        return time.perf_counter() - t0, out

    assert autocast_forward is not None
    results: dict = {k: {"fp32": [], "bf16": []} for k in ("train_step", "logprob_pass", "generation")}
    values: dict = {}
    for r in range(a.repeats + 1):  # the first round warms up and is not counted
        for precision in ("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32"):
            for name, fn in (("train_step", train_step), ("logprob_pass", logprob_pass), ("generation", generation)):
                seconds, value = fn(precision)
                if r:
                    results[name][precision].append(seconds)
                values[(name, precision)] = value
    model._rlhfkit_autocast = None
    out = {
        "model": a.model,
        "threads": a.threads,
        "batch": a.batch,
        "length": a.length,
        "repeats": a.repeats,
        "engine": a.engine,
    }
    for name, by in results.items():
        f, b = statistics.median(by["fp32"]), statistics.median(by["bf16"])
        out[name] = {"fp32_s": round(f, 3), "bf16_s": round(b, 3), "speedup": round(f / b, 2)}
    out["train_loss"] = {
        "fp32": round(values[("train_step", "fp32")], 5),
        "bf16": round(values[("train_step", "bf16")], 5),
    }
    d = (values[("logprob_pass", "bf16")] - values[("logprob_pass", "fp32")]).abs()
    out["sequence_logprob_abs_diff"] = {
        "mean": round(float(d.mean()), 4),
        "max": round(float(d.max()), 4),
        "tokens_per_sequence": round(float(mask[:, 1:].sum(-1).float().mean()), 1),
    }
    g32, g16 = values[("generation", "fp32")], values[("generation", "bf16")]
    out["greedy_tokens_equal"] = round(float((g32 == g16).float().mean()), 3)
    print(json.dumps(out))
    for name in results:
        x = out[name]
        print(f"| {name} | {x['fp32_s']:.3f} s | {x['bf16_s']:.3f} s | {x['speedup']:.2f}x |")


if __name__ == "__main__":
    main(sys.argv[1:])
