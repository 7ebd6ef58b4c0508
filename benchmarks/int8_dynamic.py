"""PyTorch dynamic int8 quantisation of SmolLM2-135M on this CPU: generation time against the
loss it costs. Why rlhfkit does not offer it (docs/BENCHMARKS.md); kept so the next person can
rerun it.

    .venv/bin/python benchmarks/int8_dynamic.py [--threads 1]

Variants: float32; ``torch.ao.quantization.quantize_dynamic`` of every Linear but the LM head,
per tensor and per channel; and of every Linear. Greedy generation of 48 tokens for 8 prompts
(best of 2), and the mean token loss on the first 1,024 tokens of tiny-shakespeare.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore")  # torch.ao.quantization is deprecated (moving to torchao)
    import torch.ao.quantization as q

    from rlhfkit.models import load_policy

    tok = load_policy("smollm2-135m")[1]
    tok.padding_side = "left"
    enc = tok(
        ["The movie was", "I think that the", "Once upon a time", "My favourite food is"] * 2,
        return_tensors="pt",
        padding=True,
    )
    text = (ROOT.parent / "shared" / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:20000]
    ids = tok(text, return_tensors="pt").input_ids[:, :1024]

    def variant(name: str):
        model = load_policy("smollm2-135m")[0].eval()
        linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
        if name == "int8 per tensor, head float32":
            return q.quantize_dynamic(model, linears, dtype=torch.qint8)
        if name == "int8 per channel, head float32":
            return q.quantize_dynamic(model, {n: q.per_channel_dynamic_qconfig for n in linears})
        if name == "int8 per channel, head int8 too":
            return q.quantize_dynamic(model, {n: q.per_channel_dynamic_qconfig for n in linears | {"lm_head"}})
        return model

    print("| variant | greedy generation, 8 x 48 tokens | token loss, 1,024 tokens |\n|---|---|---|")
    for name in (
        "float32",
        "int8 per tensor, head float32",
        "int8 per channel, head float32",
        "int8 per channel, head int8 too",
    ):
        model = variant(name)
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            with torch.no_grad():
                model.generate(**enc, max_new_tokens=48, do_sample=False, pad_token_id=tok.pad_token_id)
            times.append(time.perf_counter() - t0)
        with torch.no_grad():
            loss = float(model(ids, labels=ids).loss)
        print(f"| {name} | {min(times):.2f} s | {loss:.3f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
