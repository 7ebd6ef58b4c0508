"""The stages of ``rlhfkit pipeline``, each a function ``(ctx, stage_dir) -> outputs`` that
composes the recipes, and ``stage_inputs`` which says what each stage's fingerprint covers.

    init -> sft (optional) -> feedback -> reward -> policy -> eval -> report

Every stage writes only under ``output_dir/<stage>/``. The file names the later stages read:
``init/model``, ``sft/model``, ``feedback/{pairs,heldout_pairs,train_prompts,eval_prompts}.jsonl``,
``reward/model`` + ``reward/calibration.json``, ``policy/model`` + ``policy/metrics.jsonl``,
``eval/eval.json`` + ``eval/samples.jsonl`` + ``eval/token_samples.jsonl``, ``report.html``.
"""

from __future__ import annotations

import copy
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfkit.data import PreferencePair, write_jsonl
from rlhfkit.data.loading import load_prompts, load_training_records, read_jsonl, tokenizer_corpus
from rlhfkit.data.splits import draw_in_order, split_by_prompt
from rlhfkit.training.run_identity import file_digest, stage_settings, with_content

STAGES = ("init", "sft", "feedback", "reward", "policy", "eval", "report")


@dataclass
class Context:
    config: Any  # PipelineConfig
    out: Path
    fingerprints: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, dict] = field(default_factory=dict)

    def dir(self, stage: str) -> Path:
        return self.out / stage

    @property
    def init_model(self) -> str:
        return self.outputs["init"]["model"]

    @property
    def start_model(self) -> str:
        """The model policy optimisation starts from (and the reference of the evaluation)."""
        return self.outputs["sft"]["model"] if self.config.run_sft else self.init_model

    @property
    def rm_spec(self) -> str:
        return f"rm:{self.dir('reward') / 'model'}"


def _section(ctx: Context, name: str, **wired):
    """A copy of config section ``name`` with the wired fields set (and the pipeline's threads)."""
    section = copy.deepcopy(getattr(ctx.config, name))
    for k, v in wired.items():
        setattr(section, k, v)
    if ctx.config.threads:
        section.threads = ctx.config.threads
    return section


def _write_prompts(path: Path, prompts: list[str]) -> None:
    path.write_text("".join(json.dumps({"prompt": p}, ensure_ascii=False) + "\n" for p in prompts), encoding="utf-8")


# ----------------------------------------------------------------------------- fingerprints
WIRED = {
    "sft": {"model"},
    "reward": {"data", "eval_data"},
    "ppo": {"model", "prompts", "reward", "gold_reward", "chat_template"},
    "grpo": {"model", "prompts", "reward", "gold_reward", "chat_template"},
    "rloo": {"model", "prompts", "reward", "gold_reward", "chat_template"},
    "dpo": {"model", "data", "eval_data"},
    "kto": {"model", "data", "eval_data"},
    "eval": {"policy", "reference", "judge", "gold", "prompts", "exclude_prompts", "chat_template"},
}
# feedback fields added after runs were cached: left out of the fingerprint at these values (what
# those runs sampled with), so a finished run of an older preset stays cached
LATER_FEEDBACK_DEFAULTS = {"top_p": 1.0, "top_k": 0}
# feedback fields only simulated labelers read: not in the fingerprint of the other sources
SIMULATION_FIELDS = {
    "n_label_prompts",
    "num_candidates",
    "label_noise",
    "labeler",
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "batch_size",
}


def _feedback_settings(c) -> dict:
    own = {
        k: v
        for k, v in stage_settings(c.feedback).items()
        if not (k in LATER_FEEDBACK_DEFAULTS and v == LATER_FEEDBACK_DEFAULTS[k])
        and (c.feedback.source == "simulated" or k not in SIMULATION_FIELDS)
    }
    if c.feedback.source == "simulated" and c.chat_template:  # plain text: nothing, as before the field
        own["chat_template"] = True
    return own


