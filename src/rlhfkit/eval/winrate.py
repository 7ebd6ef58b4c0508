"""Win rate of a policy against a reference, gold-judge score means and the KL to the reference.

- ``pair_outcomes(policy_scores, reference_scores, tie_eps)``: per prompt 1 (policy's response
  scored higher), 0 (lower) or 1/2 (within ``tie_eps``: a tie counts half, as in AlpacaEval and
  the Arena);
- ``win_rate(outcomes)``: the mean outcome with a percentile-bootstrap 95% interval over prompts
  (``bootstrap_mean``: resampling prompts with replacement, Efron & Tibshirani 1993);
- ``generate_responses``: one sampled response per prompt through ``rollout.rollout`` (left-padded
  prompts, cut after the first EOS, behaviour log-probs recomputed teacher-forced);
- the KL to the reference is ``core.kl.sequence_kl`` (k1, or k3 which is never negative) of the
  policy's OWN samples, an unbiased estimate of KL(pi || pi_ref) per sequence, with the
  reference's log-probs from ``rollout.rollout_logprobs`` (one teacher-forced pass at the same
  temperature, docs/PPO_CHECKLIST.md #3 (temperature in log-probs)): the same two functions the
  online recipes and the loop use.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from rlhfkit.rollout import make_sampler, rollout, step_seed

__all__ = [
    "pair_outcomes",
    "bootstrap_mean",
    "win_rate",
    "score_summary",
    "generate_responses",
    "same_vocabulary",
]


def pair_outcomes(
    policy_scores: Sequence[float] | torch.Tensor,
    reference_scores: Sequence[float] | torch.Tensor,
    tie_eps: float = 0.0,
) -> torch.Tensor:
    """``[N]`` float64: 1 where the policy's score beats the reference's by more than ``tie_eps``,
    0 where it loses by more, 1/2 otherwise."""
    a = torch.as_tensor(policy_scores, dtype=torch.float64).reshape(-1)
    b = torch.as_tensor(reference_scores, dtype=torch.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"{a.numel()} policy scores but {b.numel()} reference scores")
    d = a - b
    out = torch.full_like(d, 0.5)
    out[d > tie_eps] = 1.0
    out[d < -tie_eps] = 0.0
    return out


def bootstrap_mean(
    values: Sequence[float] | torch.Tensor,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    clusters: Sequence | None = None,
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean and its percentile-bootstrap interval (resampling the
    values with replacement ``n_boot`` times; deterministic given ``seed``). NaN for no values.
    With ``clusters`` (one id per value, e.g. the item several people labelled) whole clusters
    are resampled and each resample's mean is its values' mean: values of one cluster are not
    independent, and resampling them one by one makes the interval too narrow."""
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    n = v.numel()
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    mean = v.mean().item()
    if n_boot <= 0:
        return mean, float("nan"), float("nan")
    g = torch.Generator().manual_seed(int(seed))
    if clusters is not None:
        if len(clusters) != n:
            raise ValueError(f"{len(clusters)} cluster ids for {n} values")
        ids = {c: i for i, c in enumerate(dict.fromkeys(clusters))}
        member = torch.tensor([ids[c] for c in clusters])
        C = len(ids)
        sums = torch.zeros(C, dtype=torch.float64).index_add_(0, member, v)
        sizes = torch.zeros(C, dtype=torch.float64).index_add_(0, member, torch.ones_like(v))
        draw = torch.randint(0, C, (int(n_boot), C), generator=g)
        means = sums[draw].sum(dim=1) / sizes[draw].sum(dim=1)
    else:
        idx = torch.randint(0, n, (int(n_boot), n), generator=g)
        means = v[idx].mean(dim=1)
    alpha = (1.0 - confidence) / 2
    lo, hi = torch.quantile(means, torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64)).tolist()
    return mean, lo, hi


def win_rate(
    outcomes: Sequence[float] | torch.Tensor,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    clusters: Sequence | None = None,
) -> dict:
    """``{"win_rate", "ci_low", "ci_high", "wins", "ties", "losses", "n"}`` from per-prompt
    outcomes (1 win, 1/2 tie, 0 loss); ``clusters``: see ``bootstrap_mean``."""
    o = torch.as_tensor(outcomes, dtype=torch.float64).reshape(-1)
    mean, lo, hi = bootstrap_mean(o, n_boot, seed, confidence, clusters=clusters)
    return {
        "win_rate": mean,
        "ci_low": lo,
        "ci_high": hi,
        "wins": int((o == 1).sum()),
        "ties": int((o == 0.5).sum()),
        "losses": int((o == 0).sum()),
        "n": int(o.numel()),
    }


def score_summary(scores: Sequence[float] | torch.Tensor, n_boot: int = 1000, seed: int = 0) -> dict:
    """``{"mean", "ci_low", "ci_high", "std", "n"}`` of a score vector."""
    s = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    mean, lo, hi = bootstrap_mean(s, n_boot, seed)
    std = s.std().item() if s.numel() > 1 else float("nan")
    return {"mean": mean, "ci_low": lo, "ci_high": hi, "std": std, "n": int(s.numel())}


def generate_responses(
    model,
    tokenizer,
    prompts: Sequence[str],
    sampling,
    seed: int = 0,
    batch_size: int = 16,
    max_prompt_length: int = 0,
    chat_template: bool = False,
    behaviour_logprobs: bool = True,
    desc: str = "",
) -> list:
    """Sample one response per prompt in chunks of ``batch_size``; returns the list of
    ``rollout.Rollout`` chunks (chunk ``c`` is seeded ``step_seed(seed, c)``, so the result does not
    depend on what else runs). ``desc``: a progress bar with that label, counting prompts."""
    from rlhfkit.training.logging import progress_bar, ticking

    gen = make_sampler(model, sampling, tokenizer.eos_token_id, tokenizer.pad_token_id)
    out = []
    # a chunk of replies takes 10 s or more: the bar's clock keeps moving between its updates
    with progress_bar(len(prompts), desc=desc, enabled=bool(desc), unit="prompt") as bar, ticking(bar):
        for c, start in enumerate(range(0, len(prompts), batch_size)):
            chunk = list(prompts[start : start + batch_size])
            out.append(
                rollout(
                    gen,
                    model,
                    tokenizer,
                    chunk,
                    step_seed(seed, c),
                    max_prompt_length=max_prompt_length,
                    chat_template=chat_template,
                    behaviour_logprobs=behaviour_logprobs,
                )
            )
            bar.update(len(chunk))
    return out


def same_vocabulary(tok_a: Any, tok_b: Any) -> bool:
    """Whether two tokenizers map the same strings to the same ids (KL needs shared tokens)."""
    if len(tok_a) != len(tok_b):
        return False
    try:
        return tok_a.get_vocab() == tok_b.get_vocab()
    except Exception:  # noqa: BLE001 - a tokenizer without get_vocab
        return False
