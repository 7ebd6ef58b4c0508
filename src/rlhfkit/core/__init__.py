"""Pure torch building blocks for RLHF (no I/O): masking, log-probs, KL, advantages, losses."""

from .advantages import gae, group_normalised_advantages, rloo_advantages
from .kl import AdaptiveKLController, FixedKLController, kl_controller, kl_k1, kl_k2, kl_k3, sequence_kl
from .logprobs import entropy_from_logits, token_logprobs
from .losses import (
    binary_feedback_loss,
    bradley_terry_loss,
    count_target_tokens,
    ppo_policy_loss,
    ppo_value_loss,
    rating_regression_loss,
    sft_loss,
    token_weights,
)
from .masking import (
    last_true_index,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    truncate_after_eos,
)
from .reward_shaping import apply_missing_eos_penalty, kl_penalised_rewards, per_token_rewards
from .value_learning import advantage_logits, expectile_loss, ilql_losses, next_values

__all__ = [
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "last_true_index",
    "truncate_after_eos",
    "token_logprobs",
    "entropy_from_logits",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "sequence_kl",
    "FixedKLController",
    "AdaptiveKLController",
    "kl_controller",
    "gae",
    "rloo_advantages",
    "group_normalised_advantages",
    "per_token_rewards",
    "kl_penalised_rewards",
    "apply_missing_eos_penalty",
    "sft_loss",
    "count_target_tokens",
    "bradley_terry_loss",
    "rating_regression_loss",
    "binary_feedback_loss",
    "ppo_policy_loss",
    "ppo_value_loss",
    "token_weights",
    "expectile_loss",
    "next_values",
    "ilql_losses",
    "advantage_logits",
]
