"""PPO's settings (``PPOConfig``) and its value model built from them; the algorithm is
``recipes/ppo.py``."""

from __future__ import annotations

from dataclasses import dataclass, field

from rlhfkit.core import kl_controller
from rlhfkit.core.precision import autocast_forward
from rlhfkit.models import make_value_model
from rlhfkit.recipes.common import with_lora
from rlhfkit.recipes.online_config import OnlineConfig
from rlhfkit.training.loop import enable_gradient_checkpointing


@dataclass
class PPOConfig(OnlineConfig):
    output_dir: str = field(default="outputs/ppo", metadata={"help": "checkpoints, metrics.jsonl, samples and model/"})
    ppo_epochs: int = field(
        default=4,
        metadata={"help": "passes over each step's batch: docs/PPO_CHECKLIST.md #10 (clipped losses over minibatches)"},
    )
    num_minibatches: int = field(default=1, metadata={"help": "optimiser steps per epoch"})
    kl_coef: float = field(
        default=0.05, metadata={"help": "beta of the per-token KL penalty (initial value when adaptive)"}
    )
    kl_control: str = field(default="fixed", metadata={"help": "fixed or adaptive (Ziegler et al. 2019)"})
    kl_target: float = field(default=6.0, metadata={"help": "adaptive: target KL per sequence (nats)"})
    kl_horizon: float = field(default=10000.0, metadata={"help": "adaptive: horizon in samples"})
    kl_estimator: str = field(default="k1", metadata={"help": "per-token KL in the reward: k1, k2 or k3"})
    gamma: float = field(default=1.0, metadata={"help": "GAE discount: docs/PPO_CHECKLIST.md #9 (GAE)"})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda: docs/PPO_CHECKLIST.md #9 (GAE)"})
    vf_coef: float = field(default=0.1, metadata={"help": "value loss coefficient"})
    cliprange_value: float = field(default=0.2, metadata={"help": "value clipping epsilon"})
    value_model: str = field(
        default="",
        metadata={
            "help": "empty: the policy's backbone with a zero head, docs/PPO_CHECKLIST.md #8 (no dropout, value head init); or a sequence-classifier folder sharing the policy's tokenizer (e.g. the RM)"
        },
    )
    reward_norm: str = field(
        default="reference",
        metadata={
            "help": "none, reference (mean/std fitted once on reference responses: docs/PPO_CHECKLIST.md #6 (reward normalisation)) or running"
        },
    )
    reward_norm_batches: int = field(
        default=2, metadata={"help": "reference: batches of reference responses to fit on"}
    )
    whiten_rewards: bool = field(
        default=False,
        metadata={
            "help": "whiten per-token rewards without shifting the mean: docs/PPO_CHECKLIST.md #6 (reward normalisation)"
        },
    )
    missing_eos_penalty: float = field(
        default=0.0, metadata={"help": "subtract this from the score of responses without EOS (0 = off)"}
    )

    def validate(self) -> None:
        super().validate()
        if self.reward_norm not in ("none", "reference", "running"):
            raise ValueError(f"reward_norm must be none, reference or running, got {self.reward_norm!r}")
        kl_controller(self.kl_control, self.kl_coef, self.kl_target, self.kl_horizon)  # a known kind


def load_value_model(config: PPOConfig, tokenizer):
    value = make_value_model(config.value_model or config.model, zero_init=not config.value_model, tokenizer=tokenizer)
    value = with_lora(value, config.lora)  # unchanged when lora.r is 0
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(value)
    autocast_forward(value, config.precision)
    return value
