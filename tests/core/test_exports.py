import rlhfkit.core as core
import rlhfkit.core.losses as losses


def test_public_api_exported():
    names = """masked_sum masked_mean masked_var masked_whiten last_true_index truncate_after_eos
    token_logprobs entropy_from_logits kl_k1 kl_k2 kl_k3 FixedKLController AdaptiveKLController
    gae rloo_advantages group_normalised_advantages per_token_rewards apply_missing_eos_penalty
    sft_loss count_target_tokens bradley_terry_loss rating_regression_loss binary_feedback_loss
    ppo_policy_loss ppo_value_loss""".split()
    for name in names:
        assert callable(getattr(core, name)), name
        assert name in core.__all__
    for name in names[-7:]:
        assert callable(getattr(losses, name)), name
