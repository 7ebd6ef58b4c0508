import math

import pytest
import torch
from torch.testing import assert_close

from rlhfkit.core import (
    last_true_index,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    truncate_after_eos,
)

X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
M = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)


def test_masked_sum_and_mean_by_hand():
    # valid values: 1, 2 (row 0) and 4 (row 1)
    assert_close(masked_sum(X, M), torch.tensor(7.0))  # 1+2+4
    assert_close(masked_sum(X, M, dim=1), torch.tensor([3.0, 4.0]))
    assert_close(masked_sum(X, M, dim=0), torch.tensor([5.0, 2.0, 0.0]))
    assert_close(masked_mean(X, M), torch.tensor(7.0 / 3.0))
    assert_close(masked_mean(X, M, dim=1), torch.tensor([1.5, 4.0]))  # (1+2)/2, 4/1
    # 0/1 integer masks behave like bool masks
    assert_close(masked_mean(X, M.long()), torch.tensor(7.0 / 3.0))


def test_masked_values_are_ignored_even_inf_and_nan():
    garbage = X.clone()
    garbage[0, 2] = float("inf")
    garbage[1, 1] = float("nan")
    garbage[1, 2] = -1e30
    assert_close(masked_sum(garbage, M), torch.tensor(7.0))
    assert_close(masked_mean(garbage, M, dim=1), torch.tensor([1.5, 4.0]))
    assert_close(masked_var(garbage, M), masked_var(X, M))
    assert_close(masked_whiten(garbage, M), masked_whiten(X, M))


def test_masked_var_by_hand():
    # valid values 1, 2, 4: mean 7/3, deviations -4/3, -1/3, 5/3, squares 16/9 + 1/9 + 25/9 = 42/9
    assert_close(masked_var(X, M, unbiased=True), torch.tensor(42.0 / 9.0 / 2.0))  # / (n-1)
    assert_close(masked_var(X, M, unbiased=False), torch.tensor(42.0 / 9.0 / 3.0))  # / n


def test_masked_var_needs_two_elements_when_unbiased():
    one = torch.tensor([[1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    with pytest.raises(ValueError):
        masked_var(X, one, unbiased=True)
    assert_close(masked_var(X, one, unbiased=False), torch.tensor(0.0))


def test_masked_whiten_by_hand():
    x = torch.tensor([[2.0, 4.0, 6.0, 99.0]])
    m = torch.tensor([[True, True, True, False]])
    # mean 4, unbiased var ((-2)^2 + 0 + 2^2) / 2 = 4, std 2
    out = masked_whiten(x, m, shift_mean=True, eps=0.0)
    assert_close(out, torch.tensor([[-1.0, 0.0, 1.0, 0.0]]))
    # shift_mean=False adds the mean back: [-1, 0, 1] + 4 (OpenAI/TRL semantics)
    out = masked_whiten(x, m, shift_mean=False, eps=0.0)
    assert_close(out, torch.tensor([[3.0, 4.0, 5.0, 0.0]]))
    # default eps 1e-8 enters as sqrt(4 + 1e-8)
    s = math.sqrt(4.0 + 1e-8)
    out = masked_whiten(x, m)
    assert_close(out, torch.tensor([[-2.0 / s, 0.0, 2.0 / s, 0.0]]))


def test_masked_whiten_statistics_on_random_valid_positions():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 9, generator=g, dtype=torch.float64) * 3.0 + 5.0
    m = torch.rand(4, 9, generator=g) > 0.3
    xs = x[m]
    centred = masked_whiten(x, m, shift_mean=True)
    kept = masked_whiten(x, m, shift_mean=False)
    one = torch.tensor(1.0, dtype=torch.float64)
    assert_close(centred[m].mean(), torch.tensor(0.0, dtype=torch.float64), atol=1e-9, rtol=0)
    assert_close(centred[m].std(unbiased=True), one, atol=1e-7, rtol=0)
    assert_close(kept[m].mean(), xs.mean(), atol=1e-9, rtol=0)
    assert_close(kept[m].std(unbiased=True), one, atol=1e-7, rtol=0)
    assert (centred[~m] == 0).all() and (kept[~m] == 0).all()


def test_last_true_index():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [0, 1, 1], [1, 0, 1]], dtype=torch.bool)
    out = last_true_index(mask)
    assert out.dtype == torch.long
    assert out.tolist() == [1, -1, 2, 2]


def test_truncate_after_eos_edge_cases():
    EOS, PAD = 2, 0
    ids = torch.tensor(
        [
            [2, 5, 6, 7],  # EOS at the first position
            [5, 6, 7, 8],  # no EOS
            [5, 2, 6, 2],  # EOS twice: cut after the first one
            [5, 6, 7, 2],  # EOS last
        ]
    )
    out, mask, has_eos = truncate_after_eos(ids, EOS, PAD)
    assert out.tolist() == [[2, 0, 0, 0], [5, 6, 7, 8], [5, 2, 0, 0], [5, 6, 7, 2]]
    assert mask.tolist() == [
        [True, False, False, False],
        [True, True, True, True],
        [True, True, False, False],
        [True, True, True, True],
    ]
    assert has_eos.tolist() == [True, False, True, True]
    assert mask.dtype == torch.bool and has_eos.dtype == torch.bool
