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
from rlhfkit.models import load_reward_model, reward_scores
from rlhfkit.rewards.metrics import evaluate_pairs, evaluate_ratings, evaluate_thumbs
from rlhfkit.data.loading import load_training_records
from rlhfkit.data.splits import drop_held_out_copies, first_n, split_by_prompt
from rlhfkit.recipes.common import (
    LoraConfig,
    with_lora,
    require_examples,
    save_final,
    scaled_weights,
    set_threads,
    total_weight,
    validate_data_fields,
)

# the pieces a reward model is trained with, importable from here as before the split
from rlhfkit.recipes.rating_targets import (  # noqa: F401
    LabelerScales,
    labeler_scales,
    normalised_targets,
    rating_target,
    rating_targets,
)
from rlhfkit.recipes.reward_data import count_examples, encode_records, make_collate
from rlhfkit.recipes.reward_probe import head_features, linear_probe  # noqa: F401
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
    model: str = field(
        default="minilm-l6", metadata={"help": "backbone: minilm-l6 (encoder), smollm2-135m, a local folder or .gguf"}
    )
    kind: str = field(default="auto", metadata={"help": "backbone kind: auto, causal or encoder"})
    objective: str = field(
        default="pairwise",
        metadata={"help": "pairwise (chosen/rejected), regression (ratings) or classification (thumbs)"},
    )
    data: str = field(
        default="hh-rlhf",
        metadata={"help": "JSONL/JSON file, or hh-rlhf / finegrained / oasst; a+b joins sources (finegrained+oasst)"},
    )
    eval_data: str = field(default="", metadata={"help": "held-out file; empty = hold out eval_fraction of data"})
    eval_fraction: float = field(default=0.2, metadata={"help": "fraction held out when eval_data is empty"})
    split_seed: int = field(
        default=-1,
        metadata={
            "help": "seed of the held-out (and validation) split; -1 = seed. "
            "Set it to train several models (seeds) on one split"
        },
    )
    validation_fraction: float = field(
        default=0.0,
        metadata={
            "help": "fraction of the training part kept apart "
            "for choices (best_metric: val_loss); the held-out "
            "set is then only scored once, at the end"
        },
    )
    max_train: int = field(
        default=0,
        metadata={
            "help": "train on only the first N examples of the shuffled training "
            "part (0 = all; for learning curves: the held-out set stays the same)"
        },
    )
    max_length: int = field(
        default=256, metadata={"help": "tokens of prompt + response; the prompt is cut from the left"}
    )
    ties: str = field(default="drop", metadata={"help": "tied pairs: drop, or keep (loss pulls both rewards together)"})
    use_margin: bool = field(default=True, metadata={"help": "use a pair's margin when it has one"})
    normalise_ratings: str = field(
        default="none",
        metadata={
            "help": "regression: none (the rating mapped to [0, 1]), or per_labeler: each labeler's ratings z-scored with "
            "the training part's statistics and mapped to the pooled mean and sd (needs `labeler` ids)"
        },
    )
    on_error: str = field(default="raise", metadata={"help": "bad records: raise, or skip and count"})
    drop_duplicates: bool = field(
        default=True,
        metadata={
            "help": "drop exact duplicate records (counted); false keeps deliberate repeats (a weight is the better way)"
        },
    )
    output_dir: str = field(default="outputs/reward", metadata={"help": "checkpoints, metrics.jsonl and model/"})
    learning_rate: float = field(default=3e-5, metadata={"help": "peak learning rate"})
    batch_size: int = field(default=32, metadata={"help": "global batch (pairs per optimiser step)"})
    micro_batch_size: int = field(default=8, metadata={"help": "pairs per forward pass"})
    epochs: float = field(default=2.0, metadata={"help": "passes over the training data"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "fraction of steps with linear warm-up"})
    linear_probe_steps: int = field(
        default=0,
        metadata={
            "help": "first fit only the fresh scalar head on the frozen "
            "backbone's features (full-batch L-BFGS steps, 0 = off), "
            "then fine-tune everything from it (LP-FT); with "
            "epochs 0 the probe is the model (a frozen backbone)"
        },
    )
    linear_probe_l2: float = field(
        default=1e-3, metadata={"help": "L2 penalty on the head weights in the linear probe"}
    )
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
            raise ValueError(
                f"field 'normalise_ratings': {self.normalise_ratings!r} is not one of {list(RATING_NORMALISATIONS)}"
            )
        if self.normalise_ratings != "none" and self.objective != "regression":
            raise ValueError(
                f"field 'normalise_ratings': normalises ratings, for objective regression, not {self.objective!r}"
            )


