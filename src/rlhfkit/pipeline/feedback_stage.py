"""The ``feedback`` stage of ``rlhfkit pipeline``: the preference pairs the reward model and the
policy learn from, and the prompts they train and are evaluated on.

The pairs come from simulated labelers (``simulate_labels``: the starting policy's samples judged
by a gold reward plus noise), a pair file or named set, or a project of the feedback store
(``export_store``). They are split by prompt into training and held-out pairs, and the prompts
into training and held-out evaluation prompts; the stage writes
``feedback/{pairs,heldout_pairs,train_prompts,eval_prompts}.jsonl``.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from rlhfkit.data import PreferencePair, write_jsonl
from rlhfkit.data.loading import load_prompts, load_training_records, read_jsonl
from rlhfkit.data.splits import draw_in_order, split_by_prompt
from rlhfkit.pipeline.context import Context


def _write_prompts(path: Path, prompts: list[str]) -> None:
    path.write_text("".join(json.dumps({"prompt": p}, ensure_ascii=False) + "\n" for p in prompts), encoding="utf-8")


def export_store(fb) -> list:
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
            pairs = [p for p in export_store(fb) if not p.tie]
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
