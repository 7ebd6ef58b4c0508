import math

import pytest
import torch
from torch.testing import assert_close

from rlhfkit.core.losses import binary_feedback_loss, bradley_terry_loss, rating_regression_loss


def softplus(x):
    return math.log(1 + math.exp(x))  # -logsigmoid(-x)


CHOSEN = torch.tensor([2.0, 0.0])
REJECTED = torch.tensor([1.0, 1.0])  # d = [1, -1]


def test_bradley_terry_by_hand():
    # -logsigmoid(d) = log(1 + e^{-d})
    per_pair = [softplus(-1.0), softplus(1.0)]
    assert_close(bradley_terry_loss(CHOSEN, REJECTED, reduction="none"), torch.tensor(per_pair))
    assert_close(bradley_terry_loss(CHOSEN, REJECTED), torch.tensor(sum(per_pair) / 2))
    assert_close(bradley_terry_loss(CHOSEN, REJECTED, reduction="sum"), torch.tensor(sum(per_pair)))
    with pytest.raises(ValueError):
        bradley_terry_loss(CHOSEN, REJECTED, reduction="max")


def test_bradley_terry_margin():
    # Llama 2: -logsigmoid(d - m), m = [0.5, 0] -> d - m = [0.5, -1]
    out = bradley_terry_loss(CHOSEN, REJECTED, margin=torch.tensor([0.5, 0.0]), reduction="none")
    assert_close(out, torch.tensor([softplus(-0.5), softplus(1.0)]))


def test_bradley_terry_ties():
    tie = torch.tensor([False, True])
    out = bradley_terry_loss(CHOSEN, REJECTED, margin=torch.tensor([0.5, 3.0]), tie=tie, reduction="none")
    # pair 0: ordinary with margin; pair 1 (tie, d = -1, margin ignored):
    # -0.5 * (logsigmoid(-1) + logsigmoid(1)) = 0.5 * (log(1 + e) + log(1 + e^-1))
    assert_close(out, torch.tensor([softplus(-0.5), 0.5 * (softplus(1.0) + softplus(-1.0))]))
    # a tie is minimised at equal rewards: loss log 2 and zero gradient
    c = torch.tensor([0.3], requires_grad=True)
    loss = bradley_terry_loss(c, torch.tensor([0.3]), tie=torch.tensor([True]))
    loss.backward()
    assert_close(loss, torch.tensor(math.log(2)))
    assert_close(c.grad, torch.tensor([0.0]))


def test_rating_regression_and_binary_feedback():
    # MSE: ((1-0)^2 + (2-4)^2) / 2 = 2.5
    assert_close(rating_regression_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])), torch.tensor(2.5))
    assert_close(
        rating_regression_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0]), reduction="sum"), torch.tensor(5.0)
    )
    # BCE with logits: label 1, logit 0 -> log 2; label 0, logit 2 -> log(1 + e^2)
    logits, labels = torch.tensor([0.0, 2.0]), torch.tensor([1, 0])
    assert_close(binary_feedback_loss(logits, labels, reduction="none"), torch.tensor([math.log(2), softplus(2.0)]))
    assert_close(binary_feedback_loss(logits, labels.bool()), torch.tensor((math.log(2) + softplus(2.0)) / 2))
