"""What an online run writes as it goes: metrics.jsonl (and TensorBoard), the table of sample
generations, the progress bar and the closing line. Rank 0 writes; on resume every file continues
from the resumed step (rows the interrupted run logged after it are dropped), so it reads as one
uninterrupted run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from rlhfkit.recipes.online_config import OnlineConfig
from rlhfkit.rollout import Rollout
from rlhfkit.training.distributed import DistInfo, all_gather_rows, all_reduce_sum
from rlhfkit.training.logging import MetricsLogger, progress_bar


def rollout_metrics(ro: Rollout, scores: torch.Tensor, seconds: float, info: DistInfo | None = None) -> dict:
    """Rollout statistics over the whole step (every rank's rows when ``info`` has several)."""
    lengths, eos = ro.lengths.float(), ro.has_eos.float()
    if info is not None and info.enabled:
        lengths, eos, scores = (all_gather_rows(t, info) for t in (lengths, eos, scores.float()))
        seconds = float(all_reduce_sum(seconds, info)) / info.world_size  # the ranks ran side by side
    return {
        "reward": float(scores.mean()),
        "reward_std": float(scores.std()) if len(scores) > 1 else 0.0,
        "response_length": float(lengths.mean()),
        "eos_rate": float(eos.mean()),
        "tokens_per_s": float(lengths.sum()) / max(seconds, 1e-9),
        "samples_per_s": len(lengths) / max(seconds, 1e-9),
    }


def run_outputs(config: OnlineConfig, info: DistInfo, start: int, resumed: bool, desc: str):
    """``(metrics logger, sample table, progress bar)`` of a run, written by rank 0 only; on resume
    they continue from ``start`` (rows logged after it by the interrupted run are dropped)."""
    at = start if resumed else None
    return (
        MetricsLogger(config.output_dir, enabled=info.is_main, tensorboard=config.tensorboard, resume_step=at),
        SampleTable(config.output_dir, config.sample_every, config.num_sample_rows, at, enabled=info.is_main),
        progress_bar(config.max_steps, initial=start, desc=desc, enabled=info.is_main),
    )


def closing_line(name: str, config: OnlineConfig, metrics: dict) -> str:
    """The line a person reads when an online run ends: where the model is and how its last step
    went (the curves are in metrics.jsonl)."""
    parts = [f"{name}: saved {Path(config.output_dir) / 'model'}"]
    shown = [f"{k} {metrics[k]:.4f}" for k in ("reward", "gold", "kl") if isinstance(metrics.get(k), (int, float))]
    if shown:
        parts.append("last step " + ", ".join(shown))
    parts.append(f"curves in {Path(config.output_dir) / 'metrics.jsonl'}")
    return "; ".join(parts)


class SampleTable:
    """Sample generations every N steps, appended to ``samples.jsonl`` and ``samples.md``.
    On resume from step S, rows written after S by the interrupted run are dropped."""

    def __init__(
        self, output_dir: str | Path, every: int, rows: int, resume_step: int | None = None, enabled: bool = True
    ):
        self.every, self.rows = (every if enabled else 0), rows
        if not enabled:  # a rank other than 0: rank 0 writes the table
            return
        self.jsonl = Path(output_dir) / "samples.jsonl"
        self.md = Path(output_dir) / "samples.md"
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            for p in (self.jsonl, self.md):
                if p.exists():
                    p.unlink()
        elif self.jsonl.exists():
            kept = []
            for line in self.jsonl.read_text(encoding="utf-8").split("\n"):
                try:
                    if json.loads(line)["step"] <= resume_step:
                        kept.append(json.loads(line))
                except (json.JSONDecodeError, KeyError):
                    pass
            self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
            self.md.write_text("", encoding="utf-8")
            for step in sorted({r["step"] for r in kept}):
                self._write_md(step, [r for r in kept if r["step"] == step])

    def _write_md(self, step: int, rows: list[dict]) -> None:
        def cell(x: Any) -> str:
            return str(x).replace("|", "\\|").replace("\n", "⏎")

        cols = [k for k in rows[0] if k != "step"]
        lines = [f"\n## step {step}\n", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += [
            "| " + " | ".join(cell(r[c]) if not isinstance(r[c], float) else f"{r[c]:.4f}" for c in cols) + " |"
            for r in rows
        ]
        with open(self.md, "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")

    def maybe_write(self, step: int, ro: Rollout, columns: dict[str, torch.Tensor]) -> None:
        if not self.every or step % self.every:
            return
        rows = []
        for i in range(min(self.rows, len(ro))):
            row = {"step": step, "prompt": ro.prompts[i], "response": ro.responses[i]}
            row.update({k: float(v[i]) for k, v in columns.items()})
            rows.append(row)
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
        self._write_md(step, rows)
