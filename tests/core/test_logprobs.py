import math

import torch
from torch.testing import assert_close

from rlhfkit.core import entropy_from_logits, token_logprobs


def _log_softmax_at(zs, i):
    # plain python: log(exp(z_i) / sum_j exp(z_j))
    return math.log(math.exp(zs[i]) / sum(math.exp(z) for z in zs))


def test_token_logprobs_by_hand_with_temperature():
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [5.0, 1.0, 0.0]]])
    labels = torch.tensor([[2, 0, -100]])
    out = token_logprobs(logits, labels)
    expected = [_log_softmax_at([1, 2, 3], 2), math.log(1 / 3), 0.0]  # -100 -> 0
    assert_close(out, torch.tensor([expected]))
    # temperature 2: softmax of [0.5, 1.0, 1.5]
    out = token_logprobs(logits, labels, temperature=2.0)
    expected = [_log_softmax_at([0.5, 1.0, 1.5], 2), math.log(1 / 3), 0.0]
    assert_close(out, torch.tensor([expected]))


def test_token_logprobs_half_precision_path():
    # bf16 holds 1, 2, 3 exactly; the row-wise float32 path must give the exact float answer
    logits = torch.tensor([[[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]], dtype=torch.bfloat16)
    labels = torch.tensor([[0, -100]])
    out = token_logprobs(logits, labels, temperature=0.5)
    # temperature 0.5: logits [2, 4, 6]
    assert out.dtype == torch.float32
    assert_close(out, torch.tensor([[_log_softmax_at([2, 4, 6], 0), 0.0]]))


def test_token_logprobs_gradient_is_onehot_minus_softmax():
    logits = torch.tensor([[[1.0, 2.0, 3.0]]], requires_grad=True)
    token_logprobs(logits, torch.tensor([[1]])).sum().backward()
    z = sum(math.exp(v) for v in (1, 2, 3))
    p = [math.exp(v) / z for v in (1, 2, 3)]
    assert_close(logits.grad, torch.tensor([[[-p[0], 1 - p[1], -p[2]]]]))


def test_entropy_uniform_is_log_v():
    logits = torch.zeros(2, 3, 7)
    assert_close(entropy_from_logits(logits), torch.full((2, 3), math.log(7)))
    assert_close(entropy_from_logits(torch.full((1, 1, 4), 5.0), temperature=3.0), torch.tensor([[math.log(4)]]))


def test_entropy_by_hand_and_temperature():
    # logits [0, log 3] -> p = [1/4, 3/4]
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert_close(entropy_from_logits(torch.tensor([[[0.0, math.log(3)]]])), torch.tensor([[h]]))
    # logits [0, 2 log 3] at temperature 2 are again [0, log 3]
    assert_close(entropy_from_logits(torch.tensor([[[0.0, 2 * math.log(3)]]]), temperature=2.0), torch.tensor([[h]]))
