"""Losses: SFT, reward-model (Bradley-Terry, ratings, binary feedback), PPO, and the token weights
that aggregate a per-token loss over a minibatch."""

from .aggregation import AGGREGATIONS, token_weights
from .bradley_terry import binary_feedback_loss, bradley_terry_loss, rating_regression_loss, weighted_sum
from .ppo import ppo_policy_loss, ppo_value_loss
from .sft import count_target_tokens, sft_loss

__all__ = [
    "sft_loss",
    "count_target_tokens",
    "bradley_terry_loss",
    "rating_regression_loss",
    "binary_feedback_loss",
    "weighted_sum",
    "ppo_policy_loss",
    "ppo_value_loss",
    "token_weights",
    "AGGREGATIONS",
]
from .preference import (
    PREFERENCE_LOSSES,
    REFERENCE_FREE_LOSSES,
    PreferenceLossOutput,
    cdpo_loss,
    dpo_sigmoid_loss,
    ipo_loss,
    kto_loss,
    orpo_loss,
    simpo_loss,
)

__all__ += [
    "PREFERENCE_LOSSES",
    "REFERENCE_FREE_LOSSES",
    "PreferenceLossOutput",
    "dpo_sigmoid_loss",
    "ipo_loss",
    "cdpo_loss",
    "simpo_loss",
    "orpo_loss",
    "kto_loss",
]
