"""The stages of ``rlhfkit pipeline``, each a function ``(ctx, stage_dir) -> outputs`` that
composes the recipes (``RUNNERS``); the ``feedback`` stage is in ``pipeline/feedback_stage.py``,
and what each stage's fingerprint covers in ``pipeline/fingerprints.py``.

    init -> sft (optional) -> feedback -> reward -> policy -> eval -> report

Every stage writes only under ``output_dir/<stage>/``. The file names the later stages read:
``init/model``, ``sft/model``, ``feedback/{pairs,heldout_pairs,train_prompts,eval_prompts}.jsonl``,
``reward/model`` + ``reward/calibration.json``, ``policy/model`` + ``policy/metrics.jsonl``,
``eval/eval.json`` + ``eval/samples.jsonl`` + ``eval/token_samples.jsonl``, ``report.html``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from rlhfkit.data.loading import load_training_records, read_jsonl, tokenizer_corpus
from rlhfkit.pipeline.context import Context
from rlhfkit.pipeline.feedback_stage import stage_feedback
from rlhfkit.pipeline.fingerprints import kl_coef

STAGES = ("init", "sft", "feedback", "reward", "policy", "eval", "report")


def _section(ctx: Context, name: str, **wired):
    """A copy of config section ``name`` with the wired fields set (and the pipeline's threads)."""
    section = copy.deepcopy(getattr(ctx.config, name))
    for k, v in wired.items():
        setattr(section, k, v)
    if ctx.config.threads:
        section.threads = ctx.config.threads
    return section


# ----------------------------------------------------------------------------- init
def stage_init(ctx: Context, d: Path) -> dict:
    c = ctx.config.init
    if c.kind == "pretrained":
        return _materialise_gguf(c.model, d / "model")
    from rlhfkit.models import tiny_causal_lm, tiny_tokenizer

    texts = tokenizer_corpus(ctx.config.feedback.prompts) if ctx.config.feedback.prompts else None
    tok = tiny_tokenizer(texts, vocab_size=c.vocab_size)
    model = tiny_causal_lm(tok, hidden_size=c.hidden_size, num_layers=c.num_layers, num_heads=c.num_heads, seed=c.seed)
    out = d / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    print(f"pipeline: init: tiny Llama ({params:,} parameters, vocabulary {len(tok)}) built from config -> {out}")
    return {"model": str(out), "parameters": params, "tiny": True}


def _materialise_gguf(spec: str, out: Path) -> dict:
    """A GGUF model (the ``smollm2-135m`` alias is one) de-quantised once and saved as a plain
    folder, which the later stages load instead: reading a GGUF file parses its whole vocabulary
    three times (tokenizer, config, weights), about 25 s for SmolLM2 on this project's CPU and
    several times that on a busy one, and the feedback, policy and evaluation stages load the
    starting policy four times in all; the saved folder loads in a second or two. The weights
    are the de-quantised float32 ones, so every stage sees the same model (and the same tokens
    for the same seed) as from the GGUF file. Any other model is used as it is."""
    from rlhfkit.models.loading import resolve_model_source

    _, gguf_file = resolve_model_source(spec)
    if gguf_file is None:
        return {"model": spec}
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer
    from rlhfkit.training.logging import progress_bar, ticking

    print(
        f"pipeline: init: de-quantising {spec} ({gguf_file}) once into {out} (the later stages load that folder)",
        flush=True,
    )
    # each part is one call that reports nothing for 10 to 30 s (minutes on a busy machine): the
    # bar names the part and its clock keeps moving
    with progress_bar(3, desc="init: tokenizer, weights, save", unit="part") as bar, ticking(bar):
        bar.set_postfix_str("parsing the GGUF vocabulary", refresh=True)
        tok = load_tokenizer(spec, padding_side="left")  # as load_policy
        bar.update(1)
        bar.set_postfix_str("parsing and de-quantising the GGUF weights", refresh=True)
        model = load_causal_lm(spec, tokenizer=tok)
        bar.update(1)
        bar.set_postfix_str("saving the folder", refresh=True)
        model.save_pretrained(out)
        tok.save_pretrained(out)
        bar.update(1)
        bar.set_postfix_str("", refresh=True)
    return {"model": str(out), "source": spec}


# ----------------------------------------------------------------------------- sft
def stage_sft(ctx: Context, d: Path) -> dict:
    from rlhfkit.recipes import sft

    cfg = _section(ctx, "sft", model=ctx.init_model, output_dir=str(d))
    metrics = sft.run(cfg)
    return {"model": str(d / "model"), "metrics": _scalars(metrics)}


def _scalars(m: dict) -> dict:
    return {k: v for k, v in (m or {}).items() if isinstance(v, (int, float, str, bool)) or v is None}


# ----------------------------------------------------------------------------- reward
def stage_reward(ctx: Context, d: Path) -> dict:
    from rlhfkit.recipes import reward

    fb = ctx.dir("feedback")
    model = ctx.init_model if ctx.config.reward.model == "init" else ctx.config.reward.model
    cfg = _section(
        ctx,
        "reward",
        model=model,
        data=str(fb / "pairs.jsonl"),
        eval_data=str(fb / "heldout_pairs.jsonl"),
        output_dir=str(d),
    )
    metrics = reward.run(cfg)
    print("pipeline: reward: calibration on the held-out pairs", flush=True)
    calibration = reward_calibration(d / "model", fb / "heldout_pairs.jsonl", cfg.max_length, cfg.micro_batch_size * 2)
    (d / "calibration.json").write_text(json.dumps(calibration, indent=1), encoding="utf-8")
    print(f"pipeline: reward: held-out accuracy {calibration['accuracy']:.3f}, ECE {calibration['ece']:.3f}")
    return {
        "model": str(d / "model"),
        "metrics": _scalars(metrics),
        "heldout": {k: calibration[k] for k in ("pairs", "accuracy", "ece", "mean_margin")},
    }


def reward_calibration(model_dir: Path, pair_file: Path, max_length: int, batch_size: int, seed: int = 0) -> dict:
    """Held-out metrics of the reward model (``rewards.metrics``) and its reliability diagram:
    p = sigmoid(r_first - r_second) with each pair shown in a seeded random order (as
    ``rewards.metrics.pair_metrics``), binned into 10 equal-width bins."""
    import torch

    from rlhfkit.rewards.metrics import pair_metrics, reliability_bins, score_texts
    from rlhfkit.models import load_reward_model

    pairs = load_training_records(str(pair_file), "pairs", ties="drop")
    model, tok = load_reward_model(str(model_dir), trained_head=True)
    scores = score_texts(
        model,
        tok,
        [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs],
        max_length,
        batch_size,
    )
    n = len(pairs)
    chosen, rejected = scores[:n], scores[n:]
    flip = torch.rand(n, generator=torch.Generator().manual_seed(seed)) < 0.5
    m = pair_metrics(chosen, rejected, flip)
    first, second = torch.where(flip, rejected, chosen), torch.where(flip, chosen, rejected)
    probs, labels = torch.sigmoid(first - second), (~flip).double()
    return {**m, "bins": reliability_bins(probs.tolist(), labels.tolist(), n_bins=10)}


# ----------------------------------------------------------------------------- policy
def stage_policy(ctx: Context, d: Path) -> dict:
    import importlib

    algo = ctx.config.algorithm
    fb = ctx.dir("feedback")
    module = importlib.import_module(f"rlhfkit.recipes.{algo}")
    if algo in ("ppo", "grpo", "rloo"):
        cfg = _section(
            ctx,
            algo,
            model=ctx.start_model,
            prompts=str(fb / "train_prompts.jsonl"),
            reward=ctx.rm_spec,
            gold_reward=ctx.config.gold,
            chat_template=ctx.config.chat_template,
            output_dir=str(d),
        )
    else:
        cfg = _section(
            ctx,
            algo,
            model=ctx.start_model,
            data=str(fb / "pairs.jsonl"),
            eval_data=str(fb / "heldout_pairs.jsonl"),
            output_dir=str(d),
        )
    metrics = module.run(cfg)
    return {"model": str(d / "model"), "algorithm": algo, "metrics": _scalars(metrics)}


# ----------------------------------------------------------------------------- eval
def stage_eval(ctx: Context, d: Path) -> dict:
    from rlhfkit.eval import cli_eval
    from rlhfkit.pipeline.tokens import token_samples

    policy = ctx.outputs["policy"]["model"]
    cfg = _section(
        ctx,
        "eval",
        policy=policy,
        reference=ctx.start_model,
        judge=ctx.rm_spec,
        gold=ctx.config.gold,
        prompts=str(ctx.dir("feedback") / "eval_prompts.jsonl"),
        exclude_prompts="",
        chat_template=ctx.config.chat_template,
        output=str(d),
    )
    results = cli_eval.run(cfg)
    n = ctx.config.report.n_token_samples
    if n:
        prompts = [row["prompt"] for row in read_jsonl(d / "samples.jsonl")][:n]
        print(f"pipeline: eval: per-token reward and KL of {len(prompts)} policy replies", flush=True)
        rows = token_samples(
            policy,
            ctx.start_model,
            prompts,
            reward_spec=ctx.rm_spec,
            gold_spec=ctx.config.gold,
            kl_coef=kl_coef(ctx.config),
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature or 1.0,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            max_prompt_length=cfg.max_prompt_length,
            chat_template=cfg.chat_template,
            seed=cfg.seed,
        )
        (d / "token_samples.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
        )
    summary = {"win_rate": results.get("win_rate"), "kl": results.get("kl")}
    if results.get("gold"):
        g = results["gold"]
        summary["gold"] = {
            "judge": g["judge"],
            "before": g["reference"]["mean"],
            "after": g["policy"]["mean"],
            "gain": g["gain"]["mean"],
            "gain_ci": [g["gain"]["ci_low"], g["gain"]["ci_high"]],
        }
    return summary


# ----------------------------------------------------------------------------- report
def stage_report(ctx: Context, d: Path) -> dict:
    from rlhfkit.pipeline.report import render_report

    path = render_report(ctx.out, d / "report.html", summary=pipeline_summary(ctx))
    return {"report": str(path), "bytes": path.stat().st_size}


def pipeline_summary(ctx: Context) -> dict:
    c = ctx.config
    e = c.eval
    return {
        "name": c.name,
        "title": c.report.title,
        "algorithm": c.algorithm,
        "gold": c.gold,
        "init": c.init.model
        if c.init.kind == "pretrained"
        else f"tiny Llama built from config ({c.init.hidden_size}d x {c.init.num_layers} layers)",
        "reward_model": c.reward.model,
        "feedback": c.feedback.source,
        "quick": c.quick,
        "run_sft": c.run_sft,
        "n_sample_rows": c.report.n_sample_rows,
        "prompts": c.feedback.prompts,
        "sampling": {
            "chat_template": c.chat_template,
            "temperature": e.temperature,
            "top_p": e.top_p,
            "top_k": e.top_k,
            "max_new_tokens": e.max_new_tokens,
        },
    }


RUNNERS = {
    "init": stage_init,
    "sft": stage_sft,
    "feedback": stage_feedback,
    "reward": stage_reward,
    "policy": stage_policy,
    "eval": stage_eval,
    "report": stage_report,
}
