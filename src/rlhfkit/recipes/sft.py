"""Supervised fine-tuning on demonstrations or conversations, prompt tokens masked.

    rlhfkit sft --data finegrained-corrections --model smollm2-135m --output_dir outputs/sft

Reads prompt/completion or `messages` records (or a named shared set), holds out a fixed-seed
split by prompt (a conversation by its opening turns), trains with the shared loop (exact
resume, metrics, progress) and saves a model that loads with
`AutoModelForCausalLM.from_pretrained(output_dir + "/model")`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlhfkit.core.losses import count_target_tokens, sft_loss
from rlhfkit.data.loading import load_training_records
from rlhfkit.data.splits import drop_held_out_copies, split_by_prompt
from rlhfkit.data.tokenize import pad_sequences, tokenize_sft
from rlhfkit.recipes.common import (
    LoraConfig,
    with_lora,
    require_examples,
    save_final,
    scaled_weights,
    set_threads,
    total_weight,
    validate_data_fields,
    weights_of,
    with_weight,
)
from rlhfkit.training.distributed import cleanup, init_distributed
from rlhfkit.training.loop import TrainingConfig, fit, model_device, to_device
from rlhfkit.core.precision import running_at
from rlhfkit.training.run_identity import finished_run


@dataclass
class SFTConfig(TrainingConfig):
    model: str = field(
        default="smollm2-135m", metadata={"help": "policy: smollm2-135m, a local folder, a .gguf file or a HF name"}
    )
    data: str = field(
        default="oasst-best",
        metadata={
            "help": "JSONL/JSON file of prompt/completion, messages or rewrites, or oasst-best / finegrained-corrections (long prompts: use max_length 1024)"
        },
    )
    eval_data: str = field(default="", metadata={"help": "held-out file; empty = hold out eval_fraction of data"})
    eval_fraction: float = field(default=0.1, metadata={"help": "fraction held out when eval_data is empty"})
    max_length: int = field(default=512, metadata={"help": "tokens per example (longer ones are cut on the right)"})
    on_error: str = field(default="raise", metadata={"help": "bad records: raise, or skip and count"})
    drop_duplicates: bool = field(
        default=True,
        metadata={
            "help": "drop exact duplicate records (counted); false keeps deliberate repeats (a weight is the better way)"
        },
    )
    output_dir: str = field(default="outputs/sft", metadata={"help": "checkpoints, metrics.jsonl and model/"})
    learning_rate: float = field(default=2e-5, metadata={"help": "peak learning rate"})
    batch_size: int = field(default=8, metadata={"help": "global batch (examples per optimiser step)"})
    micro_batch_size: int = field(default=2, metadata={"help": "examples per forward pass"})
    lora: LoraConfig = field(default_factory=LoraConfig)

    def validate(self) -> None:
        super().validate()
        validate_data_fields(self)


def tokenize_all(records, tokenizer, max_length: int) -> list[dict]:
    """Tokenised examples (with the record's ``weight`` when it has one); ones whose target is cut
    away entirely by max_length are dropped and counted."""
    examples = [with_weight(tokenize_sft(r, tokenizer, max_length), r) for r in records]
    kept = [e for e in examples if count_target_tokens(torch.tensor([e["labels"]])) > 0]
    if len(kept) < len(examples):
        print(
            f"sft: dropped {len(examples) - len(kept)} of {len(examples)} examples whose prompt fills "
            f"max_length={max_length} (no target token left)"
        )
    return kept


def make_collate(pad_id: int):
    def collate(examples: list[dict]) -> dict:
        ids, mask = pad_sequences([e["input_ids"] for e in examples], pad_id, side="right")
        labels, _ = pad_sequences([e["labels"] for e in examples], -100, side="right")
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if (weights := weights_of(examples)) is not None:
            batch["weight"] = weights
        return batch

    return collate


def loss_sum(model, batch: dict) -> tuple[torch.Tensor, dict]:
    """Sum of target-token NLL in the micro-batch, each example's tokens times its weight
    (normalised by the loop with the weighted token count)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return sft_loss(logits, batch["labels"], normaliser=1.0, weights=batch.get("weight")), {}


def count_tokens(batch: dict) -> int | float:
    return count_target_tokens(batch["labels"], batch.get("weight"))


@torch.no_grad()
def evaluate(model, examples: list[dict], collate, micro_batch_size: int) -> dict:
    """Held-out mean token loss and perplexity (every example counted once: weights say how much a
    record teaches, not how the model is scored)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), micro_batch_size):
        batch = {k: v for k, v in collate(examples[i : i + micro_batch_size]).items() if k != "weight"}
        batch = to_device(batch, model_device(model))
        total += loss_sum(model, batch)[0].item()
        count += count_tokens(batch)
    model.train(was_training)
    mean = total / max(count, 1)
    return {"eval_loss": mean, "eval_perplexity": float(torch.exp(torch.tensor(mean))), "eval_tokens": count}


def run(config: SFTConfig) -> dict:
    from rlhfkit.models import load_policy

    set_threads(config.threads)
    info = init_distributed()
    if (done := finished_run(config, "sft", info)) is not None:
        cleanup(info)
        return done
    torch.manual_seed(config.seed)
    records = load_training_records(config.data, "sft", config.on_error, drop_duplicates=config.drop_duplicates)
    if config.eval_data:
        eval_records = load_training_records(
            config.eval_data, "sft", config.on_error, drop_duplicates=config.drop_duplicates
        )
        train_records = drop_held_out_copies(records, eval_records, config.data)
    else:
        train_records, eval_records = split_by_prompt(records, config.eval_fraction, config.seed, shuffle=True)
    require_examples(len(train_records), config.batch_size, config.data, len(eval_records), total_weight(train_records))
    train_records = scaled_weights(train_records)
    model, tokenizer = load_policy(config.model)
    model.to(info.device)
    model = with_lora(model, config.lora)  # unchanged when lora.r is 0
    train = tokenize_all(train_records, tokenizer, config.max_length)
    held = tokenize_all(eval_records, tokenizer, config.max_length)
    collate = make_collate(tokenizer.pad_token_id)
    eval_fn = (lambda m: evaluate(m, held, collate, config.micro_batch_size)) if held else None
    if info.is_main:
        print(f"sft: {len(train)} training and {len(held)} held-out examples, model {config.model}")
        with running_at(model, config.precision):  # as fit evaluates after training
            before = evaluate(model, held, collate, config.micro_batch_size) if held else {}
    metrics = fit(model, train, collate, loss_sum, count_tokens, config, info, eval_fn, desc="sft")
    if info.is_main and held:
        metrics["eval_loss_before"] = before["eval_loss"]
        print(f"sft: held-out loss {before['eval_loss']:.4f} -> {metrics['eval_loss']:.4f}")
    save_final(model, tokenizer, config, metrics, info)
    cleanup(info)
    return metrics
