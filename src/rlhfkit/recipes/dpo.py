"""Direct preference optimisation: DPO, IPO, conservative DPO, SimPO and ORPO on preference pairs.

    rlhfkit dpo --data hh-rlhf --model smollm2-135m --loss sigmoid --beta 0.1 --output_dir outputs/dpo

Reads pairs (a JSONL/JSON file of prompt/chosen/rejected, or hh-rlhf / finegrained / oasst),
holds out a fixed-seed split by prompt, and trains with the shared loop (exact resume, metrics, progress).
Chosen and rejected go through the policy in one forward pass; a sequence's log-prob is the sum
over its response tokens (prompt and padding masked out).

The reference policy, for the losses that have one (sigmoid, ipo, cdpo):
- ``cached`` (default): the reference model's log-probs of every training and held-out response are
  computed once before training and stored in ``output_dir/reference_logps.pt`` under a hash of the
  token ids, the model name and its weights, with a sha256 of the log-probs; a rerun or a resumed
  run reuses them (a damaged file is computed again, with a warning), and no second model is kept
  in memory nor run at each step;
- ``lora``: the policy with its LoRA adapter disabled (needs ``--lora.r``), run at each step;
- ``none``: no reference (simpo, orpo).

Ties (``tie`` true in a pair file, or FineGrainedRLHF's equal ratings): ``--ties drop`` removes
them; ``--ties keep`` trains them towards *equal* implicit rewards (logistic losses with label
1/2, IPO with target margin 0; see core/losses/preference.py). Either way they are counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlhfkit.core.losses import (
    PREFERENCE_LOSSES,
    REFERENCE_FREE_LOSSES,
    cdpo_loss,
    weighted_sum,
    dpo_sigmoid_loss,
    ipo_loss,
    orpo_loss,
    simpo_loss,
)
from rlhfkit.models import load_policy
from rlhfkit.data.splits import drop_held_out_copies, first_n, split_by_prompt
from rlhfkit.recipes.common import (
    LoraConfig,
    with_lora,
    require_examples,
    save_final,
    scaled_weights,
    set_threads,
    total_weight,
)

# the shared pieces DPO is driven with, importable from here as before the split
from rlhfkit.recipes.pair_data import encode_pairs, load_pairs, make_collate
from rlhfkit.recipes.pair_data import encode_prompt, encode_response, join, pad_scored  # noqa: F401
from rlhfkit.recipes.reference_cache import CACHE_FILE, cache_key, cached_reference, compute_reference  # noqa: F401
from rlhfkit.recipes.sequence_logps import decoder_and_head, reference_forward, sequence_logps  # noqa: F401
from rlhfkit.training.distributed import cleanup, init_distributed
from rlhfkit.training.loop import TrainingConfig, fit
from rlhfkit.core.precision import running_at
from rlhfkit.training.run_identity import finished_run

REFERENCES = ("auto", "cached", "lora", "none")
# beta = 0 in the config means "this loss's usual value": 0.1 for the DPO family (Rafailov et al.),
# 2.0 for SimPO (Meng et al. use 2.0-2.5, reward = beta * mean token log-prob)
DEFAULT_BETA = {"sigmoid": 0.1, "ipo": 0.1, "cdpo": 0.1, "simpo": 2.0, "orpo": 0.0}


@dataclass
class DPOConfig(TrainingConfig):
    model: str = field(
        default="smollm2-135m", metadata={"help": "policy: smollm2-135m, a local folder, a .gguf file or a HF name"}
    )
    data: str = field(
        default="hh-rlhf",
        metadata={
            "help": "JSONL/JSON file of prompt/chosen/rejected pairs, or hh-rlhf / finegrained / oasst; a+b joins sources"
        },
    )
    eval_data: str = field(default="", metadata={"help": "held-out pair file; empty = hold out eval_fraction of data"})
    eval_fraction: float = field(default=0.1, metadata={"help": "fraction held out when eval_data is empty"})
    max_train: int = field(
        default=0, metadata={"help": "use only the first N training pairs of the shuffled split (0 = all)"}
    )
    max_eval: int = field(default=0, metadata={"help": "use only the first N held-out pairs (0 = all)"})
    loss: str = field(
        default="sigmoid", metadata={"help": "sigmoid (DPO), ipo, cdpo (label-smoothed DPO), simpo or orpo"}
    )
    beta: float = field(
        default=0.0, metadata={"help": "KL strength / reward scale (0 = the loss's default: 0.1, SimPO 2.0)"}
    )
    label_smoothing: float = field(default=0.1, metadata={"help": "cdpo: assumed probability that a label is flipped"})
    simpo_gamma: float = field(default=0.5, metadata={"help": "simpo: target reward margin gamma"})
    orpo_lambda: float = field(default=0.1, metadata={"help": "orpo: weight of the odds-ratio term beside the NLL"})
    reference: str = field(
        default="auto",
        metadata={
            "help": "cached (log-probs computed once, on disk), lora (adapter off), none; auto = none for simpo/orpo, else cached"
        },
    )
    ties: str = field(
        default="drop",
        metadata={"help": "tied pairs: drop, or keep (trained towards equal rewards); counted either way"},
    )
    max_length: int = field(
        default=512, metadata={"help": "tokens of prompt + response (the response is cut on the right)"}
    )
    max_prompt_length: int = field(
        default=256, metadata={"help": "prompt tokens kept (cut on the left, so the end survives)"}
    )
    on_error: str = field(default="raise", metadata={"help": "bad records: raise, or skip and count"})
    drop_duplicates: bool = field(
        default=True,
        metadata={
            "help": "drop exact duplicate records (counted); false keeps deliberate repeats (a weight is the better way)"
        },
    )
    output_dir: str = field(
        default="outputs/dpo", metadata={"help": "checkpoints, metrics.jsonl, reference_logps.pt and model/"}
    )
    learning_rate: float = field(default=1e-6, metadata={"help": "peak learning rate"})
    batch_size: int = field(default=16, metadata={"help": "global batch (pairs per optimiser step)"})
    micro_batch_size: int = field(default=4, metadata={"help": "pairs per forward pass (2x sequences)"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "fraction of steps with linear warm-up"})
    lora: LoraConfig = field(default_factory=LoraConfig)

    def validate(self) -> None:
        super().validate()
        if self.loss not in PREFERENCE_LOSSES:
            raise ValueError(f"field 'loss': {self.loss!r} is not one of {list(PREFERENCE_LOSSES)}")
        validate_reference(self.reference, self.loss in REFERENCE_FREE_LOSSES, self.lora.r, f"loss {self.loss}")
        if self.ties not in ("drop", "keep"):
            raise ValueError(f"field 'ties': {self.ties!r} is not drop or keep")
        if self.beta < 0:
            raise ValueError("field 'beta' must be >= 0 (0 = the loss's default)")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError("field 'label_smoothing' must be in [0, 0.5)")
        validate_lengths_and_limits(self)


def validate_reference(reference: str, reference_free: bool, lora_r: int, what: str) -> None:
    if reference not in REFERENCES:
        raise ValueError(f"field 'reference': {reference!r} is not one of {list(REFERENCES)}")
    if reference_free and reference not in ("auto", "none"):
        raise ValueError(f"{what} uses no reference model; set reference to none (or auto)")
    if not reference_free and reference == "none":
        raise ValueError(f"{what} needs a reference model: reference cached or lora")
    if reference == "lora" and not lora_r:
        raise ValueError("reference lora needs a LoRA adapter: set --lora.r (e.g. 16)")


def validate_lengths_and_limits(config) -> None:
    """The checks DPO and KTO share: ``max_length`` leaves every response at least 4 tokens beside
    ``max_prompt_length``, and ``max_train`` / ``max_eval`` are not negative."""
    max_length, max_prompt_length = config.max_length, config.max_prompt_length
    if max_prompt_length < 0 or max_length - max_prompt_length < 4:
        raise ValueError(
            f"max_length ({max_length}) must exceed max_prompt_length ({max_prompt_length}) "
            "by at least 4 tokens, so every response keeps some tokens"
        )
    if config.max_train < 0 or config.max_eval < 0:
        raise ValueError("fields 'max_train' / 'max_eval' must be >= 0 (0 = all)")


def resolved_reference(reference: str, reference_free: bool) -> str:
    if reference == "auto":
        return "none" if reference_free else "cached"
    return reference


# ----------------------------------------------------------------------------- loss
def pair_loss(config, logps, lengths, ref, tie):
    """The configured loss on the concatenated batch: rows [0, n) chosen, [n, 2n) rejected."""
    n = tie.shape[0]
    c, r, lc, lr = logps[:n], logps[n:], lengths[:n], lengths[n:]
    beta = config.beta or DEFAULT_BETA[config.loss]
    if config.loss == "simpo":
        return simpo_loss(c, r, lc, lr, beta=beta, gamma=config.simpo_gamma, tie=tie)
    if config.loss == "orpo":
        return orpo_loss(c, r, lc, lr, lam=config.orpo_lambda, tie=tie)
    ref = ref.to(logps.dtype)
    rc, rr = ref[:, 0], ref[:, 1]
    if config.loss == "sigmoid":
        return dpo_sigmoid_loss(c, r, rc, rr, beta=beta, tie=tie)
    if config.loss == "cdpo":
        return cdpo_loss(c, r, rc, rr, beta=beta, label_smoothing=config.label_smoothing, tie=tie)
    return ipo_loss(c, r, rc, rr, beta=beta, chosen_lengths=lc, rejected_lengths=lr, tie=tie)


def pair_correct(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """1 where chosen's implicit reward is higher, 1/2 where equal (e.g. at the start, when the
    policy is the reference and every reward is 0), 0 otherwise. [B] float."""
    return (chosen > rejected).double() + 0.5 * (chosen == rejected).double()


def make_loss(config, reference: str):
    def loss_sum(model, batch: dict) -> tuple[torch.Tensor, dict]:
        """Sum of per-pair losses, each times its weight when pairs have weights; stats are sums
        over pairs (weighted alike), so the loop's division by the pair count (the sum of
        weights) makes them means. ``accuracy`` counts untied pairs only (ties: its maximum is
        1 - tie fraction; the held-out evaluation excludes ties from the denominator)."""
        logps, lengths = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        tie = batch["tie"].to(logps.device)
        n = tie.shape[0]
        if reference == "lora":
            ref = reference_forward(model, batch["input_ids"], batch["attention_mask"], batch["labels"]).view(2, n).T
        else:
            ref = batch["ref"].to(logps.device) if "ref" in batch else None
        out = pair_loss(config, logps, lengths, ref, tie)
        decided = ~tie
        w = batch.get("weight")
        w = None if w is None else w.to(logps.device)
        return weighted_sum(out.losses, w), {
            "reward_chosen": weighted_sum(out.chosen_rewards.detach(), w).item(),
            "reward_rejected": weighted_sum(out.rejected_rewards.detach(), w).item(),
            "margin": weighted_sum((out.chosen_rewards - out.rejected_rewards).detach(), w).item(),
            "accuracy": weighted_sum(pair_correct(out.chosen_rewards, out.rejected_rewards) * decided, w).item(),
            "ties": weighted_sum(tie.double(), w).item(),
        }

    return loss_sum


def count_pairs(batch: dict) -> int | float:
    """Pairs in the batch, or the sum of their weights when they have weights."""
    return float(batch["weight"].sum()) if "weight" in batch else int(batch["tie"].numel())


@torch.no_grad()
def evaluate(model, examples: list[dict], collate, config, reference: str) -> dict:
    """Held-out implicit-reward accuracy (untied pairs; equal rewards count 1/2), mean margin,
    mean chosen / rejected rewards, mean loss."""
    was_training = model.training
    model.eval()
    chosen, rejected, ties, loss = [], [], [], 0.0
    for i in range(0, len(examples), config.micro_batch_size):
        batch = collate(examples[i : i + config.micro_batch_size])
        logps, lengths = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        n = batch["tie"].shape[0]
        ref = (
            reference_forward(model, batch["input_ids"], batch["attention_mask"], batch["labels"]).view(2, n).T
            if reference == "lora"
            else batch.get("ref")
        )
        out = pair_loss(config, logps, lengths, ref, batch["tie"].to(logps.device))
        loss += out.losses.sum().item()
        chosen.append(out.chosen_rewards.cpu())
        rejected.append(out.rejected_rewards.cpu())
        ties.append(batch["tie"])
    model.train(was_training)
    if not examples:
        return {}
    c, r, tie = torch.cat(chosen), torch.cat(rejected), torch.cat(ties)
    decided = ~tie
    return {
        "eval_accuracy": pair_correct(c[decided], r[decided]).mean().item() if decided.any() else float("nan"),
        "eval_margin": (c - r)[decided].mean().item() if decided.any() else float("nan"),
        "eval_reward_chosen": c.mean().item(),
        "eval_reward_rejected": r.mean().item(),
        "eval_loss": loss / len(examples),
        "eval_pairs": len(examples),
        "eval_ties": int(tie.sum()),
    }


def run(config: DPOConfig) -> dict:
    set_threads(config.threads)
    info = init_distributed()
    if (done := finished_run(config, "dpo", info)) is not None:
        cleanup(info)
        return done
    torch.manual_seed(config.seed)
    reference = resolved_reference(config.reference, config.loss in REFERENCE_FREE_LOSSES)
    records, n_ties = load_pairs(config.data, config, config.data)
    if config.eval_data:
        eval_records, _ = load_pairs(config.eval_data, config, config.eval_data)
        train_records = drop_held_out_copies(records, eval_records, config.data)
    else:
        train_records, eval_records = split_by_prompt(records, config.eval_fraction, config.seed, shuffle=True)
    train_records, eval_records = first_n(train_records, config.max_train), first_n(eval_records, config.max_eval)
    # before the model loads and the reference cache is written: a failure leaves nothing behind
    require_examples(len(train_records), config.batch_size, config.data, len(eval_records), total_weight(train_records))
    train_records = scaled_weights(train_records)
    model, tokenizer = load_policy(config.model, padding_side="right")
    train = encode_pairs(train_records, tokenizer, config)
    held = encode_pairs(eval_records, tokenizer, config)
    pad_id = tokenizer.pad_token_id
    if reference == "cached":
        # before any LoRA: the reference is the initial policy
        cached_reference(config, model, {"train": train, "eval": held}, pad_id, info)
    model = with_lora(model, config.lora)  # unchanged when lora.r is 0
    collate = make_collate(pad_id)
    eval_fn = (lambda m: evaluate(m, held, collate, config, reference)) if held else None
    before = {}
    if info.is_main:
        print(
            f"dpo ({config.loss}, reference {reference}): {len(train)} training and {len(held)} held-out pairs, "
            f"model {config.model}"
        )
        if held and reference in ("cached", "lora"):
            # the policy starts as its reference: every implicit reward is 0 and the accuracy is
            # 1/2 by construction (ties count 1/2), so no pass over the held-out set is spent on it
            before = {"eval_accuracy": 0.5}
        elif held:
            with running_at(model, config.precision):  # as fit evaluates
                before = evaluate(model, held, collate, config, reference)
    metrics = fit(
        model,
        train,
        collate,
        make_loss(config, reference),
        count_pairs,
        config,
        info,
        eval_fn,
        desc=f"dpo-{config.loss}",
        unit="pairs",
    )
    if info.is_main:
        metrics["ties_seen"] = n_ties
        metrics["ties_kept"] = n_ties if config.ties == "keep" else 0
        if before:
            metrics["eval_accuracy_before"] = before["eval_accuracy"]
            print(
                f"dpo: held-out implicit-reward accuracy {before['eval_accuracy']:.3f} -> "
                f"{metrics['eval_accuracy']:.3f}, margin {metrics['eval_margin']:.4f}"
            )
    save_final(model, tokenizer, config, metrics, info)
    cleanup(info)
    return metrics
