"""Reward-model training: pairwise Bradley-Terry, or regression / classification on ratings / thumbs.

    rlhfkit reward train --data hh-rlhf --model minilm-l6 --output_dir outputs/rm

The model is a Hugging Face `AutoModelForSequenceClassification` with one output (a causal LM
scoring its last real token, or an encoder such as all-MiniLM-L6-v2), so the result loads with
`AutoModelForSequenceClassification.from_pretrained(output_dir + "/model")`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhfkit.core.losses import binary_feedback_loss, bradley_terry_loss, rating_regression_loss, weighted_sum
from rlhfkit.data.loading import load_training_records
from rlhfkit.data.splits import drop_held_out_copies, first_n, split_by_prompt
from rlhfkit.data.tokenize import pad_sequences, tokenize_pair
from rlhfkit.recipes.common import (LoraConfig, require_examples, save_final, scaled_weights, set_threads, total_weight,
                                    validate_data_fields, weights_of)
from rlhfkit.training.distributed import cleanup, init_distributed
from rlhfkit.training.checkpoint import latest_checkpoint
from rlhfkit.training.loop import TrainingConfig, fit
from rlhfkit.core.precision import running_at
from rlhfkit.training.run_identity import finished_run

OBJECTIVE_KIND = {"pairwise": "pairs", "regression": "ratings", "classification": "thumbs"}
RATING_NORMALISATIONS = ("none", "per_labeler")
METRIC_NAMES = {"mse": "MSE", "spearman": "Spearman", "accuracy": "accuracy", "auc": "AUC"}


@dataclass
class RewardConfig(TrainingConfig):
    model: str = field(default="minilm-l6", metadata={"help": "backbone: minilm-l6 (encoder), smollm2-135m, a local folder or .gguf"})
    kind: str = field(default="auto", metadata={"help": "backbone kind: auto, causal or encoder"})
    objective: str = field(default="pairwise", metadata={"help": "pairwise (chosen/rejected), regression (ratings) or classification (thumbs)"})
    data: str = field(default="hh-rlhf", metadata={"help": "JSONL/JSON file, or hh-rlhf / finegrained / oasst; a+b joins sources (finegrained+oasst)"})
    eval_data: str = field(default="", metadata={"help": "held-out file; empty = hold out eval_fraction of data"})
    eval_fraction: float = field(default=0.2, metadata={"help": "fraction held out when eval_data is empty"})
    split_seed: int = field(default=-1, metadata={"help": "seed of the held-out (and validation) split; -1 = seed. "
                                                        "Set it to train several models (seeds) on one split"})
    validation_fraction: float = field(default=0.0, metadata={"help": "fraction of the training part kept apart "
                                                                   "for choices (best_metric: val_loss); the held-out "
                                                                   "set is then only scored once, at the end"})
    max_train: int = field(default=0, metadata={"help": "train on only the first N examples of the shuffled training "
                                                       "part (0 = all; for learning curves: the held-out set stays the same)"})
    max_length: int = field(default=256, metadata={"help": "tokens of prompt + response; the prompt is cut from the left"})
    ties: str = field(default="drop", metadata={"help": "tied pairs: drop, or keep (loss pulls both rewards together)"})
    use_margin: bool = field(default=True, metadata={"help": "use a pair's margin when it has one"})
    normalise_ratings: str = field(default="none", metadata={
        "help": "regression: none (the rating mapped to [0, 1]), or per_labeler: each labeler's ratings z-scored with "
                "the training part's statistics and mapped to the pooled mean and sd (needs `labeler` ids)"})
    on_error: str = field(default="raise", metadata={"help": "bad records: raise, or skip and count"})
    drop_duplicates: bool = field(default=True, metadata={
        "help": "drop exact duplicate records (counted); false keeps deliberate repeats (a weight is the better way)"})
    output_dir: str = field(default="outputs/reward", metadata={"help": "checkpoints, metrics.jsonl and model/"})
    learning_rate: float = field(default=3e-5, metadata={"help": "peak learning rate"})
    batch_size: int = field(default=32, metadata={"help": "global batch (pairs per optimiser step)"})
    micro_batch_size: int = field(default=8, metadata={"help": "pairs per forward pass"})
    epochs: float = field(default=2.0, metadata={"help": "passes over the training data"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "fraction of steps with linear warm-up"})
    linear_probe_steps: int = field(default=0, metadata={"help": "first fit only the fresh scalar head on the frozen "
                                                                 "backbone's features (full-batch L-BFGS steps, 0 = off), "
                                                                 "then fine-tune everything from it (LP-FT); with "
                                                                 "epochs 0 the probe is the model (a frozen backbone)"})
    linear_probe_l2: float = field(default=1e-3, metadata={"help": "L2 penalty on the head weights in the linear probe"})
    lora: LoraConfig = field(default_factory=LoraConfig)

    def trains_without_steps(self) -> bool:
        return self.linear_probe_steps > 0  # epochs 0: the linear probe alone, backbone frozen

    def validate(self) -> None:
        super().validate()
        if self.max_train < 0:
            raise ValueError("field 'max_train' must be >= 0 (0 = all)")
        if self.linear_probe_steps < 0 or self.linear_probe_l2 < 0:
            raise ValueError("fields 'linear_probe_steps' and 'linear_probe_l2' must be >= 0")
        if self.objective not in OBJECTIVE_KIND:
            raise ValueError(f"field 'objective': {self.objective!r} is not one of {list(OBJECTIVE_KIND)}")
        if self.kind not in ("auto", "causal", "encoder"):
            raise ValueError(f"field 'kind': {self.kind!r} is not one of ['auto', 'causal', 'encoder']")
        validate_data_fields(self)
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"field 'validation_fraction': {self.validation_fraction} is not in [0, 1)")
        if self.normalise_ratings not in RATING_NORMALISATIONS:
            raise ValueError(f"field 'normalise_ratings': {self.normalise_ratings!r} is not one of "
                             f"{list(RATING_NORMALISATIONS)}")
        if self.normalise_ratings != "none" and self.objective != "regression":
            raise ValueError(f"field 'normalise_ratings': normalises ratings, for objective regression, not "
                             f"{self.objective!r}")


# ----------------------------------------------------------------------------- rating targets
def rating_target(r) -> float:
    """A rating mapped to [0, 1] by its scale: the regression target."""
    span = (r.scale_max - r.scale_min) or 1.0
    return (r.rating - r.scale_min) / span


@dataclass(frozen=True)
class LabelerScales:
    """Per-labeler statistics of the [0, 1] rating targets of a training set: ``labelers`` maps an
    id to its (mean, population sd), for labelers with at least two ratings that differ; ``mean``
    and ``sd`` are those of all the ratings (the pooled scale)."""

    labelers: dict
    mean: float
    sd: float


def labeler_scales(records: list) -> LabelerScales:
    """:class:`LabelerScales` of ``records`` (rating records)."""
    import statistics

    targets = [rating_target(r) for r in records]
    by_labeler: dict = {}
    for r, t in zip(records, targets):
        if r.labeler is not None:
            by_labeler.setdefault(r.labeler, []).append(t)
    scales = {k: (statistics.fmean(v), statistics.pstdev(v)) for k, v in by_labeler.items()
              if len(v) >= 2 and statistics.pstdev(v) > 0}
    return LabelerScales(scales, statistics.fmean(targets), statistics.pstdev(targets))


def normalised_targets(records: list, scales: LabelerScales) -> list[float]:
    """Each rating's target with its labeler's scale removed: ``mean + sd * (t - m_l) / s_l``, the
    labeler's z-score mapped to the pooled mean and sd (``t`` the [0, 1] rating, ``m_l``, ``s_l``
    the labeler's mean and sd in ``scales``). A lenient and a strict labeler who order responses
    alike then give them the same targets. Mapped back rather than kept as z so the scores stay on
    the scale of an unnormalised run (comparable MSE, rewards of the same size). Ratings without
    a labeler, or of a labeler not in ``scales`` (fewer than two distinct training ratings: no
    scale to remove), keep their plain target."""
    out = []
    for r in records:
        t = rating_target(r)
        if r.labeler in scales.labelers:
            m, sd = scales.labelers[r.labeler]
            t = scales.mean + scales.sd * (t - m) / sd
        out.append(t)
    return out


def encode_records(records, tokenizer, config: RewardConfig, targets: list[float] | None = None) -> list[dict]:
    """Token ids of prompt ⊕ response, with the target of each objective (ratings: ``targets``
    when given, else the rating mapped to [0, 1]) and the record's ``weight`` when it has one."""
    out = []
    for i, r in enumerate(records):
        if config.objective == "pairwise":
            e = {
                "chosen": tokenize_pair(r.prompt, r.chosen, tokenizer, config.max_length),
                "rejected": tokenize_pair(r.prompt, r.rejected, tokenizer, config.max_length),
                "margin": float(r.margin) if (config.use_margin and r.margin is not None) else 0.0,
                "tie": bool(r.tie),
                "subset": r.subset,
            }
        elif config.objective == "regression":
            e = {"ids": tokenize_pair(r.prompt, r.completion, tokenizer, config.max_length),
                 "target": rating_target(r) if targets is None else float(targets[i])}
        else:
            e = {"ids": tokenize_pair(r.prompt, r.completion, tokenizer, config.max_length),
                 "target": float(r.label)}
        if r.weight is not None:
            e["weight"] = float(r.weight)
        out.append(e)
    return out


