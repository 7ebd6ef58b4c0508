"""Reward-model evaluation on preference pairs.

Metrics (overall and per subset):
- accuracy: fraction of decided pairs with r_chosen > r_rejected (an exact score tie counts 1/2);
- a binary view for precision / recall / F1: each pair is shown in a fixed-seed random order
  (first, second) and the positive class is "first is better", predicted when
  r_first > r_second; without the random order every label would be positive;
- expected calibration error (10 equal-width bins) of p = sigmoid(r_first - r_second) against
  that label (Guo et al. 2017), which is the calibration of sigmoid(r_chosen - r_rejected);
- mean margin r_chosen - r_rejected; for tied pairs, the mean |r_a - r_b| (lower = agrees);
- loss: the mean Bradley-Terry loss -log sigmoid(r_chosen - r_rejected) (smoother than accuracy
  on a small validation set, so the better criterion for choosing a checkpoint).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 10) -> float:
    """sum_b (n_b / N) |mean(label_b) - mean(p_b)| over equal-width bins of p in [0, 1]."""
    probs, labels = probs.double(), labels.double()
    bins = torch.clamp((probs * n_bins).long(), max=n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.double().mean().item() * abs(labels[sel].mean().item() - probs[sel].mean().item())
    return ece


def pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor, flip: torch.Tensor,
                 tie: torch.Tensor | None = None) -> dict:
    """Metrics from per-pair scores. `flip[i]` True shows pair i as (rejected, chosen)."""
    tie = torch.zeros_like(flip) if tie is None else tie
    decided = ~tie
    out: dict = {"pairs": int(decided.sum()), "ties": int(tie.sum())}
    if out["ties"]:
        out["tie_mean_abs_diff"] = (chosen[tie] - rejected[tie]).abs().mean().item()
    if out["pairs"] == 0:
        return out
    c, r, f = chosen[decided].double(), rejected[decided].double(), flip[decided]
    diff = c - r
    out["accuracy"] = ((diff > 0).double() + 0.5 * (diff == 0).double()).mean().item()
    out["mean_margin"] = diff.mean().item()
    out["loss"] = -torch.nn.functional.logsigmoid(diff).mean().item()
    first = torch.where(f, r, c)
    second = torch.where(f, c, r)
    label = (~f).long()  # 1 when the first shown response is the chosen one
    p_first = torch.sigmoid(first - second)
    pred = (p_first > 0.5).long()
    tp = int(((pred == 1) & (label == 1)).sum())
    fp = int(((pred == 1) & (label == 0)).sum())
    fn = int(((pred == 0) & (label == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    out["precision"] = precision
    out["recall"] = recall
    out["f1"] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    out["ece"] = expected_calibration_error(p_first, label.double())
    return out


@torch.no_grad()
def score_texts(model, tokenizer, pairs_of_text: list[tuple[str, str]], max_length: int, batch_size: int) -> torch.Tensor:
    """Reward of each (prompt, response), in the order given."""
    from rlhfkit.data.tokenize import pad_sequences, tokenize_pair
    from rlhfkit.models import reward_scores

    was_training = model.training
    model.eval()
    seqs = [tokenize_pair(p, r, tokenizer, max_length) for p, r in pairs_of_text]
    # score longest first so padding stays small, then restore the order
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    scores = torch.empty(len(seqs))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, mask = pad_sequences([seqs[i] for i in idx], tokenizer.pad_token_id, side="right")
        device = next(model.parameters()).device
        scores[idx] = reward_scores(model, ids.to(device), mask.to(device)).float().cpu()
    model.train(was_training)
    return scores


def evaluate_pairs(model, tokenizer, pairs: list, max_length: int = 256, batch_size: int = 16, seed: int = 0) -> dict:
    """Score every pair and report metrics overall and per `subset`."""
    texts = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    scores = score_texts(model, tokenizer, texts, max_length, batch_size)
    n = len(pairs)
    chosen, rejected = scores[:n], scores[n:]
    flip = torch.rand(n, generator=torch.Generator().manual_seed(seed)) < 0.5
    tie = torch.tensor([bool(getattr(p, "tie", False)) for p in pairs], dtype=torch.bool)
    report = {"overall": pair_metrics(chosen, rejected, flip, tie), "by_subset": {}}
    subsets = sorted({p.subset for p in pairs if getattr(p, "subset", None)})
    if len(subsets) > 1:
        for name in subsets:
            sel = torch.tensor([getattr(p, "subset", None) == name for p in pairs])
            report["by_subset"][name] = pair_metrics(chosen[sel], rejected[sel], flip[sel], tie[sel])
    return report


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
    from rlhfkit.recipes.common import load_training_records, set_threads

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
