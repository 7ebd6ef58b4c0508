import math

import pytest
import torch
from torch.testing import assert_close

from rlhfkit.core import apply_missing_eos_penalty, per_token_rewards

SCORE = torch.tensor([1.0, -2.0, 3.0])
LOGP = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -1.0, -9.0], [-1.0, -1.0, -1.0]])
REF = torch.tensor([[-1.5, -1.0, -3.0], [-1.0, -1.0, float("-inf")], [0.0, 0.0, 0.0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0]], dtype=torch.bool)


def test_per_token_rewards_k1_by_hand():
    rewards, kl = per_token_rewards(SCORE, LOGP, REF, MASK, kl_coef=0.1)
    # k1 = logp - ref: row 0 [0.5, -1, 0]; row 1 [0.5, 0, (masked) 0]; row 2 all masked
    assert_close(kl, torch.tensor([[0.5, -1.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    # rewards = -0.1 * kl, score on the last valid token (row 0: t=2, row 1: t=1, row 2: none)
    expected = torch.tensor([[-0.05, 0.1, 0.0 + 1.0], [-0.05, 0.0 - 2.0, 0.0], [0.0, 0.0, 0.0]])
    assert_close(rewards, expected)


def test_per_token_rewards_k3_by_hand():
    rewards, kl = per_token_rewards(SCORE[:1], LOGP[:1], REF[:1], MASK[:1], kl_coef=0.5, kl_estimator="k3")
    # log r = ref - logp = [-0.5, 1, 0]; k3 = e^x - 1 - x
    k3 = [math.exp(-0.5) - 1 + 0.5, math.e - 2, 0.0]
    assert_close(kl, torch.tensor([k3]))
    assert_close(rewards, torch.tensor([[-0.5 * k3[0], -0.5 * k3[1], -0.5 * k3[2] + 1.0]]))
    with pytest.raises(ValueError):
        per_token_rewards(SCORE, LOGP, REF, MASK, kl_coef=0.1, kl_estimator="k4")


def test_missing_eos_penalty():
    out = apply_missing_eos_penalty(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([True, False, True]), 1.5)
    assert_close(out, torch.tensor([1.0, 0.5, 3.0]))


def test_kl_penalised_sequence_rewards_by_hand():
    from rlhfkit.core import kl_penalised_rewards

    # k1 summed over the mask: row 0 0.5 - 1 + 0 = -0.5; row 1 0.5 + 0 (the -inf is masked out); row 2 0
    rewards, kl = kl_penalised_rewards(SCORE, LOGP, REF, MASK, kl_coef=0.1)
    assert_close(kl, torch.tensor([-0.5, 0.5, 0.0]))
    assert_close(rewards, torch.tensor([1.0 + 0.05, -2.0 - 0.05, 3.0]))
