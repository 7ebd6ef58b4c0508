"""``rlhfkit eval`` and ``rlhfkit eval leaderboard``: configs and flat run functions.

``rlhfkit eval`` samples one response per held-out prompt from the policy and from the reference
(``rollout``), then reports
  (a) the policy's win rate against the reference judged by ``judge`` (a reward spec for
      ``rewards.build_reward``: ``rm:PATH``, ``vader``, ``0.5*vader+rm:PATH`` ...), ties counting
      half, with a bootstrap 95% interval over prompts;
  (b) the ``gold`` judge's mean score of each side (and its win rate) and the KL of the policy to
      the reference (mean sequence-level k1 over the policy's own samples);
  (c) with ``judge=people``: a pairwise project in the feedback app (``db``) with both responses
      per prompt for people to judge; ``--collect NAME`` later reads their verdicts back into a
      win rate (no generation).
``rlhfkit eval leaderboard`` samples every model in ``models`` on the same prompts, makes each pair
of models meet once per prompt under ``judge`` (or reads human battles from a feedback ``project``)
and fits a Bradley-Terry leaderboard with bootstrap intervals (``eval.leaderboard``).

Results go to ``output/eval.json`` (or ``leaderboard.json``) and ``samples.jsonl`` when ``output``
is set; ``run`` also returns them.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhfkit.core.kl import sequence_kl
from rlhfkit.data.loading import load_prompts, load_training_records
from rlhfkit.data.splits import draw_in_order
from rlhfkit.rollout import rollout_logprobs

__all__ = ["EvalConfig", "LeaderboardConfig", "run", "run_leaderboard", "load_eval_prompts"]


@dataclass
class _Sampling:
    prompts: str = field(
        default="movie-reviews",
        metadata={
            "help": 'movie-reviews (first words of the shared reviews), chat-first-turns (first human turns of OASST and HH-RLHF) or a JSONL/JSON file of {"prompt": ...}'
        },
    )
    prompt_words: int = field(default=8, metadata={"help": "movie-reviews: words per prompt"})
    max_prompts: int = field(default=64, metadata={"help": "evaluate on this many prompts (0 = all), drawn by seed"})
    exclude_prompts: str = field(
        default="",
        metadata={"help": "a prompt file (e.g. the training prompts) whose prompts are left out: held-out evaluation"},
    )
    chat_template: bool = field(
        default=False, metadata={"help": "wrap each prompt as a user turn with the tokenizer's chat template"}
    )
    max_prompt_length: int = field(default=64, metadata={"help": "prompt tokens kept (the last ones)"})
    max_new_tokens: int = field(default=32, metadata={"help": "response tokens generated at most"})
    temperature: float = field(
        default=1.0, metadata={"help": "sampling temperature (0 = greedy); also used in the KL log-prob passes"}
    )
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling (1 = off)"})
    top_k: int = field(default=0, metadata={"help": "top-k sampling (0 = off)"})
    batch_size: int = field(default=16, metadata={"help": "prompts per generation batch"})
    reward_batch_size: int = field(default=32, metadata={"help": "sequences per reward-model forward"})
    tie_eps: float = field(default=0.0, metadata={"help": "score differences at most this big are ties (count 1/2)"})
    n_boot: int = field(default=1000, metadata={"help": "bootstrap resamples for the 95% intervals"})
    seed: int = field(default=0, metadata={"help": "seed of the prompt draw, sampling and bootstrap"})
    output: str = field(
        default="", metadata={"help": "folder for the JSON results and samples.jsonl (empty = print only)"}
    )
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = default)"})


@dataclass
class EvalConfig(_Sampling):
    policy: str = field(
        default="outputs/ppo/model",
        metadata={"help": "the trained policy: a folder, .gguf file, HF name or smollm2-135m"},
    )
    reference: str = field(default="smollm2-135m", metadata={"help": "the reference policy it is compared with"})
    judge: str = field(
        default="vader",
        metadata={
            "help": "who decides the win rate: a reward spec (rm:PATH, vader, toxicity, fn:..., weighted sums) or people (feedback-app tasks)"
        },
    )
    gold: str = field(
        default="",
        metadata={"help": "offline gold judge for mean scores (reward spec); empty = the judge unless it is people"},
    )
    kl: bool = field(
        default=True, metadata={"help": "measure the KL of the policy to the reference (needs the same tokenizer)"}
    )
    db: str = field(
        default="feedback.db",
        metadata={"help": "judge=people / collect: feedback store (SQLite file or SQLAlchemy URL)"},
    )
    project: str = field(
        default="", metadata={"help": "judge=people: name of the comparison project to create (default eval-<time>)"}
    )
    overlap: int = field(default=1, metadata={"help": "judge=people: labelers per comparison"})
    collect: str = field(
        default="",
        metadata={"help": "read the human verdicts of this feedback project into a win rate (no generation)"},
    )
    both_bad: str = field(
        default="tie", metadata={"help": "collect: a 'both bad' verdict counts as a tie or is dropped (drop)"}
    )

    def validate(self) -> None:
        if self.both_bad not in ("tie", "drop"):
            raise ValueError("both_bad must be 'tie' or 'drop'")
        if self.n_boot < 0 or self.batch_size < 1:
            raise ValueError("n_boot must be >= 0 and batch_size >= 1")
        from rlhfkit.rewards import check_reward_field

        if self.judge != "people":
            check_reward_field("judge", self.judge)
        if self.gold:
            check_reward_field("gold", self.gold)


@dataclass
class LeaderboardConfig(_Sampling):
    models: list[str] = field(
        default_factory=list,
        metadata={"help": "comma-separated models (name=path or path; the name defaults to the folder name)"},
    )
    judge: str = field(
        default="vader", metadata={"help": "reward spec that judges every battle (ignored with project)"}
    )
    project: str = field(
        default="", metadata={"help": "read battles from this feedback project's human labels instead of generating"}
    )
    db: str = field(default="feedback.db", metadata={"help": "project: feedback store (SQLite file or SQLAlchemy URL)"})
    anchor: str = field(default="", metadata={"help": "model fixed at rating 1000 (empty = mean rating 1000)"})

    def validate(self) -> None:
        if not self.project and len(self.models) < 2:
            raise ValueError("give --models A,B[,C...] (two or more) or --project NAME")
        if not self.project:
            from rlhfkit.rewards import check_reward_field

            check_reward_field("judge", self.judge)


# ---------------------------------------------------------------------------- prompts
def load_eval_prompts(c: _Sampling) -> list[str]:
    """The held-out prompts: all prompts of ``c.prompts`` minus those in ``c.exclude_prompts``,
    then ``c.max_prompts`` of them drawn with ``random.Random(c.seed)`` (in source order)."""
    prompts = load_prompts(c.prompts, c.prompt_words)
    if c.exclude_prompts:
        drop = {r.prompt for r in load_training_records(c.exclude_prompts, "prompts")}
        prompts = [p for p in prompts if p not in drop]
    prompts = draw_in_order(prompts, c.max_prompts, c.seed)
    if not prompts:
        raise ValueError(f"no evaluation prompts in {c.prompts!r}")
    return prompts


def _sampling(c: _Sampling):
    from rlhfkit.rollout import SamplingConfig

    return SamplingConfig(max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_p=c.top_p, top_k=c.top_k)


def _responses(rollouts) -> list[str]:
    return [r for ro in rollouts for r in ro.responses]


def _ended(rollouts) -> list[bool]:
    return [bool(e) for ro in rollouts for e in ro.has_eos.tolist()]


def _sample_model(spec: str, prompts: list[str], c: _Sampling, salt: int, logprobs: bool = True, name: str = ""):
    from rlhfkit.models import load_policy
    from rlhfkit.rollout import step_seed

    from .winrate import generate_responses

    print(f"eval: loading {name or 'model'} {spec}", flush=True)
    model, tok = load_policy(spec)
    ros = generate_responses(
        model,
        tok,
        prompts,
        _sampling(c),
        seed=step_seed(c.seed, 0, salt),
        batch_size=c.batch_size,
        max_prompt_length=c.max_prompt_length,
        chat_template=c.chat_template,
        behaviour_logprobs=logprobs,
        desc=f"eval: {name or 'model'} replies",
    )
    return model, tok, ros


def gold_summary(
    judge: str,
    policy_scores: torch.Tensor,
    reference_scores: torch.Tensor,
    n_boot: int,
    seed: int,
    tie_eps: float = 0.0,
) -> dict:
    """Gold-judge scores of the policy's and the reference's answers to the same prompts: their
    means, the gain (policy - reference) and the policy's win rate, each with a bootstrap 95%
    interval. For a judge whose lower scores are better (toxicity) the policy wins a prompt with
    the lower score; the gain stays policy - reference (negative = better), marked by ``lower_is_better``."""
    from rlhfkit.rewards.judges import lower_is_better

    from .winrate import pair_outcomes, score_summary, win_rate

    lower = lower_is_better(judge)
    better, worse = (reference_scores, policy_scores) if lower else (policy_scores, reference_scores)
    return {
        "judge": judge,
        "lower_is_better": lower,
        "policy": score_summary(policy_scores, n_boot, seed),
        "reference": score_summary(reference_scores, n_boot, seed),
        "gain": score_summary(policy_scores - reference_scores, n_boot, seed),
        "win_rate": win_rate(pair_outcomes(better, worse, tie_eps), n_boot, seed),
    }


def _score(spec: str, prompts: list[str], responses: list[str], c: _Sampling, cache: dict) -> torch.Tensor:
    from rlhfkit.rewards import build_reward

    if spec not in cache:
        cache[spec] = build_reward(spec, batch_size=c.reward_batch_size)
    return cache[spec](prompts, responses).double()


def _write(out_dir: str, name: str, results: dict, samples: list[dict]) -> None:
    if not out_dir:
        return
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{name}.tmp"
    tmp.write_text(json.dumps(results, indent=1, default=_json_default), encoding="utf-8")
    tmp.replace(d / name)
    (d / "samples.jsonl").write_text(
        "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples), encoding="utf-8"
    )


def _json_default(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(type(x).__name__)


def _config_error(e: Exception):
    from rlhfkit.training.config import ConfigError

    return ConfigError(str(e))


def _fmt_wr(r: dict) -> str:
    return (
        f"{r['win_rate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] "
        f"(W {r['wins']} / T {r['ties']} / L {r['losses']}, n={r['n']})"
    )


# ---------------------------------------------------------------------------- rlhfkit eval
def run(c: EvalConfig) -> dict:
    from rlhfkit.feedback.db import require_store_file
    from rlhfkit.recipes.common import set_threads

    from .judge import create_comparison_project, people_win_rate
    from .winrate import pair_outcomes, same_vocabulary, score_summary, win_rate

    set_threads(c.threads)
    if c.collect:  # (c) read the people's verdicts back
        require_store_file(c.db)  # reading people's verdicts: a missing file is not an empty store
        try:
            res = {"people": people_win_rate(c.db, c.collect, both_bad=c.both_bad, n_boot=c.n_boot, seed=c.seed)}
        except (LookupError, ValueError) as e:
            raise _config_error(e) from None
        print(f"people win rate (project {c.collect!r}): {_fmt_wr(res['people'])}")
        _write(c.output, "eval.json", res, [])
        return res

    t0 = time.perf_counter()
    prompts = load_eval_prompts(c)
    # log-probs of the policy's own samples feed the KL; the reference's samples are only judged
    policy, ptok, p_ros = _sample_model(c.policy, prompts, c, salt=1, logprobs=c.kl, name="policy")
    reference, rtok, r_ros = _sample_model(c.reference, prompts, c, salt=2, logprobs=False, name="reference")
    pol_texts, ref_texts = _responses(p_ros), _responses(r_ros)
    results: dict = {
        "policy": c.policy,
        "reference": c.reference,
        "prompts": len(prompts),
        "judge": c.judge,
        "generation_seconds": round(time.perf_counter() - t0, 2),
    }
    # a reply without EOS was cut at max_new_tokens (the report marks it)
    samples = [
        {"prompt": p, "policy": a, "reference": b, "policy_ended": a_end, "reference_ended": b_end}
        for p, a, b, a_end, b_end in zip(prompts, pol_texts, ref_texts, _ended(p_ros), _ended(r_ros))
    ]

    # (b) KL(pi || pi_ref): sequence-level k1 over the policy's own samples
    print("eval: scoring the replies (KL to the reference, judge, gold judge)", flush=True)
    from rlhfkit.training.logging import progress_bar, ticking

    kl_chunks = len(p_ros) if c.kl and same_vocabulary(ptok, rtok) else 0
    gold = c.gold or ("" if c.judge == "people" else c.judge)
    passes = kl_chunks + 2 * (c.judge != "people") + 2 * bool(gold)
    # the reference's log-probs of each chunk, then each judge over each model's replies: a pass
    # takes seconds to minutes, so the bar counts passes and its clock keeps moving
    with progress_bar(passes, desc="eval: scoring", unit="pass") as bar, ticking(bar):
        if c.kl:
            if kl_chunks:
                ref_lps = []
                for ro in p_ros:
                    ref_lps.append(rollout_logprobs(reference, ro, c.temperature).float().cpu())
                    bar.update(1)
                kl, kl3 = (
                    torch.cat(
                        [sequence_kl(ro.logprobs, lp, ro.response_mask, est) for ro, lp in zip(p_ros, ref_lps)]
                    ).double()
                    for est in ("k1", "k3")
                )
                results["kl"] = score_summary(kl, c.n_boot, c.seed)
                # k3 as a check: never negative, so a k1 mean below 0 on few prompts reads as the noise it is
                results["kl_k3"] = score_summary(kl3, c.n_boot, c.seed)
                for s, k in zip(samples, kl.tolist()):
                    s["kl"] = k
            else:
                results["kl"] = None
                print("kl: skipped (policy and reference tokenizers differ)")
        results["policy_length"] = float(torch.cat([ro.lengths for ro in p_ros]).float().mean())
        results["reference_length"] = float(torch.cat([ro.lengths for ro in r_ros]).float().mean())
        del policy, reference

        cache: dict = {}

        def scored(spec: str, texts: list[str]) -> torch.Tensor:
            out = _score(spec, prompts, texts, c, cache)
            bar.update(1)
            return out

        # (a) win rate judged by a reward model / offline judge
        if c.judge != "people":
            ps, rs = scored(c.judge, pol_texts), scored(c.judge, ref_texts)
            from rlhfkit.rewards.judges import lower_is_better

            better, worse = (rs, ps) if lower_is_better(c.judge) else (ps, rs)  # e.g. judge toxicity: lower wins
            results["win_rate"] = win_rate(pair_outcomes(better, worse, c.tie_eps), c.n_boot, c.seed)
            for s, a, b in zip(samples, ps.tolist(), rs.tolist()):
                s["judge_policy"], s["judge_reference"] = a, b
        if gold:
            gp, gr = scored(gold, pol_texts), scored(gold, ref_texts)
            results["gold"] = gold_summary(gold, gp, gr, c.n_boot, c.seed, c.tie_eps)
            for s, a, b in zip(samples, gp.tolist(), gr.tolist()):
                s["gold_policy"], s["gold_reference"] = a, b
    # (c) people: comparison tasks in the feedback app
    if c.judge == "people":
        name = c.project or time.strftime("eval-%Y%m%d-%H%M%S")
        try:
            info = create_comparison_project(
                c.db, name, prompts, {"policy": pol_texts, "reference": ref_texts}, overlap=c.overlap, seed=c.seed
            )
        except ValueError as e:  # e.g. the project exists
            raise _config_error(e) from None
        results["people"] = {**info, "db": c.db}
        print(
            f"created feedback project {name!r} with {info['items']} comparisons in {c.db}; label them in "
            f"the app (rlhfkit feedback serve --db {c.db}), then: rlhfkit eval --collect {name} --db {c.db}"
        )

    print(f"eval: {len(prompts)} prompts, policy {c.policy} vs reference {c.reference}")
    if "win_rate" in results:
        print(f"  win rate ({c.judge}): {_fmt_wr(results['win_rate'])}")
    if "gold" in results:
        g = results["gold"]
        print(
            f"  gold ({gold}): policy {g['policy']['mean']:.4f}  reference {g['reference']['mean']:.4f}  "
            f"gain {g['gain']['mean']:+.4f} [{g['gain']['ci_low']:+.4f}, {g['gain']['ci_high']:+.4f}]"
        )
    if results.get("kl"):
        k = results["kl"]
        print(
            f"  KL(policy || reference): {k['mean']:.4f} nats/sequence [{k['ci_low']:.4f}, {k['ci_high']:.4f}]"
            + (f" (k3 estimate {results['kl_k3']['mean']:.4f})" if results.get("kl_k3") else "")
        )
    _write(c.output, "eval.json", results, samples)
    return results


# ---------------------------------------------------------------------------- rlhfkit eval leaderboard
def _named(specs: list[str]) -> list[tuple[str, str]]:
    out, seen = [], set()
    for s in specs:
        name, sep, path = s.partition("=")
        if not sep:
            path = s
            name = Path(s.rstrip("/")).name or s
            if name in ("model", "final") and Path(s).parent.name:
                name = Path(s.rstrip("/")).parent.name
        if name in seen:
            raise ValueError(f"two models are named {name!r}; use name=path")
        seen.add(name)
        out.append((name, path))
    return out


def run_leaderboard(c: LeaderboardConfig) -> list[dict]:
    from rlhfkit.feedback.db import require_store_file
    from rlhfkit.recipes.common import set_threads

    from .judge import people_battles
    from .leaderboard import battles_from_scores, format_leaderboard, leaderboard

    set_threads(c.threads)
    samples: list[dict] = []
    if c.project:
        require_store_file(c.db)  # reading people's verdicts: a missing file is not an empty store
        try:
            battles = people_battles(c.db, c.project)
        except (LookupError, ValueError) as e:
            raise _config_error(e) from None
        source = f"people (project {c.project!r})"
    else:
        prompts = load_eval_prompts(c)
        scores, cache = {}, {}
        samples = [{"prompt": p} for p in prompts]
        for k, (name, path) in enumerate(_named(c.models)):
            model, _, ros = _sample_model(path, prompts, c, salt=100 + k, logprobs=False, name=name)  # texts only
            del model
            texts = _responses(ros)
            scores[name] = _score(c.judge, prompts, texts, c, cache).tolist()
            for s, t, v in zip(samples, texts, scores[name]):
                s[name], s[f"{name}_score"] = t, v
        battles = battles_from_scores(scores, c.tie_eps)
        source = c.judge
    if not battles:
        raise ValueError("no battles to rank")
    rows = leaderboard(battles, n_boot=c.n_boot, seed=c.seed, anchor=c.anchor or None)
    print(f"Bradley-Terry leaderboard ({len(battles)} battles judged by {source}; 95% bootstrap intervals)")
    print(format_leaderboard(rows))
    _write(c.output, "leaderboard.json", {"judge": source, "battles": len(battles), "rows": rows}, samples)
    return rows
