"""The loop's ``setup`` stage and the measurement every round ends with.

``stage_setup`` (once, before round 1): the initial policy (a pretrained model, or a tiny one
built from config), the train / held-out prompt split, the gold-judged held-out pairs (the
reward-model accuracy's) and the initial policy's gold score. ``evaluate_policy``: a policy's gold
score and KL to the initial policy on the held-out prompts, and the ensemble's held-out accuracy
(the ``eval`` stage of every round, see ``loop/rounds.py``).
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from rlhfkit.core.kl import sequence_kl
from rlhfkit.data import write_jsonl
from rlhfkit.data.loading import load_prompts, tokenizer_corpus
from rlhfkit.loop.config import LoopConfig
from rlhfkit.loop.ensemble import ensemble_scores
from rlhfkit.models import load_policy
from rlhfkit.rewards import build_reward
from rlhfkit.rollout import SamplingConfig, make_sampler, repeat_each, rollout, rollout_logprobs, step_seed


def stage_setup(c: LoopConfig, d: Path) -> dict:
    if c.init.kind == "tiny":
        from rlhfkit.models import tiny_causal_lm, tiny_tokenizer

        tok = tiny_tokenizer(tokenizer_corpus(c.prompts), vocab_size=c.init.vocab_size)
        model = tiny_causal_lm(
            tok,
            hidden_size=c.init.hidden_size,
            num_layers=c.init.num_layers,
            num_heads=c.init.num_heads,
            seed=c.init.seed,
        )
        model.save_pretrained(d / "model")
        tok.save_pretrained(d / "model")
        init_model = str(d / "model")
    else:
        init_model = c.init.model
    pool = load_prompts(c.prompts, c.prompt_words, unique=True)
    random.Random(c.seed).shuffle(pool)
    held, train = pool[: c.n_eval_prompts], pool[c.n_eval_prompts :]
    if c.max_train_prompts:
        train = train[: c.max_train_prompts]
    write_jsonl(d / "train_prompts.jsonl", [{"prompt": p} for p in train])
    write_jsonl(d / "eval_prompts.jsonl", [{"prompt": p} for p in held])
    # gold-judged held-out pairs (no noise): every pair of heldout_samples samples of the initial
    # policy per held-out prompt whose gold scores differ, the better one as chosen
    gold = build_reward(c.gold)
    samples = []
    for j in range(c.heldout_samples):
        texts = sample_texts(c, init_model, held, seed=step_seed(c.seed, 0, 61 + j))
        samples.append(list(zip(texts, gold(held, texts).tolist())))
    pairs = []
    for i, p in enumerate(held):
        for a in range(c.heldout_samples):
            for b in range(a + 1, c.heldout_samples):
                (x, sx), (y, sy) = samples[a][i], samples[b][i]
                if sx != sy and x != y:
                    pairs.append({"prompt": p, "chosen": x if sx > sy else y, "rejected": y if sx > sy else x})
    write_jsonl(d / "heldout_pairs.jsonl", pairs)
    ev = evaluate_policy(c, init_model, init_model, held, members=None, heldout=None)
    print(
        f"loop: setup: {len(train)} training / {len(held)} held-out prompts, {len(pairs)} gold held-out pairs, "
        f"initial gold {ev['gold']:.4f}"
    )
    return {
        "model": init_model,
        "train_prompts": len(train),
        "eval_prompts": len(held),
        "heldout_pairs": len(pairs),
        "eval": ev,
    }


def loop_sampler(c: LoopConfig, model, tok):
    """The sampler of the loop's policies: ``max_new_tokens`` at ``temperature``, everywhere the
    loop samples (candidates, held-out pairs, evaluation)."""
    return make_sampler(
        model,
        SamplingConfig(max_new_tokens=c.max_new_tokens, temperature=c.temperature),
        tok.eos_token_id,
        tok.pad_token_id,
    )


def sample_texts(c: LoopConfig, model_path: str, prompts: list[str], seed: int) -> list[str]:
    model, tok = load_policy(model_path)
    gen = loop_sampler(c, model, tok)
    with torch.no_grad():
        return list(
            rollout(gen, model, tok, prompts, seed=seed, max_prompt_length=64, behaviour_logprobs=False).responses
        )


def evaluate_policy(
    c: LoopConfig,
    policy_path: str,
    init_path: str,
    prompts: list[str],
    members: list[str] | None,
    heldout: list[dict] | None,
) -> dict:
    """Gold score of the policy's samples on the held-out prompts (``eval_samples`` each, the same
    sampling seed every round), KL to the initial policy (k1 summed over the response, mean over
    samples: ``core.kl.sequence_kl`` with the initial policy's log-probs from
    ``rollout.rollout_logprobs``, as ``rlhfkit eval`` measures it), and the ensemble mean's
    accuracy on the gold-judged held-out pairs."""
    model, tok = load_policy(policy_path)
    gen = loop_sampler(c, model, tok)
    with torch.no_grad():
        ro = rollout(
            gen, model, tok, repeat_each(prompts, c.eval_samples), seed=step_seed(c.seed, 0, 77), max_prompt_length=64
        )
        gold = build_reward(c.gold)(ro.prompts, ro.responses).float()
        if policy_path == init_path:
            kl = 0.0
        else:
            ref, _ = load_policy(init_path)
            kl = float(sequence_kl(ro.logprobs, rollout_logprobs(ref, ro, c.temperature), ro.response_mask).mean())
    out = {
        "gold": float(gold.mean()),
        "gold_std": float(gold.std()) if len(gold) > 1 else 0.0,
        "kl": kl,
        "samples": len(ro),
    }
    if members and heldout:
        s = ensemble_scores(
            members,
            [p["prompt"] for p in heldout] * 2,
            [p["chosen"] for p in heldout] + [p["rejected"] for p in heldout],
            max_length=c.reward.max_length,
        ).mean(0)
        n = len(heldout)
        out["rm_accuracy"] = float((s[:n] > s[n:]).float().mean())
    return out
