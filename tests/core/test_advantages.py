import math

import pytest
import torch
from torch.testing import assert_close

from rlhfkit.core import gae, group_normalised_advantages, rloo_advantages


def test_gae_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 1.0, 1.5]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    # gamma 0.9, lam 0.8 -> gamma*lam = 0.72; value after the last token is 0
    # t=2: delta = 2 + 0.9*0 - 1.5 = 0.5;    A2 = 0.5
    # t=1: delta = 0 + 0.9*1.5 - 1.0 = 0.35; A1 = 0.35 + 0.72*0.5 = 0.71
    # t=0: delta = 1 + 0.9*1.0 - 0.5 = 1.4;  A0 = 1.4 + 0.72*0.71 = 1.9112
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    assert_close(adv, torch.tensor([[1.9112, 0.71, 0.5]]))
    assert_close(ret, torch.tensor([[2.4112, 1.71, 2.0]]))  # A + V

    # right padding with garbage under the mask changes nothing and gives zeros there
    rewards_p = torch.tensor([[1.0, 0.0, 2.0, 9.0, -9.0]])
    values_p = torch.tensor([[0.5, 1.0, 1.5, 7.0, 7.0]])
    mask_p = torch.tensor([[True, True, True, False, False]])
    adv, ret = gae(rewards_p, values_p, mask_p, gamma=0.9, lam=0.8)
    assert_close(adv, torch.tensor([[1.9112, 0.71, 0.5, 0.0, 0.0]]))
    assert_close(ret, torch.tensor([[2.4112, 1.71, 2.0, 0.0, 0.0]]))


def _gae_reference(rewards, values, lengths, gamma, lam):
    """Plain python double loop: A_t = sum_l (gamma*lam)^l * delta_{t+l} over the valid prefix."""
    B, T = len(rewards), len(rewards[0])
    adv = [[0.0] * T for _ in range(B)]
    for b in range(B):
        L = lengths[b]
        deltas = []
        for j in range(L):
            v_next = values[b][j + 1] if j + 1 < L else 0.0
            deltas.append(rewards[b][j] + gamma * v_next - values[b][j])
        for t in range(L):
            adv[b][t] = sum((gamma * lam) ** l * deltas[t + l] for l in range(L - t))
    ret = [[adv[b][t] + values[b][t] if t < lengths[b] else 0.0 for t in range(T)] for b in range(B)]
    return adv, ret


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.7), (0.99, 1.0)])
def test_gae_matches_python_double_loop(gamma, lam):
    g = torch.Generator().manual_seed(0)
    B, T = 5, 8
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    lengths = [8, 5, 1, 0, 3]  # right padded rows of different lengths (one empty)
    mask = torch.tensor([[t < L for t in range(T)] for L in lengths])
    exp_adv, exp_ret = _gae_reference(rewards.tolist(), values.tolist(), lengths, gamma, lam)
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    assert_close(adv, torch.tensor(exp_adv, dtype=torch.float64))
    assert_close(ret, torch.tensor(exp_ret, dtype=torch.float64))


def test_gae_gamma_lam_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, -1.0, 5.0, 5.0]])
    values = torch.tensor([[0.5, 0.25, 1.0, 9.0], [1.0, 2.0, 3.0, 4.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    # reward to go: row 0: [6, 5, 3]; row 1: [13, 9, 10, 5]
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert_close(ret, torch.tensor([[6.0, 5.0, 3.0, 0.0], [13.0, 9.0, 10.0, 5.0]]))
    assert_close(adv, torch.tensor([[5.5, 4.75, 2.0, 0.0], [12.0, 7.0, 7.0, 1.0]]))


def test_gae_skips_interior_masked_positions():
    # documented behaviour: masked tokens are skipped, the recursion carries across them
    r = torch.tensor([[1.0, 100.0, 2.0]])
    v = torch.tensor([[0.5, 100.0, 1.5]])
    m = torch.tensor([[True, False, True]])
    adv, _ = gae(r, v, m, gamma=0.9, lam=0.8)
    # compacted [1, 2], values [0.5, 1.5]: A1 = 2 - 1.5 = 0.5; A0 = 1 + 0.9*1.5 - 0.5 + 0.72*0.5 = 2.21
    assert_close(adv, torch.tensor([[2.21, 0.0, 0.5]]))


def test_rloo_by_hand():
    scores = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 0.0]])
    # 1 - (2+6)/2 = -3; 2 - (1+6)/2 = -1.5; 6 - (1+2)/2 = 4.5
    assert_close(rloo_advantages(scores), torch.tensor([[-3.0, -1.5, 4.5], [0.0, 0.0, 0.0]]))
    assert_close(rloo_advantages(torch.tensor([[3.0, 1.0]])), torch.tensor([[2.0, -2.0]]))
    with pytest.raises(ValueError):
        rloo_advantages(torch.tensor([[1.0], [2.0]]))


def test_group_normalised_by_hand():
    scores = torch.tensor([[1.0, 2.0, 6.0], [5.0, 5.0, 5.0]])
    # row 0: mean 3, deviations [-2, -1, 3]; unbiased var (4 + 1 + 9) / 2 = 7 -> std sqrt(7)
    # (the biased std would be sqrt(14/3); TRL uses the unbiased one)
    s = math.sqrt(7.0) + 1e-4
    expected = torch.tensor([[-2.0 / s, -1.0 / s, 3.0 / s], [0.0, 0.0, 0.0]])  # constant group -> 0
    assert_close(group_normalised_advantages(scores), expected)
    # Dr. GRPO: only centred
    assert_close(
        group_normalised_advantages(scores, scale_by_std=False),
        torch.tensor([[-2.0, -1.0, 3.0], [0.0, 0.0, 0.0]]),
    )
    with pytest.raises(ValueError):
        group_normalised_advantages(torch.tensor([[1.0]]))