def make_collate(pad_id: int, objective: str):
    def collate(examples: list[dict]) -> dict:
        if objective == "pairwise":
            # chosen and rejected in one forward pass: rows [0, n) chosen, [n, 2n) rejected
            seqs = [e["chosen"] for e in examples] + [e["rejected"] for e in examples]
            ids, mask = pad_sequences(seqs, pad_id, side="right")
            batch = {"input_ids": ids, "attention_mask": mask,
                     "margin": torch.tensor([e["margin"] for e in examples]),
                     "tie": torch.tensor([e["tie"] for e in examples])}
        else:
            ids, mask = pad_sequences([e["ids"] for e in examples], pad_id, side="right")
            batch = {"input_ids": ids, "attention_mask": mask,
                     "target": torch.tensor([e["target"] for e in examples])}
        if (weights := weights_of(examples)) is not None:
            batch["weight"] = weights
        return batch

    return collate


def make_loss(objective: str):
    from rlhfkit.models import reward_scores

    def loss_sum(model, batch: dict) -> tuple[torch.Tensor, dict]:
        """The sum of per-example losses, each times its weight (the loop divides by the sum of
        weights, :func:`count_examples`); the pair stats are weighted the same way."""
        scores = reward_scores(model, batch["input_ids"], batch["attention_mask"])
        w = batch.get("weight")
        if objective == "pairwise":
            n = scores.shape[0] // 2
            chosen, rejected = scores[:n], scores[n:]
            margin = batch["margin"] if bool(batch["margin"].any()) else None
            losses = bradley_terry_loss(chosen, rejected, margin=margin, tie=batch["tie"], reduction="none")
            decided = ~batch["tie"]
            correct = ((chosen > rejected) & decided).to(scores.dtype)
            return weighted_sum(losses, w), {"accuracy": weighted_sum(correct, w).item(),
                                             "margin_mean": weighted_sum((chosen - rejected).detach(), w).item()}
        if objective == "regression":
            return weighted_sum(rating_regression_loss(scores, batch["target"], reduction="none"), w), {}
        return weighted_sum(binary_feedback_loss(scores, batch["target"], reduction="none"), w), {}

    return loss_sum


