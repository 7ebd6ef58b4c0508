"""The two rollout speed-ups measured alone: native sampler vs ``model.generate``, and the
prefix-shared teacher-forced pass vs the plain one.

    .venv/bin/python benchmarks/rollout_engines.py --model tiny --repeats 20
    .venv/bin/python benchmarks/rollout_engines.py --model smollm2-135m --repeats 5

Same prompts (4 movie-review openings x 4 samples, as the throughput benchmark), 32 new tokens,
temperature 1, one torch thread. Reports the median seconds of each, their ratio, whether the
two samplers drew the same tokens (same seed), and the largest log-prob difference of the two
passes. The forward + backward timing runs the training forward without activation checkpointing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="tiny or smollm2-135m")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from rlhfkit.core.masking import truncate_after_eos
    from rlhfkit.models import load_policy, tiny_causal_lm, tiny_tokenizer
    from rlhfkit.rollout import HFGenerator, SamplingConfig, response_logprobs, tokenize_prompts
    from rlhfkit.rollout.native import NativeLlamaGenerator
    from rl_throughput_vs_trl import prompts_list

    if a.model == "tiny":
        tok = tiny_tokenizer(vocab_size=512)
        tok.padding_side = "left"
        model = tiny_causal_lm(tok, hidden_size=64, num_layers=2, num_heads=4, seed=0)
    else:
        model, tok = load_policy(a.model)
    model.eval()
    prompts = [q for q in prompts_list(4) for _ in range(4)]
    ids, mask = tokenize_prompts(prompts, tok, 64)
    s = SamplingConfig(max_new_tokens=a.max_new_tokens, temperature=1.0)
    hf = HFGenerator(s, tok.eos_token_id, tok.pad_token_id)
    native = NativeLlamaGenerator(s, tok.eos_token_id, tok.pad_token_id)
    same = torch.equal(hf.generate(model, ids, mask, 3), native.generate(model, ids, mask, 3))
    t_hf = median_seconds(lambda: hf.generate(model, ids, mask, 0), a.repeats)
    t_native = median_seconds(lambda: native.generate(model, ids, mask, 0), a.repeats)
    raw = native.generate(model, ids, mask, 1)
    rid, rmask, _ = truncate_after_eos(raw, tok.eos_token_id, tok.pad_token_id)

    def passes(share: bool, grad: bool):
        def go():
            if grad:
                model.train()
                response_logprobs(model, ids, mask, rid, rmask, 1.0, share_prompts=share).sum().backward()
                model.zero_grad(set_to_none=True)
                model.eval()
            else:
                with torch.no_grad():
                    response_logprobs(model, ids, mask, rid, rmask, 1.0, share_prompts=share)

        return go

    with torch.no_grad():
        diff = float(
            (
                response_logprobs(model, ids, mask, rid, rmask, 1.0, share_prompts=True)
                - response_logprobs(model, ids, mask, rid, rmask, 1.0, share_prompts=False)
            )
            .abs()
            .max()
        )
    from rlhfkit.rollout.shared_prompt import prompt_groups, worth_sharing

    shared_used = worth_sharing(model.config, len(prompts), prompt_groups(ids, mask), ids.shape[1], rid.shape[1])
    row = {
        "model": a.model,
        "threads": a.threads,
        "rows": len(prompts),
        "prompt_tokens": ids.shape[1],
        "response_tokens": rid.shape[1],
        "generate_hf_s": round(t_hf, 4),
        "generate_native_s": round(t_native, 4),
        "generate_speedup": round(t_hf / t_native, 3),
        "same_tokens_same_seed": same,
        "prefix_sharing_applies": shared_used,
    }
    for grad in (False, True):
        name = "fwd_bwd" if grad else "nograd"
        t_plain = median_seconds(passes(False, grad), a.repeats)
        t_shared = median_seconds(passes(True, grad), a.repeats)
        row.update(
            {
                f"{name}_plain_s": round(t_plain, 4),
                f"{name}_shared_s": round(t_shared, 4),
                f"{name}_speedup": round(t_plain / t_shared, 3),
            }
        )
    row["max_logprob_diff"] = diff
    print(json.dumps(row))
    print(f"\ncommand: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main(sys.argv[1:])
