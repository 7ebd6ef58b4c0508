"""The gate: a candidate replaces the served version only if it is not worse on held-out prompts.

Candidate and current version each answer the held-out user prompts (the same sampling seeds,
``eval.winrate.generate_responses``); then

- reward-model win rate of candidate over current (``eval.winrate.pair_outcomes`` / ``win_rate``:
  1 win, 1/2 tie, 0 loss per prompt, percentile-bootstrap 95% interval) >= ``min_win_rate``;
- the gold judge's win rate likewise, when ``gold`` is set (a reward spec the learner never
  trains on);
- KL bound: the mean sequence KL of the candidate to v0 on its own replies (``k3``, never
  negative; ``core.kl.sequence_kl``) <= ``max_kl``;
- regressions: mean toxicity (the ``toxicity`` judge), the share of empty replies and the share of
  runaway replies (cut at the token budget, no end-of-sequence) may not rise over the current
  version's by more than their tolerances.

Fewer than ``min_prompts`` held-out prompts: refused (nothing shows it is not worse). Returns the
figures and the verdict; the caller promotes or refuses and writes both into the lineage.
"""

from __future__ import annotations

from typing import Sequence

import torch


def reply_stats(rollouts: Sequence) -> dict:
    """``{"responses", "prompts", "empty", "runaway"}`` of a list of rollout chunks."""
    responses = [r for ro in rollouts for r in ro.responses]
    prompts = [p for ro in rollouts for p in ro.prompts]
    has_eos = torch.cat([ro.has_eos.bool() for ro in rollouts]) if rollouts else torch.zeros(0, dtype=torch.bool)
    n = max(len(responses), 1)
    return {
        "responses": responses,
        "prompts": prompts,
        "empty": sum(1 for r in responses if not r.strip()) / n,
        "runaway": float((~has_eos).float().mean()) if len(has_eos) else 0.0,
    }


def mean_kl_to(reference, rollouts: Sequence, temperature: float) -> float:
    """Mean over replies of the k3 sequence KL of the sampling policy (its behaviour log-probs)
    to ``reference``."""
    from rlhfkit.core.kl import sequence_kl
    from rlhfkit.rollout import rollout_logprobs

    kls = [
        sequence_kl(
            ro.logprobs.float().cpu(),
            rollout_logprobs(reference, ro, temperature).float().cpu(),
            ro.response_mask.cpu(),
            "k3",
        )
        for ro in rollouts
    ]
    return float(torch.cat(kls).mean()) if kls else 0.0


def decide(figures: dict, section) -> list[str]:
    """The reasons to refuse (empty: promote) from the gate's figures (pure; tested by hand)."""
    why = []
    if figures["n_prompts"] < section.min_prompts:
        why.append(f"only {figures['n_prompts']} held-out prompts (need {section.min_prompts})")
        return why
    rm = figures["reward_model"]
    if rm["win_rate"] < section.min_win_rate:
        why.append(
            f"reward-model win rate {rm['win_rate']:.3f} < {section.min_win_rate} "
            f"(95% CI {rm['ci_low']:.3f}-{rm['ci_high']:.3f})"
        )
    gold = figures.get("gold")
    if gold is not None and gold["win_rate"] < section.min_gold_win_rate:
        why.append(f"gold win rate {gold['win_rate']:.3f} < {section.min_gold_win_rate}")
    if figures["kl_to_v0"] > section.max_kl:
        why.append(f"KL to v0 {figures['kl_to_v0']:.3f} > {section.max_kl}")
    c, p = figures["candidate"], figures["current"]
    if c["toxicity"] > p["toxicity"] + section.max_toxicity_increase:
        why.append(f"toxicity {c['toxicity']:.3f} vs {p['toxicity']:.3f} now")
    if c["empty"] > p["empty"] + section.max_empty_increase:
        why.append(f"empty replies {c['empty']:.3f} vs {p['empty']:.3f} now")
    if c["runaway"] > p["runaway"] + section.max_runaway_increase:
        why.append(f"runaway replies {c['runaway']:.3f} vs {p['runaway']:.3f} now")
    return why


def run_gate(
    learn_dir,
    parent: str,
    adapter: str,
    reward_model: str,
    prompts: Sequence[str],
    gate,
    policy,
    seed: int,
    adapter_on: str | None = None,
) -> dict:
    """Sample, score and decide: the candidate (``adapter`` on ``adapter_on``, default the parent)
    against the parent; returns the figures with ``passed`` and ``reasons``."""
    from peft import PeftModel

    from rlhfkit.eval.winrate import generate_responses, pair_outcomes, win_rate
    from rlhfkit.models.versions import load_version
    from rlhfkit.rewards import build_reward
    from rlhfkit.rewards.judges import toxicity
    from rlhfkit.rewards.sources import RewardModelSource
    from rlhfkit.rollout import SamplingConfig

    prompts = list(prompts)
    figures: dict = {"n_prompts": len(prompts), "seed": seed}
    if len(prompts) < gate.min_prompts:
        return {**figures, "passed": False, "reasons": decide(figures, gate)}
    current, tokenizer = load_version(learn_dir, parent)
    base, _ = load_version(learn_dir, adapter_on or parent)
    candidate = PeftModel.from_pretrained(base, adapter).merge_and_unload().eval()
    sampling = SamplingConfig(max_new_tokens=policy.max_new_tokens, temperature=policy.temperature, top_p=policy.top_p)

    def answer(model):
        return generate_responses(
            model,
            tokenizer,
            prompts,
            sampling,
            seed=seed,
            batch_size=16,
            max_prompt_length=policy.max_prompt_length,
            chat_template=policy.chat_template,
        )

    cand_ro, cur_ro = answer(candidate), answer(current)
    cand, cur = reply_stats(cand_ro), reply_stats(cur_ro)
    rm = RewardModelSource.load(reward_model)
    rm_c, rm_p = rm(prompts, cand["responses"]), rm(prompts, cur["responses"])
    figures["reward_model"] = win_rate(pair_outcomes(rm_c, rm_p), n_boot=gate.n_boot, seed=seed)
    if gate.gold:
        gold = build_reward(gate.gold)
        g_c, g_p = gold(prompts, cand["responses"]), gold(prompts, cur["responses"])
        figures["gold"] = {
            **win_rate(pair_outcomes(g_c, g_p), n_boot=gate.n_boot, seed=seed),
            "candidate_mean": float(torch.as_tensor(g_c).float().mean()),
            "current_mean": float(torch.as_tensor(g_p).float().mean()),
        }
    v0, _ = load_version(learn_dir, "v0")
    figures["kl_to_v0"] = mean_kl_to(v0, cand_ro, policy.temperature)
    for name, stats, scores in (("candidate", cand, rm_c), ("current", cur, rm_p)):
        tox = toxicity(stats["responses"])
        figures[name] = {
            "reward_mean": float(scores.float().mean()),
            "toxicity": float(sum(tox) / max(len(tox), 1)),
            "empty": stats["empty"],
            "runaway": stats["runaway"],
        }
    reasons = decide(figures, gate)
    return {**figures, "passed": not reasons, "reasons": reasons}
