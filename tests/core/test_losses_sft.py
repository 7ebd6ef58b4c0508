import math

import torch
from torch.testing import assert_close

from rlhfkit.core.losses import count_target_tokens, sft_loss


def _nll(zs, y):
    return -math.log(math.exp(zs[y]) / sum(math.exp(z) for z in zs))


def test_sft_loss_by_hand():
    # logits[:, t] predicts labels[:, t+1]; the last position's logits are never used
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [50.0, -50.0, 7.0]]])
    labels = torch.tensor([[-100, 2, 0]])
    # targets: label 2 from [1,2,3], label 0 from [0,0,0] (nll log 3)
    expected = (_nll([1, 2, 3], 2) + math.log(3)) / 2
    assert count_target_tokens(labels) == 2
    assert_close(sft_loss(logits, labels), torch.tensor(expected))
    assert_close(sft_loss(logits, labels, normaliser=4), torch.tensor(expected * 2 / 4))
    # a -100 in the middle is skipped
    labels = torch.tensor([[7, -100, 0]])
    assert count_target_tokens(labels) == 1
    assert_close(sft_loss(logits, labels), torch.tensor(math.log(3)))


def test_sft_loss_half_precision_and_empty():
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]], dtype=torch.bfloat16)
    assert_close(sft_loss(logits, torch.tensor([[-100, 1]])), torch.tensor(_nll([1, 2, 3], 1)))
    assert sft_loss(logits, torch.tensor([[-100, -100]])).item() == 0.0


def _random_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    B, T, V = 4, 6, 5
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :2] = -100  # prompt tokens
    labels[1, :5] = -100  # long prompt: one target token
    labels[2, 4:] = -100  # padding
    return logits, labels


def test_sft_loss_matches_python_loop():
    logits, labels = _random_batch()
    total, n = 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(1, labels.shape[1]):
            y = int(labels[b, t])
            if y != -100:
                total += _nll(logits[b, t - 1].tolist(), y)
                n += 1
    assert count_target_tokens(labels) == n
    assert_close(sft_loss(logits, labels), torch.tensor(total / n, dtype=torch.float64))


def test_sft_loss_split_invariance_with_global_normaliser():
    logits, labels = _random_batch(1)
    full = sft_loss(logits, labels)
    n = count_target_tokens(labels)
    for splits in ([1, 3], [2, 2], [1, 1, 1, 1]):
        parts, start = [], 0
        for size in splits:
            parts.append(sft_loss(logits[start : start + size], labels[start : start + size], normaliser=n))
            start += size
        assert_close(sum(parts), full)
    # the naive mean of per-micro-batch means is different (different token counts per split)
    naive = (sft_loss(logits[:1], labels[:1]) + sft_loss(logits[1:], labels[1:])) / 2
    assert not torch.allclose(naive, full)