def stage_inputs(ctx: Context, stage: str) -> tuple[Any, dict[str, str]]:
    """``(own settings, {input stage: fingerprint})`` of ``stage``; upstream fingerprints must
    already be in ``ctx.fingerprints``."""
    c, fps = ctx.config, ctx.fingerprints
    start = {"start": fps["sft"] if c.run_sft else fps["init"]} if stage not in ("init", "sft") else {}
    if stage == "init":
        own = stage_settings(c.init)
        if c.init.kind == "tiny":
            own["corpus"] = with_content(c.feedback.prompts)  # stage_init's tokenizer corpus
        else:
            own = {"kind": c.init.kind, "model": with_content(c.init.model)}
        return own, {}
    if stage == "sft":
        return stage_settings(c.sft, WIRED["sft"]), {"init": fps["init"]}
    if stage == "feedback":
        own = _feedback_settings(c)
        own["source_digest"] = _feedback_source_digest(c.feedback)
        if c.feedback.source == "simulated":
            own["labeler"] = c.feedback.labeler or c.gold
            return own, start
        return own, {}
    if stage == "reward":
        inputs = {"feedback": fps["feedback"]}
        if c.reward.model == "init":
            inputs["init"] = fps["init"]
        return stage_settings(c.reward, WIRED["reward"]), inputs
    if stage == "policy":
        own = {"algorithm": c.algorithm, **stage_settings(getattr(c, c.algorithm), WIRED[c.algorithm])}
        inputs = {**start, "feedback": fps["feedback"]}
        if c.algorithm in ("ppo", "grpo", "rloo"):
            inputs["reward"] = fps["reward"]
            own["gold"] = c.gold
            own["chat_template"] = c.chat_template
        return own, inputs
    if stage == "eval":
        own = {
            **stage_settings(c.eval, WIRED["eval"]),
            "gold": c.gold,
            "n_token_samples": c.report.n_token_samples,
            "kl_coef": _kl_coef(c),
            "chat_template": c.chat_template,
        }
        return own, {**start, "policy": fps["policy"], "reward": fps["reward"], "feedback": fps["feedback"]}
    if stage == "report":
        own = {"report": stage_settings(c.report), "name": c.name, "algorithm": c.algorithm, "version": 1}
        return own, {k: v for k, v in fps.items() if k != "report"}
    raise KeyError(stage)


def _feedback_source_digest(fb) -> str:
    """What the feedback's source holds: a pair file's content hash; a store project's exported
    pairs (labels added in the app change it, so the reward model retrains); a named set's name."""
    if fb.source == "dataset":
        return file_digest(fb.data) if Path(fb.data).is_file() else f"named:{fb.data}"
    if fb.source == "store":
        import hashlib

        h = hashlib.sha256()
        for r in _export_store(fb):
            h.update(json.dumps(r.to_dict(), sort_keys=True).encode())
        return h.hexdigest()
    return ""


def _kl_coef(c) -> float:
    """The beta shown in the per-token shaped reward ``-beta * KL (+ score on the last token)``."""
    section = getattr(c, c.algorithm)
    if c.algorithm == "dpo":
        from rlhfkit.recipes.dpo import DEFAULT_BETA

        return float(section.beta or DEFAULT_BETA.get(section.loss, 0.1) or 0.1)
    if c.algorithm == "kto":
        return float(section.beta)
    return float(section.kl_coef)


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


# ----------------------------------------------------------------------------- feedback
def _export_store(fb) -> list:
    from sqlalchemy import select

    from rlhfkit.feedback import db
    from rlhfkit.feedback.export import export_records

    store = db.Store(fb.db)
    try:
        with store.read() as conn:
            row = conn.execute(select(db.projects.c.id).where(db.projects.c.name == fb.project)).first()
            if row is None:
                raise ValueError(f"feedback store {fb.db}: no project named {fb.project!r}")
            return export_records(conn, row[0], "pairs", aggregate=fb.aggregate)
    finally:
        store.close()


def _split_prompts(pool: list[str], fb) -> tuple[list[str], list[str]]:
    """(training prompts, held-out evaluation prompts): a seeded shuffle, the first
    ``n_eval_prompts`` held out."""
    order = list(pool)
    random.Random(fb.seed).shuffle(order)
    held, train = order[: fb.n_eval_prompts], order[fb.n_eval_prompts :]
    if fb.max_train_prompts:
        train = train[: fb.max_train_prompts]
    return train, held


