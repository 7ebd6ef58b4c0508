"""The round's reward-model update: every kind of end-user verdict in one weighted loss.

One scalar head scores ``prompt ⊕ reply`` (``data.tokenize.tokenize_pair``, as the reward recipe
and ``rewards.RewardModelSource`` do, so ``rm:PATH`` reads it the same way). Each verdict becomes
one example with its user's weight (``learn.defence``):

- a choice: a pair (the picked reply over the other), Bradley-Terry ``-log sigmoid(r_c - r_r)``;
- an edit: a pair (the user's reply over the served one), the same loss;
- thumbs: ``BCE(sigmoid(r), up)``, times ``thumbs_weight``;
- a rating on [lo, hi]: ``BCE(sigmoid(r), (rating - lo) / (hi - lo))`` (a soft label), times
  ``rating_weight``.

All terms live on one logit scale (a pair's ``r_c - r_r`` is the log-odds that c is preferred,
an absolute ``r`` the log-odds of a thumbs-up), which is why the ratings are soft labels of the
same BCE rather than the reward recipe's squared error. The loss of a batch is ``sum(w * term)``
over the examples (``core.losses.weighted_sum``, the reward recipe's weighted sum) divided by
their number (``training.loop.fit``), so a user at weight 0 adds nothing and is left out of the
batches altogether. The recipe's loss itself (``recipes.reward.make_loss``) is not reused: it
takes one objective per batch (this one mixes pairs and single replies in one forward pass),
rates with squared error, and divides by the sum of weights, not the number of examples: a
weighted mean, where a down-weighted user would no longer shrink the steps of the batches they
are in (other updates).

Training runs through ``fit`` (checkpoints in the stage folder, exact resume), starting from the
last round's reward model (or the backbone in the first round, or after a forget).

The defence's cross-fitted consensus (``learn.defence``) trains its fold models here too
(:func:`crossfit_scores_fn`): the same examples, recipe, start and seed, on the other folds' users.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from rlhfkit.core.losses.bradley_terry import binary_feedback_loss, bradley_terry_loss, weighted_sum


def examples_of(
    events: Sequence[dict], weights: dict[str, float], thumbs_weight: float, rating_weight: float
) -> list[dict]:
    """Texts, targets and weights of the training examples (weight-0 users left out), in id order."""
    out = []
    for e in sorted(events, key=lambda e: e["id"]):
        w = float(weights.get(e["end_user"], 1.0))
        if w <= 0:
            continue
        kind, value, prompt = e["kind"], e["value"], e["prompt"]
        if kind == "choice":
            c = int(value)
            out.append(
                {
                    "id": e["id"],
                    "prompt": prompt,
                    "chosen": e["responses"][c],
                    "rejected": e["responses"][1 - c],
                    "w": w,
                }
            )
        elif kind == "edit":
            out.append({"id": e["id"], "prompt": prompt, "chosen": value, "rejected": e["responses"][0], "w": w})
        elif kind == "thumbs":
            out.append(
                {
                    "id": e["id"],
                    "prompt": prompt,
                    "reply": e["responses"][0],
                    "target": float(bool(value)),
                    "w": w * thumbs_weight,
                }
            )
        elif kind == "rating":
            lo, hi = e["scale"]
            out.append(
                {
                    "id": e["id"],
                    "prompt": prompt,
                    "reply": e["responses"][0],
                    "target": (float(value) - lo) / ((hi - lo) or 1),
                    "w": w * rating_weight,
                }
            )
    return [x for x in out if x["w"] > 0]


def encode(examples: Sequence[dict], tokenizer, max_length: int) -> list[dict]:
    from rlhfkit.data.tokenize import tokenize_pair

    out = []
    for x in examples:
        if "chosen" in x:
            out.append(
                {
                    "pair": [
                        tokenize_pair(x["prompt"], x["chosen"], tokenizer, max_length),
                        tokenize_pair(x["prompt"], x["rejected"], tokenizer, max_length),
                    ],
                    "w": x["w"],
                }
            )
        else:
            out.append(
                {
                    "single": [tokenize_pair(x["prompt"], x["reply"], tokenizer, max_length)],
                    "target": x["target"],
                    "w": x["w"],
                }
            )
    return out


def make_collate(pad_id: int):
    """One forward pass per micro-batch: rows = pairs' chosen, pairs' rejected, then singles."""
    from rlhfkit.data.tokenize import pad_sequences

    def collate(batch: list[dict]) -> dict:
        pairs = [x for x in batch if "pair" in x]
        singles = [x for x in batch if "single" in x]
        seqs = [p["pair"][0] for p in pairs] + [p["pair"][1] for p in pairs] + [s["single"][0] for s in singles]
        ids, mask = pad_sequences(seqs, pad_id, side="right")
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "n_pairs": len(pairs),
            "pair_w": torch.tensor([p["w"] for p in pairs], dtype=torch.float32),
            "single_w": torch.tensor([s["w"] for s in singles], dtype=torch.float32),
            "target": torch.tensor([s["target"] for s in singles], dtype=torch.float32),
        }

    return collate


def weighted_loss(scores: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict]:
    """``sum(w * term)`` over the batch's examples (module docstring) from the scores of its rows."""
    n = batch["n_pairs"]
    loss = scores.new_zeros(())
    correct = 0.0
    if n:
        chosen, rejected = scores[:n], scores[n : 2 * n]
        loss = loss + weighted_sum(bradley_terry_loss(chosen, rejected, reduction="none"), batch["pair_w"])
        correct = float((chosen > rejected).sum())
    singles = scores[2 * n :]
    if singles.numel():
        terms = binary_feedback_loss(singles, batch["target"].to(scores.dtype), reduction="none")
        loss = loss + weighted_sum(terms, batch["single_w"])
    return loss, {"pair_accuracy": correct}


