"""The demo on the embedded defaults: SFT of SmolLM2-135M on OpenAssistant best-ranked replies,
a MiniLM reward model on HH-RLHF human preferences, and that reward model's evaluation on
held-out HH pairs and on FineGrainedRLHF pairs. The whole loop, with feedback, policy
optimisation and evaluation, is `rlhfkit pipeline`."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rlhfkit.eval.reward_eval import RewardEvalConfig
from rlhfkit.eval.reward_eval import run as reward_eval
from rlhfkit.recipes.reward import RewardConfig
from rlhfkit.recipes.reward import run as reward_train
from rlhfkit.recipes.sft import SFTConfig
from rlhfkit.recipes.sft import run as sft


@dataclass
class DemoConfig:
    output_dir: str = field(default="outputs/demo", metadata={"help": "where each stage writes its folder"})
    sft_steps: int = field(default=24, metadata={"help": "SFT optimiser steps (0 = skip SFT)"})
    reward_epochs: float = field(default=2.0, metadata={"help": "reward-model epochs over 80% of HH-RLHF"})
    quick: bool = field(default=False, metadata={"help": "a few steps of each stage (smoke test)"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = default)"})


def run(config: DemoConfig) -> dict:
    out = Path(config.output_dir)
    summary: dict = {}
    if config.sft_steps:
        s = SFTConfig(output_dir=str(out / "sft"), max_steps=3 if config.quick else config.sft_steps,
                      max_length=256 if config.quick else 512, threads=config.threads,
                      eval_fraction=0.05 if config.quick else 0.1)
        m = sft(s)
        summary["sft"] = {"held_out_loss_before": m.get("eval_loss_before"), "held_out_loss_after": m.get("eval_loss")}
    r = RewardConfig(output_dir=str(out / "reward"), epochs=0.05 if config.quick else config.reward_epochs,
                     threads=config.threads)
    m = reward_train(r)
    summary["reward"] = {k: v for k, v in m.items() if k.startswith("eval_")}
    e = RewardEvalConfig(model=str(out / "reward" / "model"), data="finegrained",
                         output=str(out / "reward_eval_finegrained.json"), threads=config.threads)
    summary["reward_on_finegrained"] = reward_eval(e)["overall"]
    (out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    print(json.dumps(summary, indent=1))
    return summary