def stage_feedback(ctx: Context, d: Path) -> dict:
    fb = ctx.config.feedback
    stats: dict = {"source": fb.source}
    if fb.source == "simulated":
        pool = load_prompts(fb.prompts, fb.prompt_words, unique=True)
        train_prompts, eval_prompts = _split_prompts(pool, fb)
        pairs, sim = simulate_labels(ctx, d, train_prompts[: fb.n_label_prompts])
        stats.update(sim)
        train_pairs, held_pairs = split_by_prompt(pairs, fb.eval_fraction, fb.seed)
    else:
        if fb.source == "dataset":
            pairs = load_training_records(fb.data, "pairs", ties="drop")
        else:
            pairs = [p for p in _export_store(fb) if not p.tie]
        pairs = draw_in_order(pairs, fb.max_pairs, fb.seed)
        train_prompts = eval_prompts = None
        train_pairs, held_pairs = split_by_prompt(pairs, fb.eval_fraction, fb.seed)
    if train_prompts is None:
        if fb.prompts:
            train_prompts, eval_prompts = _split_prompts(load_prompts(fb.prompts, fb.prompt_words, unique=True), fb)
        else:  # the prompts of the held-out pairs are the held-out prompts
            eval_prompts = list(dict.fromkeys(p.prompt for p in held_pairs))[: fb.n_eval_prompts]
            held_set = set(eval_prompts)
            train_prompts = [p for p in dict.fromkeys(p.prompt for p in train_pairs) if p not in held_set]
            if fb.max_train_prompts:
                train_prompts = train_prompts[: fb.max_train_prompts]
    if not train_pairs or not held_pairs:
        raise ValueError(f"feedback: {len(pairs)} pairs are too few to hold out {fb.eval_fraction:.0%}")
    write_jsonl(d / "pairs.jsonl", train_pairs)
    write_jsonl(d / "heldout_pairs.jsonl", held_pairs)
    _write_prompts(d / "train_prompts.jsonl", train_prompts)
    _write_prompts(d / "eval_prompts.jsonl", eval_prompts)
    stats.update(
        {
            "pairs": len(train_pairs),
            "heldout_pairs": len(held_pairs),
            "train_prompts": len(train_prompts),
            "eval_prompts": len(eval_prompts),
        }
    )
    print(f"pipeline: feedback: {json.dumps(stats)}")
    return stats


