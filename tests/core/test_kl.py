import math

import torch
from torch.testing import assert_close

from rlhfkit.core import AdaptiveKLController, FixedKLController, kl_k1, kl_k2, kl_k3

LOGP = torch.tensor([-1.0, -2.0, -0.7])
REF = torch.tensor([-1.5, -1.0, -0.7])


def test_estimators_by_hand():
    # logp - ref = [0.5, -1.0, 0]; log r = ref - logp = [-0.5, 1.0, 0]
    assert_close(kl_k1(LOGP, REF), torch.tensor([0.5, -1.0, 0.0]))
    assert_close(kl_k2(LOGP, REF), torch.tensor([0.125, 0.5, 0.0]))  # 0.5 * [0.25, 1, 0]
    # k3 = e^{log r} - 1 - log r
    assert_close(kl_k3(LOGP, REF), torch.tensor([math.exp(-0.5) - 1 + 0.5, math.e - 1 - 1, 0.0]))


def test_k3_non_negative():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1000, generator=g) * 3, torch.randn(1000, generator=g) * 3
    assert (kl_k3(a, b) >= 0).all() and (kl_k2(a, b) >= 0).all()


def test_k1_k3_unbiased_monte_carlo():
    # KL(p || q) for two categoricals, computed with plain python
    p = [0.5, 0.3, 0.2]
    q = [0.2, 0.3, 0.5]
    true_kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    g = torch.Generator().manual_seed(1)
    x = torch.multinomial(torch.tensor(p), 200_000, replacement=True, generator=g)
    logp, logq = torch.tensor(p).log()[x], torch.tensor(q).log()[x]
    assert abs(kl_k1(logp, logq).mean().item() - true_kl) < 0.01
    assert abs(kl_k3(logp, logq).mean().item() - true_kl) < 0.01


def test_fixed_controller():
    c = FixedKLController(0.05)
    c.update(100.0, 256)
    assert c.value == 0.05
    c2 = FixedKLController(1.0)
    c2.load_state_dict(c.state_dict())
    assert c2.value == 0.05


def test_adaptive_controller_by_hand():
    c = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    # kl 12: 12/6 - 1 = 1 -> clipped to 0.2; mult = 1 + 0.2 * 256 / 10000 = 1.00512
    c.update(12.0, 256)
    assert math.isclose(c.value, 0.1 * 1.00512, rel_tol=1e-12)
    # kl 5.7: 5.7/6 - 1 = -0.05; mult = 1 - 0.05 * 0.0256 = 0.99872
    c.update(torch.tensor(5.7, dtype=torch.float64), 256)
    assert math.isclose(c.value, 0.1 * 1.00512 * 0.99872, rel_tol=1e-12)
    # kl 0: -1 -> clipped to -0.2; mult = 1 - 0.2 * 0.0256 = 0.99488
    c.update(0.0, 256)
    assert math.isclose(c.value, 0.1 * 1.00512 * 0.99872 * 0.99488, rel_tol=1e-12)
    # checkpoint round trip: a fresh controller continues identically
    c2 = AdaptiveKLController(init_kl_coef=0.5, target=6.0, horizon=10000)
    c2.load_state_dict(c.state_dict())
    assert c2.value == c.value
    c.update(7.0, 100)
    c2.update(7.0, 100)
    assert c2.value == c.value
