"""ILQL's losses on numbers worked by hand (module docstring of core/value_learning.py)."""

import math

import pytest
import torch

from rlhfkit.core.value_learning import advantage_logits, expectile_loss, ilql_losses, next_values


def test_expectile_loss_weighs_each_side():
    d = torch.tensor([2.0, -2.0, 0.0])
    assert expectile_loss(d, 0.7).tolist() == pytest.approx([0.7 * 4, 0.3 * 4, 0.0])
    assert expectile_loss(d, 0.5).tolist() == pytest.approx([2.0, 2.0, 0.0])  # half the squared error


def test_next_values_end_at_the_last_real_token():
    v = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    assert next_values(v, mask).tolist() == [[2.0, 3.0, 0.0], [5.0, 0.0, 0.0]]


def test_ilql_losses_by_hand():
    # one sequence of two tokens over a vocabulary of 2; reward 1 after the second token
    q = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    actions = torch.tensor([[0, 1]])  # Q(s0, a0) = 1, Q(s1, a1) = 2
    v = torch.tensor([[0.5, 1.5]])
    rewards = torch.tensor([[0.0, 1.0]])
    mask = torch.ones(1, 2)
    target_q = torch.tensor([[1.2, 1.0]])
    out = ilql_losses([q], target_q, v, actions, rewards, mask, gamma=1.0, tau=0.7, cql_alpha=0.1)
    # Bellman targets: 0 + V(s1) = 1.5, then 1 + 0 (terminal) = 1: ((1 - 1.5)^2 + (2 - 1)^2) / 2
    assert out["q_loss"].item() == pytest.approx(0.625)
    # expectile of u = Q_target - V = 0.7 (weight 0.7) and -0.5 (weight 0.3)
    assert out["v_loss"].item() == pytest.approx((0.7 * 0.49 + 0.3 * 0.25) / 2)
    cql = ((math.log(math.e + 1) - 1) + (math.log(1 + math.e**2) - 2)) / 2
    assert out["cql_loss"].item() == pytest.approx(cql)
    assert out["loss"].item() == pytest.approx(0.625 + 0.209 + 0.1 * cql)

    # a padded third position changes nothing, and two heads add their losses: a second head
    # with Q(s0, a0) = 1.5, Q(s1, a1) = 1 (both on target: squared error 0) and flat rows (CQL log 2)
    pad = lambda x, val=0.0: torch.cat([x, torch.full_like(x[:, :1], val)], 1)  # noqa: E731
    q3 = torch.cat([q, torch.tensor([[[9.0, -9.0]]])], 1)
    q3b = torch.tensor([[[1.5, 1.5], [1.0, 1.0], [0.0, 4.0]]])
    out3 = ilql_losses(
        [q3, q3b],
        pad(target_q, 7.0),
        pad(v, 3.0),
        pad(actions),
        pad(rewards, 5.0),
        pad(mask),
        gamma=1.0,
        tau=0.7,
        cql_alpha=0.1,
    )
    assert out3["q_loss"].item() == pytest.approx(0.625 + 0.0) and out3["v_loss"].item() == pytest.approx(0.209)
    assert out3["cql_loss"].item() == pytest.approx(cql + math.log(2))


def test_gradients_reach_q_and_v_but_not_through_the_targets():
    q = torch.zeros(1, 2, 3, requires_grad=True)
    v = torch.zeros(1, 2, requires_grad=True)
    out = ilql_losses([q], torch.ones(1, 2), v, torch.tensor([[0, 2]]), torch.tensor([[0.0, 1.0]]), torch.ones(1, 2))
    out["loss"].backward()
    # dV(s0) gets only the expectile gradient: the Bellman target's V(s1) is detached
    assert v.grad[0, 0].item() == pytest.approx(-2 * 0.7 * 1.0 / 2)
    assert q.grad[0, 0, 0].item() != 0 and q.grad[0, 1, 2].item() != 0


def test_advantage_logits():
    logits = torch.tensor([0.0, 1.0])
    assert advantage_logits(logits, torch.tensor([2.0, 0.0]), torch.tensor(1.0), beta=0.5).tolist() == [0.5, 0.5]
