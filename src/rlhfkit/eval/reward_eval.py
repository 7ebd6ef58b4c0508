"""`rlhfkit reward eval`: a trained reward model's metrics on a pair file, overall and per subset
(the metrics themselves: ``rlhfkit.rewards.metrics``)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from rlhfkit.data.loading import load_training_records
from rlhfkit.rewards.metrics import evaluate_pairs


@dataclass
class RewardEvalConfig:
    model: str = field(default="outputs/reward/model", metadata={"help": "trained reward model folder"})
    data: str = field(default="hh-rlhf", metadata={"help": "pair file (JSONL/JSON) or hh-rlhf / finegrained / oasst"})
    max_length: int = field(default=256, metadata={"help": "tokens of prompt + response"})
    batch_size: int = field(default=16, metadata={"help": "sequences per forward pass"})
    ties: str = field(default="keep", metadata={"help": "tied pairs: keep (reported apart) or drop"})
    seed: int = field(default=0, metadata={"help": "seed of the random display order (binary view)"})
    output: str = field(default="", metadata={"help": "write the report as JSON here"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = default)"})

    def validate(self) -> None:
        if self.ties not in ("keep", "drop"):
            raise ValueError(f"field 'ties': {self.ties!r} is not one of ['keep', 'drop']")
        if self.batch_size < 1 or self.max_length < 1:
            raise ValueError("fields 'batch_size' and 'max_length' must be >= 1")


def format_report(report: dict) -> str:
    keys = ["pairs", "accuracy", "precision", "recall", "f1", "ece", "mean_margin", "ties", "tie_mean_abs_diff"]
    rows = [("overall", report["overall"])] + list(report["by_subset"].items())
    # a column is at least two spaces wider than its name, so no two header cells run together
    widths = [max(12, len(k) + 2) for k in keys]
    lines = ["subset".ljust(16) + "".join(k.rjust(w) for k, w in zip(keys, widths))]
    for name, m in rows:
        cells = []
        for k, w in zip(keys, widths):
            v = m.get(k)
            cells.append(("" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)).rjust(w))
        lines.append(name[:16].ljust(16) + "".join(cells))
    return "\n".join(lines)


def run(config: RewardEvalConfig) -> dict:
    from rlhfkit.models import load_reward_model
    from rlhfkit.recipes.common import set_threads

    set_threads(config.threads)
    pairs = load_training_records(config.data, "pairs", ties=config.ties)  # bad data fails before the model loads
    model, tokenizer = load_reward_model(config.model, trained_head=True)  # a fresh head would score noise
    report = evaluate_pairs(model, tokenizer, pairs, config.max_length, config.batch_size, config.seed)
    print(format_report(report))
    if config.output:
        Path(config.output).write_text(json.dumps(report, indent=1), encoding="utf-8")
    if not math.isfinite(report["overall"].get("accuracy", 0.0)):
        raise RuntimeError("non-finite accuracy")
    return report
