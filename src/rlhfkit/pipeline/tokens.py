"""Per-token KL and per-token shaped reward of a few held-out responses, for the report's shading.

For each prompt the trained policy samples one response (``rollout``: rendered and sampled as the
evaluation does, cut after the first EOS, log-probs recomputed teacher-forced at the sampling
temperature); the reference scores the same tokens teacher-forced. Per token t of the response:

    kl_t     = log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)          (k1, core.kl)
    reward_t = -beta * kl_t  (+ score(x, y) on the last token)            (core.reward_shaping)

which is exactly the reward PPO's GAE sees (docs/PPO_CHECKLIST.md #7 (per-token KL penalty));
``score`` is the reward model's, ``gold`` the gold judge's (shown beside, never in the shaped reward).
"""

from __future__ import annotations

import torch


@torch.no_grad()
def token_samples(
    policy_spec: str,
    reference_spec: str,
    prompts: list[str],
    reward_spec: str,
    gold_spec: str,
    kl_coef: float,
    max_new_tokens: int,
    temperature: float = 1.0,
    max_prompt_length: int = 0,
    seed: int = 0,
    top_p: float = 1.0,
    top_k: int = 0,
    chat_template: bool = False,
) -> list[dict]:
    """One row per prompt: ``prompt``, ``response``, ``tokens`` (decoded one by one), ``kl`` and
    ``reward`` (per token), ``score``, ``gold``, ``seq_kl``, ``kl_coef``."""
    from rlhfkit.core.reward_shaping import per_token_rewards
    from rlhfkit.models import load_policy
    from rlhfkit.rewards import build_reward
    from rlhfkit.rollout import SamplingConfig, make_sampler, response_logprobs, rollout, step_seed
    from rlhfkit.training.logging import progress_bar, ticking

    if not prompts:
        return []
    policy, tok = load_policy(policy_spec)
    reference, _ = load_policy(reference_spec)
    gen = make_sampler(
        policy,
        SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k),
        tok.eos_token_id,
        tok.pad_token_id,
    )
    # four passes of seconds each (a minute on a busy machine): the bar names them
    with progress_bar(4 if gold_spec else 3, desc="eval: per-token shading", unit="pass") as bar, ticking(bar):
        bar.set_postfix_str("policy replies", refresh=True)
        ro = rollout(
            gen,
            policy,
            tok,
            prompts,
            seed=step_seed(seed, 0, salt=31),
            max_prompt_length=max_prompt_length,
            chat_template=chat_template,
        )
        bar.update(1)
        bar.set_postfix_str("reference log-probs", refresh=True)
        ref = response_logprobs(
            reference.eval(), ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask, temperature
        )
        bar.update(1)
        bar.set_postfix_str("reward model", refresh=True)
        score = build_reward(reward_spec)(ro.prompts, ro.responses).float()
        bar.update(1)
        gold = None
        if gold_spec:
            bar.set_postfix_str("gold judge", refresh=True)
            gold = build_reward(gold_spec)(ro.prompts, ro.responses).float()
            bar.update(1)
        bar.set_postfix_str("", refresh=True)
    mask = ro.response_mask.bool()
    rewards, kl = per_token_rewards(score, ro.logprobs.float(), ref.float(), mask, kl_coef, "k1")
    rows = []
    for i in range(len(ro)):
        m = mask[i]
        ids = ro.response_ids[i][m].tolist()
        rows.append(
            {
                "prompt": ro.prompts[i],
                "response": ro.responses[i],
                "tokens": _token_texts(tok, ids),
                "kl": [round(float(x), 5) for x in kl[i][m]],
                "reward": [round(float(x), 5) for x in rewards[i][m]],
                "score": float(score[i]),
                "gold": None if gold is None else float(gold[i]),
                "seq_kl": float(kl[i][m].sum()),
                "kl_coef": kl_coef,
                "eos": bool(ro.has_eos[i]),
            }
        )
    return rows


def _token_texts(tok, ids: list[int]) -> list[str]:
    """The text each token adds: ``decode(ids[:i+1])`` minus ``decode(ids[:i])``, so a character
    split over several byte-level tokens is shown once, on the token that completes it (decoding
    one token alone would show U+FFFD for each part)."""
    out, prev = [], ""
    for i in range(len(ids)):
        text = tok.decode(ids[: i + 1])
        if text.startswith(prev) and not text.endswith("\ufffd"):
            out.append(text[len(prev) :])
            prev = text
        else:  # an incomplete character: nothing yet
            out.append("")
    return out
