"""KTO: alignment from unpaired thumbs-up / thumbs-down feedback (Ethayarajh et al. 2024).

    rlhfkit kto --data thumbs.jsonl --model smollm2-135m --beta 0.1 --output_dir outputs/kto

Input: thumbs records ``{"prompt", "completion", "label": true/false}``, or preference pairs
(a file or hh-rlhf / finegrained / oasst), each split into a desirable (chosen) and an
undesirable (rejected) example; tied pairs say nothing about either answer alone, so they are
dropped (and counted). The held-out split is by prompt and made before pairs are split, so no
prompt is in both.

The reference point z0 = max(0, KL estimate) comes from mismatched prompt / completion pairs
(x_i, y_j), y_j the completion of another prompt (as in the paper and TRL), detached:
- reference ``cached`` (default): the mismatched pairs are fixed once (completions rotated over the
  shuffled training set to the nearest example of another prompt, as TRL rotates them within
  dataset blocks), so the reference
  log-probs of matched and mismatched pairs can be computed once and stored in
  ``output_dir/reference_logps.pt`` (same cache as ``rlhfkit dpo``);
- reference ``lora`` (the policy with its adapter off): the completions are rotated within each
  micro-batch, so the KL sample is the micro-batch's own completions (the paper's in-batch
  estimate); needs micro_batch_size >= 2.
z0 is estimated per micro-batch, so unlike the other recipes the update depends slightly on how a
batch is split into micro-batches (as in TRL, per device batch).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlhfkit.core.losses import kto_loss, weighted_sum
from rlhfkit.data.loading import load_training_records
from rlhfkit.data.records import ThumbsRecord
from rlhfkit.data.splits import drop_held_out_copies, first_n, split_by_prompt
from rlhfkit.recipes.common import (
    LoraConfig,
    with_lora,
    require_examples,
    save_final,
    scaled_weights,
    set_threads,
    total_weight,
    weights_of,
    with_weight,
)
from rlhfkit.recipes.dpo import resolved_reference, validate_lengths_and_limits, validate_reference
from rlhfkit.recipes.pair_data import encode_prompt, encode_response, join, pad_scored
from rlhfkit.recipes.reference_cache import cached_reference
from rlhfkit.recipes.sequence_logps import reference_forward, sequence_logps
from rlhfkit.training.checkpoint import unwrap
from rlhfkit.training.distributed import cleanup, init_distributed
from rlhfkit.training.loop import TrainingConfig, fit
from rlhfkit.training.run_identity import finished_run


@dataclass
class KTOConfig(TrainingConfig):
    model: str = field(
        default="smollm2-135m", metadata={"help": "policy: smollm2-135m, a local folder, a .gguf file or a HF name"}
    )
    data: str = field(
        default="hh-rlhf",
        metadata={"help": "thumbs file (prompt/completion/label), pair file, or hh-rlhf / finegrained / oasst"},
    )
    data_kind: str = field(
        default="auto", metadata={"help": "thumbs, pairs, or auto (named sets are pairs; a file by its first record)"}
    )
    eval_data: str = field(default="", metadata={"help": "held-out file; empty = hold out eval_fraction of data"})
    eval_fraction: float = field(default=0.1, metadata={"help": "fraction held out when eval_data is empty"})
    max_train: int = field(
        default=0, metadata={"help": "use only the first N training records of the shuffled split (0 = all)"}
    )
    max_eval: int = field(default=0, metadata={"help": "use only the first N held-out records (0 = all)"})
    beta: float = field(default=0.1, metadata={"help": "reward scale: reward = beta * log(pi / pi_ref)"})
    desirable_weight: float = field(
        default=1.0, metadata={"help": "lambda_D: weight of desirable (thumbs-up) examples"}
    )
    undesirable_weight: float = field(
        default=1.0,
        metadata={
            "help": "lambda_U: weight of undesirable examples (paper: keep lambda_D n_D / (lambda_U n_U) in [1, 4/3])"
        },
    )
    reference: str = field(
        default="auto",
        metadata={"help": "cached (log-probs computed once, on disk) or lora (adapter off); auto = cached"},
    )
    max_length: int = field(
        default=512, metadata={"help": "tokens of prompt + completion (the completion is cut on the right)"}
    )
    max_prompt_length: int = field(default=256, metadata={"help": "prompt tokens kept (cut on the left)"})
    on_error: str = field(default="raise", metadata={"help": "bad records: raise, or skip and count"})
    drop_duplicates: bool = field(
        default=True,
        metadata={
            "help": "drop exact duplicate records (counted); false keeps deliberate repeats (a weight is the better way)"
        },
    )
    output_dir: str = field(
        default="outputs/kto", metadata={"help": "checkpoints, metrics.jsonl, reference_logps.pt and model/"}
    )
    learning_rate: float = field(default=1e-6, metadata={"help": "peak learning rate"})
    batch_size: int = field(default=16, metadata={"help": "global batch (examples per optimiser step)"})
    micro_batch_size: int = field(default=4, metadata={"help": "examples per forward pass (and per KL estimate)"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "fraction of steps with linear warm-up"})
    lora: LoraConfig = field(default_factory=LoraConfig)

    def validate(self) -> None:
        super().validate()
        if self.data_kind not in ("auto", "thumbs", "pairs"):
            raise ValueError(f"field 'data_kind': {self.data_kind!r} is not auto, thumbs or pairs")
        validate_reference(self.reference, False, self.lora.r, "kto")
        if self.reference == "lora" and self.micro_batch_size < 2:
            raise ValueError(
                "reference lora estimates KL from mismatched pairs within a micro-batch: micro_batch_size must be >= 2"
            )
        if self.beta <= 0 or self.desirable_weight < 0 or self.undesirable_weight < 0:
            raise ValueError("beta must be > 0 and the weights >= 0")
        validate_lengths_and_limits(self)


# ----------------------------------------------------------------------------- data
def detect_kind(source: str) -> str:
    """'pairs' for the named shared sets and files whose first record has 'chosen'; else 'thumbs'."""
    from rlhfkit.data.readers import iter_raw

    if source in ("hh-rlhf", "finegrained", "oasst"):
        return "pairs"

    _, items = iter_raw(source)
    for _, raw in items:
        if isinstance(raw, dict):
            return "pairs" if "chosen" in raw else "thumbs"
        break
    return "thumbs"


def load_records(source: str, config: KTOConfig) -> tuple[list, str]:
    """(records, kind): thumbs records, or pairs with ties dropped (counted)."""
    kind = detect_kind(source) if config.data_kind == "auto" else config.data_kind
    records = load_training_records(source, kind, config.on_error, ties="keep", drop_duplicates=config.drop_duplicates)
    if kind == "pairs":
        n_ties = sum(1 for r in records if r.tie)
        if n_ties:
            print(f"{source}: dropped {n_ties} tied pairs (a tie says neither answer is desirable alone)")
        records = [r for r in records if not r.tie]
    return records, kind


def to_thumbs(records: list, kind: str) -> list[ThumbsRecord]:
    if kind == "thumbs":
        return list(records)
    out = []
    for r in records:  # each pair: chosen is desirable, rejected undesirable (same labeler and weight)
        out += [
            ThumbsRecord(r.prompt, r.chosen, True, labeler=r.labeler, weight=r.weight),
            ThumbsRecord(r.prompt, r.rejected, False, labeler=r.labeler, weight=r.weight),
        ]
    return out


def mismatched_partners(prompts: list) -> list[int]:
    """For each example ``i``, the example whose completion makes its mismatched pair
    ``(x_i, y_j)``: the nearest earlier one, rotating over the list, whose prompt differs (the
    same one only when every prompt is the same). A pair split into thumbs puts its chosen and
    rejected answers next to each other, so plain rotation by one would pair a rejected answer's
    prompt with its own pair's chosen answer: a matched pair, not the mismatched sample the
    KL estimate of the reference point needs (Ethayarajh et al. 2024, section 4.1)."""
    n = len(prompts)
    out = []
    for i in range(n):
        j = next((k % n for k in range(i - 1, i - n, -1) if prompts[k % n] != prompts[i]), (i - 1) % n)
        out.append(j)
    return out


def encode_thumbs(records: list[ThumbsRecord], tokenizer, config: KTOConfig, fixed_kl: bool) -> list[dict]:
    """``{"seqs", "prompt_len", "prompt_ids", "response_ids", "desirable"}``; with ``fixed_kl`` the
    second sequence is the mismatched pair (prompt i, completion j) of ``mismatched_partners``."""
    out = []
    for r in records:
        p, c = encode_prompt(r.prompt, tokenizer, config.max_prompt_length), encode_response(r.completion, tokenizer)
        out.append(
            with_weight(
                {
                    "seqs": [join(p, c, config.max_length)],
                    "prompt_len": len(p),
                    "prompt_ids": p,
                    "response_ids": c,
                    "desirable": bool(r.label),
                },
                r,
            )
        )
    if fixed_kl and len(out) > 1:
        partners = mismatched_partners([tuple(e["prompt_ids"]) for e in out])
        for e, j in zip(out, partners):
            e["seqs"].append(join(e["prompt_ids"], out[j]["response_ids"], config.max_length))
    return out


def make_collate(pad_id: int, max_length: int, in_batch_kl: bool):
    def collate(examples: list[dict]) -> dict:
        batch = pad_scored([e["seqs"][0] for e in examples], [e["prompt_len"] for e in examples], pad_id)
        batch["desirable"] = torch.tensor([e["desirable"] for e in examples])
        if in_batch_kl:  # (x_i, y_j) within this micro-batch, j another prompt's example
            partners = mismatched_partners([tuple(e["prompt_ids"]) for e in examples])
            kl_seqs = [
                join(e["prompt_ids"], examples[j]["response_ids"], max_length) for e, j in zip(examples, partners)
            ]
        else:
            kl_seqs = [e["seqs"][1] for e in examples] if len(examples[0]["seqs"]) > 1 else []
        if kl_seqs:
            kl = pad_scored(kl_seqs, [e["prompt_len"] for e in examples], pad_id)
            batch.update({f"kl_{k}": v for k, v in kl.items()})
        if "ref" in examples[0]:
            batch["ref"] = torch.tensor([e["ref"] for e in examples], dtype=torch.float64)  # [n, S]
        if (weights := weights_of(examples)) is not None:
            batch["weight"] = weights
        return batch

    return collate


# ----------------------------------------------------------------------------- loss
def _correct(rewards: torch.Tensor, threshold: torch.Tensor, desirable: torch.Tensor) -> torch.Tensor:
    above = (rewards > threshold).double() + 0.5 * (rewards == threshold).double()
    return torch.where(desirable, above, 1 - above)


def make_loss(config: KTOConfig, reference: str):
    def loss_sum(model, batch: dict) -> tuple[torch.Tensor, dict]:
        """Sum of per-example KTO losses (each times its record's weight when records have
        weights; z0 stays the micro-batch's plain estimate). Stats (means after the loop's
        division by the example count, or the sum of weights): ``kl`` (z0), ``reward``
        (beta * log-ratio), ``margin`` (reward with the sign of the label: it grows as
        desirable rewards go up and undesirable ones down) and ``accuracy`` (reward on the
        right side of beta * z0; equality counts 1/2)."""
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        logps = sequence_logps(model, ids, mask, labels)[0]
        with torch.no_grad():  # z0 is detached: no gradient through the KL pass (paper, TRL)
            kl_logps = sequence_logps(
                unwrap(model), batch["kl_input_ids"], batch["kl_attention_mask"], batch["kl_labels"]
            )[0]
        if reference == "lora":
            ref = reference_forward(model, ids, mask, labels)
            kl_ref = reference_forward(model, batch["kl_input_ids"], batch["kl_attention_mask"], batch["kl_labels"])
        else:
            ref, kl_ref = batch["ref"][:, 0].to(logps), batch["ref"][:, 1].to(logps)
        desirable = batch["desirable"].to(logps.device)
        out = kto_loss(
            logps,
            ref,
            desirable,
            kl_logps,
            kl_ref,
            beta=config.beta,
            desirable_weight=config.desirable_weight,
            undesirable_weight=config.undesirable_weight,
        )
        rewards = out.chosen_rewards.detach()
        w = batch.get("weight")
        w = None if w is None else w.to(logps.device)
        n = desirable.shape[0] if w is None else w.sum().item()
        sign = desirable.double() * 2 - 1
        return weighted_sum(out.losses, w), {
            "kl": out.kl.item() * n,
            "reward": weighted_sum(rewards, w).item(),
            "margin": weighted_sum(rewards.double() * sign, w).item(),
            "accuracy": weighted_sum(_correct(rewards, config.beta * out.kl, desirable), w).item(),
            "desirable": weighted_sum(desirable.double(), w).item(),
        }

    return loss_sum


def count_examples(batch: dict) -> int | float:
    """Examples in the batch, or the sum of their weights when they have weights."""
    return float(batch["weight"].sum()) if "weight" in batch else int(batch["desirable"].numel())


@torch.no_grad()
def evaluate(model, examples: list[dict], collate, config: KTOConfig, reference: str) -> dict:
    """Held-out ``eval_accuracy``: the probability that a desirable example's implicit reward
    exceeds an undesirable one's (ranking accuracy / AUC, equal rewards 1/2), with the mean
    rewards of each class and their difference (``eval_margin``)."""
    was_training = model.training
    model.eval()
    rewards, labels = [], []
    for i in range(0, len(examples), config.micro_batch_size):
        batch = collate(examples[i : i + config.micro_batch_size])
        logps = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])[0]
        ref = (
            reference_forward(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
            if reference == "lora"
            else batch["ref"][:, 0].to(logps)
        )
        rewards.append((config.beta * (logps - ref)).cpu())
        labels.append(batch["desirable"])
    model.train(was_training)
    r, y = torch.cat(rewards), torch.cat(labels)
    good, bad = r[y], r[~y]
    if not len(good) or not len(bad):
        return {"eval_examples": len(r)}
    diff = good[:, None] - bad[None, :]
    return {
        "eval_accuracy": ((diff > 0).double() + 0.5 * (diff == 0).double()).mean().item(),
        "eval_reward_desirable": good.mean().item(),
        "eval_reward_undesirable": bad.mean().item(),
        "eval_margin": (good.mean() - bad.mean()).item(),
        "eval_examples": len(r),
    }


def run(config: KTOConfig) -> dict:
    from rlhfkit.models import load_policy

    set_threads(config.threads)
    info = init_distributed()
    if (done := finished_run(config, "kto", info)) is not None:
        cleanup(info)
        return done
    torch.manual_seed(config.seed)
    reference = resolved_reference(config.reference, False)
    records, kind = load_records(config.data, config)
    if config.eval_data:
        eval_records, eval_kind = load_records(config.eval_data, config)
        # compared as the thumbs KTO trains on: a pair goes when either of its answers is held out
        train_records = drop_held_out_copies(
            records, to_thumbs(eval_records, eval_kind), config.data, views=lambda r: to_thumbs([r], kind)
        )
    else:
        train_records, eval_records = split_by_prompt(records, config.eval_fraction, config.seed, shuffle=True)
        eval_kind = kind
    train_records, eval_records = first_n(train_records, config.max_train), first_n(eval_records, config.max_eval)
    train_thumbs, eval_thumbs = to_thumbs(train_records, kind), to_thumbs(eval_records, eval_kind)
    # before the model loads and the reference cache is written: a failure leaves nothing behind
    require_examples(len(train_thumbs), config.batch_size, config.data, len(eval_thumbs), total_weight(train_thumbs))
    train_thumbs = scaled_weights(train_thumbs)
    model, tokenizer = load_policy(config.model, padding_side="right")
    fixed_kl = reference == "cached"
    train = encode_thumbs(train_thumbs, tokenizer, config, fixed_kl=fixed_kl)
    held = encode_thumbs(eval_thumbs, tokenizer, config, fixed_kl=False)
    n_good = sum(e["desirable"] for e in train)
    if info.is_main:
        print(
            f"kto (reference {reference}): {len(train)} training examples ({n_good} desirable, "
            f"{len(train) - n_good} undesirable) from {kind}, {len(held)} held out, model {config.model}"
        )
    pad_id = tokenizer.pad_token_id
    if reference == "cached":
        cached_reference(config, model, {"train": train, "eval": held}, pad_id, info)
    model = with_lora(model, config.lora)  # unchanged when lora.r is 0
    collate = make_collate(pad_id, config.max_length, in_batch_kl=not fixed_kl)
    eval_collate = make_collate(pad_id, config.max_length, in_batch_kl=False)
    eval_fn = (lambda m: evaluate(m, held, eval_collate, config, reference)) if held else None
    # the policy starts as its reference (cached or adapter off): every implicit reward is 0 and
    # the ranking accuracy 1/2 by construction, so no pass over the held-out set is spent on it
    before = {"eval_accuracy": 0.5} if (held and info.is_main) else {}
    # length_fn=None: KTO's KL reference point z0 is a mean over each micro-batch, so which examples
    # share one must not depend on their lengths
    metrics = fit(
        model,
        train,
        collate,
        make_loss(config, reference),
        count_examples,
        config,
        info,
        eval_fn,
        desc="kto",
        unit="examples",
        length_fn=None,
    )
    if info.is_main and "eval_accuracy" in before and "eval_accuracy" in metrics:
        metrics["eval_accuracy_before"] = before["eval_accuracy"]
        print(
            f"kto: held-out implicit-reward ranking accuracy {before['eval_accuracy']:.3f} -> "
            f"{metrics['eval_accuracy']:.3f}"
        )
    save_final(model, tokenizer, config, metrics, info)
    cleanup(info)
    return metrics
