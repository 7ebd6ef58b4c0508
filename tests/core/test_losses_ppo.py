import math

import torch
from torch.testing import assert_close

from rlhfkit.core.losses import ppo_policy_loss, ppo_value_loss

# five valid tokens and one masked one (with garbage: -inf old log-prob, nan advantage)
RATIOS = [1.5, 0.5, 1.5, 0.5, 1.1]
ADV = [1.0, 1.0, -1.0, -1.0, 2.0]


def _policy_inputs():
    old = torch.tensor([[-1.0, -2.0, -0.5, -1.5, -1.0, float("-inf")]], dtype=torch.float64)
    logp = old.clone()
    logp[0, :5] += torch.tensor([math.log(r) for r in RATIOS], dtype=torch.float64)
    logp[0, 5] = -3.0
    adv = torch.tensor([ADV + [float("nan")]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    return logp.requires_grad_(True), old, adv, mask


def test_ppo_policy_loss_by_hand():
    logp, old, adv, mask = _policy_inputs()
    loss, stats = ppo_policy_loss(logp, old, adv, mask, clip_eps=0.2)
    # per token max(-A r, -A clip(r, 0.8, 1.2)):
    # r=1.5, A=+1: max(-1.5, -1.2) = -1.2  (clipped, upper side)
    # r=0.5, A=+1: max(-0.5, -0.8) = -0.5  (unclipped)
    # r=1.5, A=-1: max( 1.5,  1.2) =  1.5  (unclipped)
    # r=0.5, A=-1: max( 0.5,  0.8) =  0.8  (clipped, lower side)
    # r=1.1, A=+2: max(-2.2, -2.2) = -2.2  (inside the range)
    # mean = (-1.2 - 0.5 + 1.5 + 0.8 - 2.2) / 5 = -1.6 / 5 = -0.32
    assert_close(loss, torch.tensor(-0.32, dtype=torch.float64))
    assert_close(stats["clipfrac"], torch.tensor(2 / 5, dtype=torch.float64))
    logs = [math.log(r) for r in RATIOS]
    assert_close(stats["approx_kl"], torch.tensor(sum(0.5 * l * l for l in logs) / 5, dtype=torch.float64))
    assert_close(
        stats["approx_kl_k3"], torch.tensor(sum((r - 1) - math.log(r) for r in RATIOS) / 5, dtype=torch.float64)
    )
    assert_close(stats["ratio_mean"], torch.tensor(5.1 / 5, dtype=torch.float64))
    # gradient: d(-A r)/dlogp = -A r on unclipped tokens, 0 on clipped ones and under the mask
    loss.backward()
    expected_grad = [0.0, -1.0 * 0.5 / 5, 1.5 / 5, 0.0, -2.0 * 1.1 / 5, 0.0]
    assert_close(logp.grad, torch.tensor([expected_grad], dtype=torch.float64))


def test_ppo_policy_loss_normaliser():
    logp, old, adv, mask = _policy_inputs()
    loss, _ = ppo_policy_loss(logp, old, adv, mask, clip_eps=0.2, normaliser=10)
    assert_close(loss, torch.tensor(-1.6 / 10, dtype=torch.float64))


def test_ppo_value_loss_by_hand():
    nan = float("nan")
    values = torch.tensor([[1.0, 1.0, 0.0, 0.0, nan]], requires_grad=True)
    old = torch.tensor([[0.5, 0.9, 0.5, 0.5, nan]])
    returns = torch.tensor([[1.0, 0.0, 1.0, -1.0, nan]])
    mask = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.bool)
    loss, stats = ppo_value_loss(values, old, returns, mask, clip_eps=0.2)
    # clip(v, old-0.2, old+0.2):  0.7, 1.0, 0.3, 0.3
    # (v-R)^2:                    0,   1,   1,   1
    # (vclip-R)^2:                0.09, 1,  0.49, 1.69
    # max:                        0.09, 1,  1,   1.69  (clipped term larger on tokens 0 and 3)
    # loss = 0.5 * (0.09 + 1 + 1 + 1.69) / 4 = 0.4725
    assert_close(loss, torch.tensor(0.4725))
    assert_close(stats["vf_clipfrac"], torch.tensor(0.5))
    loss.backward()
    # grad: token0 clipped -> 0; token1 0.5*2*(1-0)/4 = 0.25; token2 0.5*2*(0-1)/4 = -0.25; token3 clipped -> 0
    assert_close(values.grad, torch.tensor([[0.0, 0.25, -0.25, 0.0, 0.0]]))
    loss_n, _ = ppo_value_loss(values, old, returns, mask, clip_eps=0.2, normaliser=2)
    assert_close(loss_n, torch.tensor(0.5 * 3.78 / 2))