def loss_fn(model, batch: dict) -> tuple[torch.Tensor, dict]:
    from rlhfkit.models import reward_scores

    return weighted_loss(reward_scores(model, batch["input_ids"], batch["attention_mask"]).float(), batch)


def count_examples(batch: dict) -> int:
    return int(batch["n_pairs"]) + int(batch["single_w"].numel())


def example_length(x: dict) -> int:
    return max(len(s) for s in x.get("pair", x.get("single")))


def train_reward_model(
    start: str, examples: Sequence[dict], out_dir: Path, section, seed: int, threads: int = 0, max_steps: int = 0
) -> dict:
    """Train from ``start`` (a backbone or the last reward model) on ``examples`` (``section.epochs``
    passes, or ``max_steps`` steps when > 0); the model goes to ``out_dir/model``. Returns
    ``{"model", "examples", "metrics"}``."""
    from rlhfkit.models import load_reward_model
    from rlhfkit.training.distributed import init_distributed
    from rlhfkit.training.loop import TrainingConfig, fit

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    model, tokenizer = load_reward_model(start)
    metrics: dict = {}
    if examples:
        import math

        batch = min(section.batch_size, len(examples))  # a round with little feedback still trains
        config = TrainingConfig(
            output_dir=str(out_dir),
            seed=seed,
            epochs=section.epochs,
            max_steps=max_steps,
            batch_size=batch,
            micro_batch_size=math.gcd(batch, section.micro_batch_size),
            learning_rate=section.learning_rate,
            save_every=1,
            keep_checkpoints=1,
            tensorboard=False,
            threads=threads,
            parallel="none",
        )
        encoded = encode(examples, tokenizer, section.max_length)
        metrics = fit(
            model,
            encoded,
            make_collate(tokenizer.pad_token_id),
            loss_fn,
            count_examples,
            config,
            init_distributed(),
            desc="learn reward",
            unit="examples",
            length_fn=example_length,
        )
    model.eval().save_pretrained(out_dir / "model")
    tokenizer.save_pretrained(out_dir / "model")
    return {
        "model": str(out_dir / "model"),
        "examples": len(examples),
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
    }


def score_events_fn(reward_model: str, max_length: int):
    """``events -> {id: [score of each reply]}`` under a saved reward model (an edit: [served,
    edit]); what the defence compares verdicts with."""
    from rlhfkit.rewards.sources import RewardModelSource

    source = RewardModelSource.load(reward_model, max_length=max_length)

    def score(events: Sequence[dict]) -> dict[int, list[float]]:
        prompts, replies, owners = [], [], []
        for e in events:
            texts = list(e["responses"]) + ([e["value"]] if e["kind"] == "edit" else [])
            for t in texts:
                prompts.append(e["prompt"])
                replies.append(t)
                owners.append(e["id"])
        values = source(prompts, replies).tolist() if prompts else []
        out: dict[int, list[float]] = {}
        for eid, v in zip(owners, values):
            out.setdefault(eid, []).append(float(v))
        return out

    return score


def crossfit_scores_fn(start: str, section, seed: int, stage_dir: Path, threads: int = 0, max_steps: int = 0):
    """``(events, {user: fold}) -> {fold: {event id: scores}}``, what ``defence.defend`` takes as
    ``crossfit_fn``: for each fold a reward model trained from ``start`` on the other folds'
    verdicts (every user at weight 1: nobody is checked yet) by :func:`train_reward_model` under
    the round's ``seed``, scoring the fold's replies. Each fold's scores are kept in
    ``stage_dir/crossfit-K/scores.json`` and its model and checkpoints removed (a fold done is not
    trained again when a killed stage resumes; a fold killed while training resumes from its
    checkpoint)."""
    import shutil

    from rlhfkit.models.versions import atomic_write_json, read_json_object

    def scores(events: Sequence[dict], fold_of: dict[str, int]) -> dict[int, dict[int, list[float]]]:
        out: dict[int, dict[int, list[float]]] = {}
        for fold in sorted(set(fold_of.values())):
            folder = Path(stage_dir) / f"crossfit-{fold}"
            done = folder / "scores.json"
            if not done.is_file():
                held = [e for e in events if fold_of[e["end_user"]] == fold]
                rest = [e for e in events if fold_of[e["end_user"]] != fold]
                examples = examples_of(rest, {}, section.thumbs_weight, section.rating_weight)
                got: dict[int, list[float]] = {}
                folder.mkdir(parents=True, exist_ok=True)
                if held and examples:
                    model = train_reward_model(start, examples, folder, section, seed, threads, max_steps)["model"]
                    got = score_events_fn(model, section.max_length)(held)
                atomic_write_json(done, {str(k): v for k, v in got.items()})
                for p in folder.iterdir():  # the scores are all the defence keeps of a fold model
                    if p.is_dir():
                        shutil.rmtree(p, ignore_errors=True)
            out[fold] = {int(k): v for k, v in read_json_object(done).items()}
        return out

    return scores