@torch.no_grad()
def head_features(model, batches) -> torch.Tensor:
    """The inputs of the scalar head ``[N, d]`` for every row of ``batches`` (collated), in order."""
    from rlhfkit.models import reward_scores
    from rlhfkit.models.reward import last_real_index, score_head

    seen: list[torch.Tensor] = []
    hook = score_head(model).register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().float()))
    out = []
    try:
        for b in batches:
            seen.clear()
            reward_scores(model, b["input_ids"], b["attention_mask"])
            x = seen[0]
            if x.dim() == 3:  # a causal backbone's head runs on every position; it is read at the last real token
                x = x[torch.arange(x.shape[0]), last_real_index(b["attention_mask"])]
            out.append(x)
    finally:
        hook.remove()
    return torch.cat(out)


def linear_probe(model, train: list[dict], collate, config: "RewardConfig") -> dict:
    """LP-FT (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features and Underperform
    Out-of-Distribution"): fit the freshly initialised head alone on the frozen backbone's
    features with the training objective plus ``linear_probe_l2 * |w|^2`` (full batch, L-BFGS),
    so that fine-tuning starts from a head that already ranks, instead of a random one whose
    large early gradients reshape the backbone's features. Deterministic (no RNG)."""
    from rlhfkit.models.reward import score_head

    head = score_head(model)
    was_training = model.training
    model.eval()
    batches = [collate(train[i:i + 32]) for i in range(0, len(train), 32)]
    with running_at(model, config.precision):  # the backbone's features, as training computes them;
        feats = head_features(model, batches)    # the probe's own fit stays float32
    model.train(was_training)
    weights = None
    if any("weight" in b for b in batches):
        weights = torch.cat([b["weight"] if "weight" in b else torch.ones(count_examples(b), dtype=torch.float64)
                             for b in batches]).float()

    def mean(losses: torch.Tensor) -> torch.Tensor:  # the (weighted) mean, as training takes it
        return losses.mean() if weights is None else weighted_sum(losses, weights) / weights.sum().clamp(min=1e-12)

    if config.objective == "pairwise":
        n = [int(b["tie"].numel()) for b in batches]
        chosen = torch.cat([f[:k] for f, k in zip(feats.split([2 * k for k in n]), n)])
        rejected = torch.cat([f[k:] for f, k in zip(feats.split([2 * k for k in n]), n)])
        margin = torch.cat([b["margin"] for b in batches]).float()
        tie = torch.cat([b["tie"] for b in batches])
    else:
        target = torch.cat([b["target"] for b in batches]).float()
    w = head.weight.detach().float().clone().reshape(-1).requires_grad_(True)
    # a head without a bias (causal backbones' score layer) gets none in the probe either: a fitted
    # bias that could not be copied back would leave the fine-tuning start off by it
    has_bias = head.bias is not None
    b0 = head.bias.detach().float().clone().reshape(-1).requires_grad_(True) if has_bias else torch.zeros(1)

    def objective() -> torch.Tensor:
        if config.objective == "pairwise":
            rc, rr = chosen @ w + b0, rejected @ w + b0
            loss = mean(bradley_terry_loss(rc, rr, margin=margin if bool(margin.any()) else None, tie=tie,
                                           reduction="none"))
        elif config.objective == "regression":
            loss = mean(rating_regression_loss(feats @ w + b0, target, reduction="none"))
        else:
            loss = mean(binary_feedback_loss(feats @ w + b0, target, reduction="none"))
        return loss + config.linear_probe_l2 * (w ** 2).sum()

    opt = torch.optim.LBFGS([w, b0] if has_bias else [w], lr=1.0, max_iter=config.linear_probe_steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    before = float(objective().detach())
    opt.step(closure)
    after = float(objective().detach())
    with torch.no_grad():
        head.weight.copy_(w.view_as(head.weight).to(head.weight.dtype))
        if has_bias:
            head.bias.copy_(b0.view_as(head.bias).to(head.bias.dtype))
    stats = {"probe_loss_before": before, "probe_loss_after": after}
    if config.objective == "pairwise":
        with torch.no_grad():
            decided = ~tie
            stats["probe_train_accuracy"] = float(((chosen @ w > rejected @ w) & decided).sum() / decided.sum().clamp(min=1))
    return stats


def count_examples(batch: dict) -> int | float:
    """Examples in the batch, or the sum of their weights when they have weights."""
    if "weight" in batch:
        return float(batch["weight"].sum())
    return int(batch["tie"].numel()) if "tie" in batch else int(batch["target"].numel())


def split_seed(config: RewardConfig) -> int:
    return config.seed if config.split_seed < 0 else config.split_seed


def run(config: RewardConfig) -> dict:
    from rlhfkit.models import apply_lora, load_reward_model

    set_threads(config.threads)
    info = init_distributed()
    if (done := finished_run(config, "reward", info)) is not None:
        cleanup(info)
        return done
    torch.manual_seed(config.seed)
    kind = OBJECTIVE_KIND[config.objective]
    records = load_training_records(config.data, kind, config.on_error, ties=config.ties,
                                    drop_duplicates=config.drop_duplicates)
    if config.eval_data:
        eval_records = load_training_records(config.eval_data, kind, config.on_error, ties="keep",
                                             drop_duplicates=config.drop_duplicates)
        train_records = drop_held_out_copies(records, eval_records, config.data)
    else:  # whole prompts held out: a ranking's pairs, or one pair judged by several people, stay on one side
        train_records, eval_records = split_by_prompt(records, config.eval_fraction, split_seed(config), shuffle=True)
    # a validation part carved from the training part (by prompt, another seed), so that choosing
    # the checkpoint never looks at the held-out set
    val_records: list = []
    if config.validation_fraction:
        train_records, val_records = split_by_prompt(train_records, config.validation_fraction,
                                                     split_seed(config) + 1, shuffle=True)
    train_records = first_n(train_records, config.max_train)
    probe_only = config.epochs == 0 and config.max_steps == 0  # the backbone stays as it was
    require_examples(len(train_records), 1 if probe_only else config.batch_size, config.data,
                     len(eval_records) + len(val_records), total_weight(train_records))
    train_records = scaled_weights(train_records)
    targets = rating_targets(config, train_records, val_records, eval_records) if kind == "ratings" else {}
    model, tokenizer = load_reward_model(config.model, kind=config.kind)
    model.to(info.device)
    if config.lora.r:
        model = apply_lora(model, r=config.lora.r, alpha=config.lora.alpha, dropout=config.lora.dropout,
                           target_modules=config.lora.target_modules)
    train = encode_records(train_records, tokenizer, config, targets.get("train"))
    collate = make_collate(tokenizer.pad_token_id, config.objective)

    def scorer(held: list, prefix: str, part: str):
        """Held-out metrics of ``held`` (pairs, ratings against their targets, or thumbs), unweighted:
        a record's weight says how much it teaches, not how much the model's score on it counts."""
        def score(m):
            scores = held_out_metrics(m, tokenizer, held, config, targets.get(part))
            return {f"{prefix}_{k}": v for k, v in scores.items() if isinstance(v, (int, float))}
        return score

    eval_fn = None
    if val_records:
        eval_fn = scorer(val_records, "val", "val")
    elif eval_records:
        eval_fn = scorer(eval_records, "eval", "eval")
    if info.is_main:
        print(f"reward: {len(train)} training, {len(val_records)} validation and {len(eval_records)} held-out "
              f"{kind}, backbone {config.model}")
    # a checkpoint already holds the probed head, unless there is no training to resume (probe
    # only: a checkpoint left by an earlier fine-tuning run in this folder is not this run's). Any
    # checkpoint will do here: fit resumes from the newest intact one or stops, naming the damage
    resuming = config.resume and not probe_only and latest_checkpoint(config.output_dir) is not None
    probe: dict = {}
    if config.linear_probe_steps and not resuming:
        probe = linear_probe(model, train, collate, config)
        if info.is_main:
            print("reward: linear probe of the head: " + ", ".join(f"{k} {v:.4f}" for k, v in probe.items()))
    if probe_only:
        metrics = {"step": 0, **probe}
        if eval_records:
            with running_at(model, config.precision):
                metrics.update(scorer(eval_records, "eval", "eval")(model.eval()))
    else:
        metrics = fit(model, train, collate, make_loss(config.objective), count_examples, config, info,
                      eval_fn, desc="reward", unit="pairs" if kind == "pairs" else "examples",
                      final_eval_fn=scorer(eval_records, "eval", "eval") if val_records and eval_records else None)
    save_final(model, tokenizer, config, metrics, info)
    if info.is_main:
        print(held_out_summary(metrics, Path(config.output_dir) / "model", config.objective))
    cleanup(info)
    return metrics


def rating_targets(config: RewardConfig, train: list, val: list, held: list) -> dict:
    """The regression targets of each part (``{"train", "val", "eval"}``): the ratings mapped to
    [0, 1], or with ``normalise_ratings: per_labeler`` each labeler's scale removed with the
    training part's statistics (:func:`normalised_targets`; the held-out ratings are scored
    against targets made the same way)."""
    if config.normalise_ratings == "none":
        return {}
    scales = labeler_scales(train)
    if not scales.labelers:
        from rlhfkit.data.errors import DataError

        raise DataError("normalise_ratings per_labeler: no labeler has two different ratings in the training part "
                        "(records need a `labeler` id: rlhfkit feedback export writes one)", path=config.data)
    kept = sum(1 for r in train if r.labeler not in scales.labelers)
    print(f"reward: ratings normalised per labeler for {len(scales.labelers)} labelers (z-scores mapped to the "
          f"pooled mean {scales.mean:.3f} and sd {scales.sd:.3f} of the [0, 1] ratings); {kept} of {len(train)} "
          "training ratings kept as given (no labeler id, or a labeler without two different ratings)")
    return {"train": normalised_targets(train, scales), "val": normalised_targets(val, scales),
            "eval": normalised_targets(held, scales)}


def held_out_metrics(model, tokenizer, held: list, config: RewardConfig, targets: list[float] | None) -> dict:
    """Pair metrics (``eval.reward_eval.evaluate_pairs``, overall), rating metrics (MSE, Spearman)
    or thumbs metrics (accuracy, AUC, log loss) of ``held``, by the objective."""
    from rlhfkit.eval.reward_eval import evaluate_pairs, evaluate_ratings, evaluate_thumbs

    size = dict(max_length=config.max_length, batch_size=config.micro_batch_size * 2)
    if config.objective == "pairwise":
        return evaluate_pairs(model, tokenizer, held, **size)["overall"]
    if config.objective == "regression":
        return evaluate_ratings(model, tokenizer, held, targets if targets is not None else
                                [rating_target(r) for r in held], **size)
    return evaluate_thumbs(model, tokenizer, held, **size)


def held_out_summary(metrics: dict, model_dir: Path, objective: str = "pairwise") -> str:
    """The line a person reads when training ends: where the model is and how it did on data it
    did not train on (the held-out split when there is one, else the validation split): pairs'
    accuracy, ratings' MSE and Spearman correlation, thumbs' accuracy and AUC."""
    parts = [f"reward: saved {model_dir}"]
    if objective != "pairwise":
        what, keys = ("ratings", ("mse", "spearman")) if objective == "regression" else ("thumbs", ("accuracy", "auc"))
        for prefix, name in (("eval", "held-out"), ("val", "validation")):
            if f"{prefix}_{keys[0]}" in metrics:
                values = " and ".join(f"{METRIC_NAMES[k]} {metrics[f'{prefix}_{k}']:.3f}" for k in keys)
                parts.append(f"{name} {values} on {int(metrics.get(f'{prefix}_examples', 0))} {what}")
                break
        else:
            parts.append(f"no held-out {what} to score it on (give --eval_data FILE or --eval_fraction above 0)")
        return "; ".join(parts)
    for prefix, name in (("eval", "held-out"), ("val", "validation")):
        if f"{prefix}_accuracy" in metrics:
            n, ties = int(metrics.get(f"{prefix}_pairs", 0)), int(metrics.get(f"{prefix}_ties", 0))
            parts.append(f"{name} accuracy {metrics[f'{prefix}_accuracy']:.3f} on {n} pairs"
                         + (f" (and {ties} tied pairs, scored apart)" if ties else "")
                         + (f", ECE {metrics[f'{prefix}_ece']:.3f}" if f"{prefix}_ece" in metrics else ""))
            break
    else:
        parts.append("no held-out pairs to score it on (give --eval_data FILE or --eval_fraction above 0)")
    return "; ".join(parts)