def simulate_labels(ctx: Context, d: Path, prompts: list[str]) -> tuple[list, dict]:
    """Simulated labelers (the learning benchmark's): ``num_candidates`` samples of the starting
    policy per prompt, each given its gold score plus Gaussian noise (``label_noise``) once, i.e. a
    noisy ranking; the ranking is expanded to all pairs with different, non-empty texts (the
    preferred one has the higher noisy score). With 2 candidates that is one pair per prompt; with
    4 it is six pairs from the same generation cost per sample (InstructGPT ranks K = 4-9
    responses per prompt for the same reason). Done in chunks of ``batch_size`` prompts, each
    written to ``chunks/NNNNN.jsonl`` when finished and seeded by (seed, chunk), so an interrupted stage resumes at the first missing
    chunk and produces the same pairs as an uninterrupted one. Prompts are rendered as the policy
    stage and the evaluation render them (``chat_template``) and sampled as they sample."""
    import torch

    from rlhfkit.models import load_policy
    from rlhfkit.recipes.common import set_threads
    from rlhfkit.rewards import build_reward
    from rlhfkit.rollout import SamplingConfig, make_sampler, rollout, step_seed
    from rlhfkit.training.logging import progress_bar, ticking

    fb = ctx.config.feedback
    set_threads(ctx.config.threads)
    chunk_dir = d / "chunks"
    chunk_dir.mkdir(parents=True, exist_ok=True)
    labeler = build_reward(fb.labeler or ctx.config.gold)
    rows: list[dict] = []
    n_chunks = (len(prompts) + fb.batch_size - 1) // fb.batch_size
    if not all((chunk_dir / f"{c:05d}.jsonl").is_file() for c in range(n_chunks)):
        print(
            f"pipeline: feedback: loading the policy {ctx.start_model} to sample {fb.num_candidates} replies "
            f"to each of {len(prompts)} prompts",
            flush=True,
        )
        model, tok = load_policy(ctx.start_model)
        gen = make_sampler(
            model,
            SamplingConfig(
                max_new_tokens=fb.max_new_tokens, temperature=fb.temperature, top_p=fb.top_p, top_k=fb.top_k
            ),
            tok.eos_token_id,
            tok.pad_token_id,
        )
    # one batch of replies takes 10 s or more: the bar's clock keeps moving between its updates
    with (
        progress_bar(len(prompts) * fb.num_candidates, desc="feedback: samples to label", unit="sample") as bar,
        ticking(bar),
    ):
        for c in range(n_chunks):
            path = chunk_dir / f"{c:05d}.jsonl"
            batch = prompts[c * fb.batch_size : (c + 1) * fb.batch_size]
            if path.is_file():
                rows += read_jsonl(path)
                bar.update(len(batch) * fb.num_candidates)
                continue
            # candidate k's seed salt: 11, 12 (the two-sample scheme's), then 14, 15, ... (13 is the noise's)
            salts = [11, 12] + list(range(14, 14 + max(0, fb.num_candidates - 2)))
            texts, golds = [], []
            with torch.no_grad():
                for salt in salts:  # only the texts are labelled: no behaviour log-prob pass
                    ro = rollout(
                        gen,
                        model,
                        tok,
                        batch,
                        seed=step_seed(fb.seed, c, salt=salt),
                        chat_template=ctx.config.chat_template,
                        behaviour_logprobs=False,
                    )
                    texts.append(ro.responses)
                    golds.append(labeler(ro.prompts, ro.responses).tolist())
                    bar.update(len(batch))
            rng = random.Random(step_seed(fb.seed, c, salt=13))
            chunk = []
            for i, p in enumerate(batch):
                cand = [(texts[k][i], golds[k][i]) for k in range(len(salts))]
                noisy = [g + rng.gauss(0, fb.label_noise) for _, g in cand]  # one noisy judgement per sample
                for x in range(len(cand)):
                    for y in range(x + 1, len(cand)):
                        (tx, gx), (ty, gy) = cand[x], cand[y]
                        if tx == ty or not tx.strip() or not ty.strip():
                            continue
                        first = noisy[x] >= noisy[y]
                        chunk.append(
                            {
                                "prompt": p,
                                "chosen": tx if first else ty,
                                "rejected": ty if first else tx,
                                "gold_chosen": gx if first else gy,
                                "gold_rejected": gy if first else gx,
                            }
                        )
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chunk), encoding="utf-8")
            os.replace(tmp, path)
            rows += chunk
    # agreement is measured only where the gold judge has a preference; a gold tie is decided by
    # the noise alone, so how many pairs the figure rests on is recorded with it
    decided = [r for r in rows if r["gold_chosen"] != r["gold_rejected"]]
    agree = sum(r["gold_chosen"] > r["gold_rejected"] for r in decided)
    pairs = [PreferencePair(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
    return pairs, {
        "labeled_prompts": len(prompts),
        "labeler": fb.labeler or ctx.config.gold,
        "label_noise": fb.label_noise,
        "labeler_agreement_with_gold": agree / len(decided) if decided else None,
        "labeler_agreement_pairs": len(decided),
        "gold_tie_pairs": len(rows) - len(decided),
    }


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
    """Held-out metrics of the reward model (``eval.reward_eval``) and its reliability diagram:
    p = sigmoid(r_first - r_second) with each pair shown in a seeded random order (as
    ``reward_eval.pair_metrics``), binned into 10 equal-width bins."""
    import torch

    from rlhfkit.eval.reward_eval import pair_metrics, reliability_bins, score_texts
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
            kl_coef=_kl_coef(ctx.config),
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
