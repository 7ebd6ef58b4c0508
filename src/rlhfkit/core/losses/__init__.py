"""Losses: SFT, reward-model (Bradley-Terry, ratings, binary feedback), PPO."""
from .bradley_terry import binary_feedback_loss, bradley_terry_loss, rating_regression_loss
from .ppo import ppo_policy_loss, ppo_value_loss
from .sft import count_target_tokens, sft_loss

__all__ = [
    "sft_loss",
    "count_target_tokens",
    "bradley_terry_loss",
    "rating_regression_loss",
    "binary_feedback_loss",
    "ppo_policy_loss",
    "ppo_value_loss",
]