def make_loss(objective: str):
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
            return weighted_sum(losses, w), {
                "accuracy": weighted_sum(correct, w).item(),
                "margin_mean": weighted_sum((chosen - rejected).detach(), w).item(),
            }
        if objective == "regression":
            return weighted_sum(rating_regression_loss(scores, batch["target"], reduction="none"), w), {}
        return weighted_sum(binary_feedback_loss(scores, batch["target"], reduction="none"), w), {}

    return loss_sum


def split_seed(config: RewardConfig) -> int:
    return config.seed if config.split_seed < 0 else config.split_seed


def run(config: RewardConfig) -> dict:
    set_threads(config.threads)
    info = init_distributed()
    if (done := finished_run(config, "reward", info)) is not None:
        cleanup(info)
        return done
    torch.manual_seed(config.seed)
    kind = OBJECTIVE_KIND[config.objective]
    records = load_training_records(
        config.data, kind, config.on_error, ties=config.ties, drop_duplicates=config.drop_duplicates
    )
    if config.eval_data:
        eval_records = load_training_records(
            config.eval_data, kind, config.on_error, ties="keep", drop_duplicates=config.drop_duplicates
        )
        train_records = drop_held_out_copies(records, eval_records, config.data)
    else:  # whole prompts held out: a ranking's pairs, or one pair judged by several people, stay on one side
        train_records, eval_records = split_by_prompt(records, config.eval_fraction, split_seed(config), shuffle=True)
    # a validation part carved from the training part (by prompt, another seed), so that choosing
    # the checkpoint never looks at the held-out set
    val_records: list = []
    if config.validation_fraction:
        train_records, val_records = split_by_prompt(
            train_records, config.validation_fraction, split_seed(config) + 1, shuffle=True
        )
    train_records = first_n(train_records, config.max_train)
    probe_only = config.epochs == 0 and config.max_steps == 0  # the backbone stays as it was
    require_examples(
        len(train_records),
        1 if probe_only else config.batch_size,
        config.data,
        len(eval_records) + len(val_records),
        total_weight(train_records),
    )
    train_records = scaled_weights(train_records)
    targets = rating_targets(config, train_records, val_records, eval_records) if kind == "ratings" else {}
    model, tokenizer = load_reward_model(config.model, kind=config.kind)
    model.to(info.device)
    model = with_lora(model, config.lora)  # unchanged when lora.r is 0
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
        print(
            f"reward: {len(train)} training, {len(val_records)} validation and {len(eval_records)} held-out "
            f"{kind}, backbone {config.model}"
        )
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
        metrics = fit(
            model,
            train,
            collate,
            make_loss(config.objective),
            count_examples,
            config,
            info,
            eval_fn,
            desc="reward",
            unit="pairs" if kind == "pairs" else "examples",
            final_eval_fn=scorer(eval_records, "eval", "eval") if val_records and eval_records else None,
        )
    save_final(model, tokenizer, config, metrics, info)
    if info.is_main:
        print(held_out_summary(metrics, Path(config.output_dir) / "model", config.objective))
    cleanup(info)
    return metrics


def held_out_metrics(model, tokenizer, held: list, config: RewardConfig, targets: list[float] | None) -> dict:
    """Pair metrics (``rewards.metrics.evaluate_pairs``, overall; what `reward eval` reports),
    rating metrics (MSE, Spearman) or thumbs metrics (accuracy, AUC, log loss) of ``held``, by the
    objective."""
    size = dict(max_length=config.max_length, batch_size=config.micro_batch_size * 2)
    if config.objective == "pairwise":
        return evaluate_pairs(model, tokenizer, held, **size)["overall"]
    if config.objective == "regression":
        return evaluate_ratings(
            model, tokenizer, held, targets if targets is not None else [rating_target(r) for r in held], **size
        )
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
            parts.append(
                f"{name} accuracy {metrics[f'{prefix}_accuracy']:.3f} on {n} pairs"
                + (f" (and {ties} tied pairs, scored apart)" if ties else "")
                + (f", ECE {metrics[f'{prefix}_ece']:.3f}" if f"{prefix}_ece" in metrics else "")
            )
            break
    else:
        parts.append("no held-out pairs to score it on (give --eval_data FILE or --eval_fraction above 0)")
    return "; ".join(parts)
