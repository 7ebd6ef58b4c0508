"""``rlhfkit pipeline``: the loop end to end, every stage cached and resumable.

    rlhfkit pipeline                                         # the default preset (configs/pipeline_chat.yaml)
    rlhfkit pipeline --config configs/pipeline_hh.yaml       # real human preferences (HH-RLHF)
    rlhfkit pipeline --config configs/pipeline_sentiment.yaml --quick   # a tiny smoke run of another preset
    rlhfkit pipeline --algorithm ppo --grpo.max_steps 50     # any field of any stage

Stages (``output_dir/<stage>/`` each, with ``stage.json``): init (the starting policy) -> sft
(optional) -> feedback (pairs from a data set, the feedback app's store, or simulated labelers)
-> reward (reward model + calibration) -> policy (ppo | grpo | rloo | dpo | kto) -> eval (win
rate by the RM, gold judge before / after, KL, per-token shading data) -> report
(``output_dir/report.html``). See ``pipeline/cache.py`` for when a stage is skipped or resumed.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from rlhfkit.pipeline.cache import run_stage
from rlhfkit.pipeline.config import PipelineConfig, apply_quick
from rlhfkit.pipeline.context import Context
from rlhfkit.pipeline.fingerprints import stage_inputs
from rlhfkit.pipeline.stages import RUNNERS, STAGES
from rlhfkit.training.run_identity import stage_fingerprint


def active_stages(config: PipelineConfig) -> list[str]:
    return [s for s in STAGES if s != "sft" or config.run_sft]


def run(config: PipelineConfig) -> dict:
    """Run (or skip, or resume) every stage; returns ``{"stages": {name: record}, "report": path}``
    and writes ``output_dir/pipeline.json``."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if config.quick:
        from rlhfkit.training.config import describe_quick

        changed, kept = apply_quick(config)
        print(f"pipeline: {describe_quick(config, changed, kept)}")
        try:
            config.validate()
        except ValueError as err:
            from rlhfkit.training.config import ConfigError

            raise ConfigError(f"--quick: {err}") from None
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(config=config, out=out)
    force = set(config.force)
    t0 = time.perf_counter()
    records: dict[str, dict] = {}
    for stage in active_stages(config):
        own, inputs = stage_inputs(ctx, stage)
        fp = stage_fingerprint(stage, own, inputs)
        ctx.fingerprints[stage] = fp
        rec = run_stage(
            stage,
            ctx.dir(stage),
            fp,
            lambda d, s=stage: RUNNERS[s](ctx, d),
            force="all" in force or stage in force,
            clean_checkpoints=config.clean_checkpoints,
        )
        ctx.outputs[stage] = rec.get("outputs") or {}
        records[stage] = rec
    report = out / "report.html"
    shutil.copyfile(ctx.dir("report") / "report.html", report)
    summary = {
        "name": config.name,
        "output_dir": str(out),
        "seconds": round(time.perf_counter() - t0, 2),
        "ran": [s for s, r in records.items() if r["ran"]],
        "skipped": [s for s, r in records.items() if not r["ran"]],
        "eval": records["eval"].get("outputs"),
        "report": str(report),
    }
    (out / "pipeline.json").write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
    ev = summary["eval"] or {}
    if ev.get("gold"):
        g = ev["gold"]
        print(
            f"pipeline: gold ({g['judge']}) {g['before']:.4f} -> {g['after']:.4f}, gain {g['gain']:+.4f} "
            f"[{g['gain_ci'][0]:+.4f}, {g['gain_ci'][1]:+.4f}]; KL {((ev.get('kl') or {}).get('mean') or float('nan')):.3f} nats/seq"
        )
    # the last line says where to look
    print(
        f"pipeline: done in {summary['seconds']:.1f} s (ran: {', '.join(summary['ran']) or 'nothing'}; "
        f"cached: {', '.join(summary['skipped']) or 'nothing'}); report: {report}"
    )
    return {"stages": records, "report": str(report), "summary": summary}
