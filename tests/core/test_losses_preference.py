"""DPO-family and KTO losses: numbers derived by hand from the papers' formulas, then agreement
with TRL 1.16's own loss code on identical random inputs (skipped where TRL is absent).

Hand numbers use softplus(x) = log(1 + e^x), so -logsigmoid(z) = softplus(-z) and
-logsigmoid(-z) = softplus(-z) + z.
"""

import functools
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close

from rlhfkit.core.losses import (
    PREFERENCE_LOSSES,
    REFERENCE_FREE_LOSSES,
    cdpo_loss,
    dpo_sigmoid_loss,
    ipo_loss,
    kto_loss,
    orpo_loss,
    simpo_loss,
)


def softplus(x):
    return math.log(1 + math.exp(x))


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


# One pair: policy chosen -10, rejected -12; reference -11 for both; beta 0.5.
# log-ratios: chosen -10 - -11 = +1, rejected -12 - -11 = -1; DPO logit z = 0.5 * (1 - -1) = 1.
PI_C, PI_R, REF_C, REF_R = t(-10.0), t(-12.0), t(-11.0), t(-11.0)


def test_dpo_by_hand():
    out = dpo_sigmoid_loss(PI_C, PI_R, REF_C, REF_R, beta=0.5)
    assert_close(out.losses, t(softplus(-1.0)))  # -logsigmoid(1) = log(1 + e^-1) = 0.31326...
    assert abs(out.losses.item() - 0.31326168751822286) < 1e-12
    assert_close(out.chosen_rewards, t(0.5))  # beta * (+1)
    assert_close(out.rejected_rewards, t(-0.5))  # beta * (-1)


def test_dpo_tie_pulls_to_equal_rewards():
    # tie: -0.5 (logsigmoid(1) + logsigmoid(-1)) = 0.5 (softplus(-1) + softplus(-1) + 1) = softplus(-1) + 0.5
    out = dpo_sigmoid_loss(PI_C, PI_R, REF_C, REF_R, beta=0.5, tie=torch.tensor([True]))
    assert_close(out.losses, t(softplus(-1.0) + 0.5))
    # minimum (log 2, zero gradient) at equal log-ratios
    c = torch.tensor([-11.0], dtype=torch.float64, requires_grad=True)
    loss = dpo_sigmoid_loss(c, PI_R, REF_C, t(-12.0), beta=0.5, tie=torch.tensor([True])).losses
    loss.sum().backward()
    assert_close(loss, t(math.log(2)))
    assert_close(c.grad, t(0.0))


def test_cdpo_by_hand():
    # eps = 0.25, z = 1: 0.75 softplus(-1) + 0.25 (softplus(-1) + 1) = softplus(-1) + 0.25 = 0.56326...
    out = cdpo_loss(PI_C, PI_R, REF_C, REF_R, beta=0.5, label_smoothing=0.25)
    assert_close(out.losses, t(softplus(-1.0) + 0.25))
    assert_close(
        cdpo_loss(PI_C, PI_R, REF_C, REF_R, beta=0.5, label_smoothing=0.0).losses,
        dpo_sigmoid_loss(PI_C, PI_R, REF_C, REF_R, beta=0.5).losses,
    )
    with pytest.raises(ValueError):
        cdpo_loss(PI_C, PI_R, REF_C, REF_R, label_smoothing=0.5)


def test_ipo_by_hand():
    # beta 0.5 -> target 1 / (2 beta) = 1.
    # summed (paper): h = 1 - (-1) = 2 -> (2 - 1)^2 = 1
    out = ipo_loss(PI_C, PI_R, REF_C, REF_R, beta=0.5)
    assert_close(out.losses, t(1.0))
    # per-token (TRL): chosen 2 tokens, rejected 4: h = 1/2 - (-1/4) = 0.75 -> (0.75 - 1)^2 = 0.0625
    out = ipo_loss(
        PI_C, PI_R, REF_C, REF_R, beta=0.5, chosen_lengths=torch.tensor([2]), rejected_lengths=torch.tensor([4])
    )
    assert_close(out.losses, t(0.0625))
    assert_close(out.chosen_rewards, t(0.5))
    # tie: target 0 -> 0.75^2 = 0.5625
    out = ipo_loss(
        PI_C,
        PI_R,
        REF_C,
        REF_R,
        beta=0.5,
        chosen_lengths=torch.tensor([2]),
        rejected_lengths=torch.tensor([4]),
        tie=torch.tensor([True]),
    )
    assert_close(out.losses, t(0.5625))


def test_simpo_by_hand():
    # beta 2, gamma 0.5; chosen -6 over 3 tokens (avg -2), rejected -12 over 4 (avg -3)
    # rewards 2 * -2 = -4 and 2 * -3 = -6; z = (-4 - -6) - 0.5 = 1.5; loss softplus(-1.5) = 0.20141...
    out = simpo_loss(t(-6.0), t(-12.0), torch.tensor([3]), torch.tensor([4]), beta=2.0, gamma=0.5)
    assert_close(out.losses, t(softplus(-1.5)))
    assert abs(out.losses.item() - 0.20141327798275246) < 1e-12
    assert_close(out.chosen_rewards, t(-4.0))
    assert_close(out.rejected_rewards, t(-6.0))
    # tie: no margin, label 1/2 on z = 2: softplus(-2) + 1
    out = simpo_loss(
        t(-6.0), t(-12.0), torch.tensor([3]), torch.tensor([4]), beta=2.0, gamma=0.5, tie=torch.tensor([True])
    )
    assert_close(out.losses, t(softplus(-2.0) + 1.0))


def test_orpo_by_hand():
    # chosen: 2 tokens with p = 1/2 each -> mean log-prob log(1/2); odds = (1/2)/(1/2) = 1
    # rejected: 3 tokens with p = 1/4 -> mean log-prob log(1/4); odds = (1/4)/(3/4) = 1/3
    # log odds ratio = log 1 - log(1/3) = log 3; L_OR = -log sigmoid(log 3) = -log(3/4) = log(4/3)
    # L_SFT = -log(1/2) = log 2; lambda 0.1: loss = log 2 + 0.1 log(4/3) = 0.72191...
    out = orpo_loss(t(2 * math.log(0.5)), t(3 * math.log(0.25)), torch.tensor([2]), torch.tensor([3]), lam=0.1)
    assert_close(out.losses, t(math.log(2) + 0.1 * math.log(4 / 3)))
    assert_close(out.chosen_rewards, t(0.1 * math.log(0.5)))
    assert_close(out.rejected_rewards, t(0.1 * math.log(0.25)))


def test_kto_by_hand():
    # beta 1; log-ratios r = [2, -1, 0.5]; desirable [T, F, F]
    # mismatched-pair KL estimates [0.5, 1.5] -> z0 = max(0, mean) = 1
    # desirable, r=2: 1 - sigmoid(2 - 1) = sigmoid(-1) = 0.26894...
    # undesirable, r=-1: 1 - sigmoid(1 - -1) = sigmoid(-2) = 0.11920..., weight 2 -> 0.23841...
    # undesirable, r=0.5: 1 - sigmoid(1 - 0.5) = sigmoid(-0.5) = 0.37754..., weight 2 -> 0.75508...
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    logps, ref = t(2.0, -1.0, 0.5), t(0.0, 0.0, 0.0)
    kl_logps = torch.tensor([0.5, 1.5], dtype=torch.float64, requires_grad=True)
    out = kto_loss(
        logps,
        ref,
        torch.tensor([True, False, False]),
        kl_logps,
        t(0.0, 0.0),
        beta=1.0,
        desirable_weight=1.0,
        undesirable_weight=2.0,
    )
    assert_close(out.kl, torch.tensor(1.0, dtype=torch.float64))
    assert_close(out.losses, t(sig(-1.0), 2 * sig(-2.0), 2 * sig(-0.5)))
    assert_close(out.chosen_rewards, t(2.0, -1.0, 0.5))
    assert not out.kl.requires_grad  # z0 is detached (no gradient through the reference point)
    # negative KL estimate is clamped: mean(-1, -3) = -2 -> z0 = 0; then
    # 1 - sigmoid(2) = sigmoid(-2); 1 - sigmoid(0 - -1) = sigmoid(-1); 1 - sigmoid(0 - 0.5) = sigmoid(0.5)
    out = kto_loss(logps, ref, torch.tensor([True, False, False]), t(-1.0, -3.0), t(0.0, 0.0), beta=1.0)
    assert out.kl.item() == 0.0
    assert_close(out.losses, t(sig(-2.0), sig(-1.0), sig(0.5)))


def test_registry():
    assert set(PREFERENCE_LOSSES) == {"sigmoid", "ipo", "cdpo", "simpo", "orpo"}
    assert set(REFERENCE_FREE_LOSSES) == {"simpo", "orpo"}
    assert PREFERENCE_LOSSES["sigmoid"] is dpo_sigmoid_loss


# ----------------------------------------------------------------------------- against TRL 1.16
# TRL's loss maths is called on the same random inputs. Where TRL computes the loss inside
# `_compute_loss(model, inputs)`, the "model" is a unigram language model (a fixed random
# log-softmax table, log p(token) = table[token], zero where the label is -100) standing in for a
# transformer; TRL sums its per-token log-probs itself and does all the loss maths.
VOCAB = 17


def _trl():
    return pytest.importorskip("trl", reason="TRL is a test extra (pip install rlhfkit[test]); not installed")


class UnigramLM:
    training = True

    def __init__(self, table):
        self.table = table

    def __call__(self, input_ids, labels=None, **_):
        shifted = labels[:, 1:]
        lp = torch.where(shifted != -100, self.table[shifted.clamp(min=0)], torch.zeros((), dtype=self.table.dtype))
        zeros = torch.zeros_like(lp)
        return SimpleNamespace(log_probs=lp, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool(), aux_loss=None)


class FakeAccelerator:
    device = torch.device("cpu")

    @staticmethod
    def gather_for_metrics(x):
        return x

    gather = gather_for_metrics


def _sequences(g, n, T=12):
    """[n, T] token ids with a prompt of 1-4 tokens, a completion of >= 2, right padding."""
    ids = torch.randint(1, VOCAB, (n, T), generator=g)
    prompt = torch.randint(1, 5, (n,), generator=g)
    length = prompt + 2 + torch.randint(0, T - 6, (n,), generator=g)
    pos = torch.arange(T).expand(n, T)
    attention = (pos < length[:, None]).long()
    completion = ((pos >= prompt[:, None]) & (pos < length[:, None])).long()
    return ids, attention, completion


def _our_logps(table, ids, completion):
    """Summed completion log-probs and completion token counts under the unigram LM."""
    return (table[ids] * completion).sum(1), completion.sum(1)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_and_ipo_match_trl(loss_type):
    _trl()
    from trl.trainer.dpo_trainer import DPOTrainer

    g = torch.Generator().manual_seed(0)
    B = 6
    table = torch.log_softmax(torch.randn(VOCAB, generator=g, dtype=torch.float64) * 2, -1)
    ids, attention, completion = _sequences(g, 2 * B)  # rows [0, B) chosen, [B, 2B) rejected
    ref = torch.randn(2 * B, generator=g, dtype=torch.float64) * 3 - 20
    beta = 0.3
    stub = SimpleNamespace(
        model=UnigramLM(table),
        accelerator=FakeAccelerator(),
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=0.0,
        use_weighting=False,
        aux_loss_enabled=False,
        _tp_size=1,
        _total_train_tokens=0,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        args=None,
    )
    inputs = {
        "input_ids": ids,
        "attention_mask": attention,
        "completion_mask": completion,
        "ref_chosen_logps": ref[:B],
        "ref_rejected_logps": ref[B:],
    }
    trl_loss = DPOTrainer._compute_loss(stub, stub.model, inputs, return_outputs=False)

    logps, n = _our_logps(table, ids, completion)
    if loss_type == "sigmoid":
        out = dpo_sigmoid_loss(logps[:B], logps[B:], ref[:B], ref[B:], beta=beta)
    else:
        out = ipo_loss(logps[:B], logps[B:], ref[:B], ref[B:], beta=beta, chosen_lengths=n[:B], rejected_lengths=n[B:])
    assert_close(out.losses.mean(), trl_loss, atol=1e-5, rtol=1e-5)
    m = stub._metrics["train"]
    assert abs(out.chosen_rewards.mean().item() - m["rewards/chosen"][0]) < 1e-5
    assert abs(out.rejected_rewards.mean().item() - m["rewards/rejected"][0]) < 1e-5
    acc = (out.chosen_rewards > out.rejected_rewards).double().mean().item()
    assert abs(acc - m["rewards/accuracies"][0]) < 1e-6


def _random_pair_logps(seed, B=8):
    g = torch.Generator().manual_seed(seed)
    c = -torch.rand(B, generator=g, dtype=torch.float64) * 30 - 1
    r = -torch.rand(B, generator=g, dtype=torch.float64) * 30 - 1
    rc = -torch.rand(B, generator=g, dtype=torch.float64) * 30 - 1
    rr = -torch.rand(B, generator=g, dtype=torch.float64) * 30 - 1
    nc = torch.randint(1, 20, (B,), generator=g)
    nr = torch.randint(1, 20, (B,), generator=g)
    return c, r, rc, rr, nc, nr


def test_cdpo_matches_trl():
    """TRL 1.16's DPOTrainer has no label-smoothed sigmoid loss; its CPO trainer's `sigmoid` loss
    with `label_smoothing` is the cDPO formula of the logit `beta * (a - b)`. Fed the DPO
    log-ratios a = pi_c - ref_c, b = pi_r - ref_r it computes conservative DPO."""
    _trl()
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    c, r, rc, rr, _, _ = _random_pair_logps(1)
    stub = SimpleNamespace(
        alpha=0.0, loss_type="sigmoid", beta=0.2, label_smoothing=0.15, simpo_gamma=0.0, accelerator=FakeAccelerator()
    )
    trl_losses, _, _ = CPOTrainer.cpo_loss(stub, c - rc, r - rr)
    ours = cdpo_loss(c, r, rc, rr, beta=0.2, label_smoothing=0.15)
    assert_close(ours.losses, trl_losses, atol=1e-5, rtol=1e-5)


def test_simpo_matches_trl():
    """SimPO is TRL's CPOTrainer loss_type="simpo" on length-averaged log-probs."""
    _trl()
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    c, r, _, _, nc, nr = _random_pair_logps(2)
    stub = SimpleNamespace(
        alpha=0.0, loss_type="simpo", beta=2.5, label_smoothing=0.0, simpo_gamma=0.7, accelerator=FakeAccelerator()
    )
    trl_losses, trl_cr, trl_rr = CPOTrainer.cpo_loss(stub, c / nc, r / nr)
    ours = simpo_loss(c, r, nc, nr, beta=2.5, gamma=0.7)
    assert_close(ours.losses, trl_losses, atol=1e-5, rtol=1e-5)
    assert_close(ours.chosen_rewards, trl_cr, atol=1e-5, rtol=1e-5)
    assert_close(ours.rejected_rewards, trl_rr, atol=1e-5, rtol=1e-5)


def test_orpo_matches_trl():
    """ORPO's odds-ratio term against TRL's `ORPOTrainer.odds_ratio_loss` (which returns
    `lam * logsigmoid(log odds)`, subtracted from the NLL); our per-pair loss is
    NLL + lam * L_OR with the NLL the chosen response's mean token NLL."""
    _trl()
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    c, r, _, _, nc, nr = _random_pair_logps(3)
    c, r = c / 10, r / 10  # mean token log-probs in a realistic range (-3.1, -0.1)
    stub = SimpleNamespace(beta=0.25, accelerator=FakeAccelerator())
    trl_terms, trl_cr, trl_rr, _, _ = ORPOTrainer.odds_ratio_loss(stub, c / nc, r / nr)
    ours = orpo_loss(c, r, nc, nr, lam=0.25)
    nll = -c / nc
    # TRL casts to float32 inside; compare values
    assert_close(ours.losses, nll - trl_terms, atol=1e-5, rtol=1e-5, check_dtype=False)
    assert_close(ours.chosen_rewards, trl_cr, atol=1e-5, rtol=1e-5, check_dtype=False)
    assert_close(ours.rejected_rewards, trl_rr, atol=1e-5, rtol=1e-5, check_dtype=False)


def test_kto_matches_trl():
    _trl()
    from trl.trainer.kto_trainer import KTOTrainer

    g = torch.Generator().manual_seed(4)
    B = 8
    table = torch.log_softmax(torch.randn(VOCAB, generator=g, dtype=torch.float64) * 2, -1)
    ids, attention, completion = _sequences(g, B)
    kl_ids, kl_attention, kl_completion = _sequences(g, B)
    label = torch.tensor([True, False, True, True, False, False, True, False])
    # reference log-probs below the policy's on the mismatched pairs, so z0 > 0 (not clamped)
    kl_logps, _ = _our_logps(table, kl_ids, kl_completion)
    ref = torch.randn(B, generator=g, dtype=torch.float64) * 3 - 20
    ref_kl = kl_logps - torch.rand(B, generator=g, dtype=torch.float64)
    stub = SimpleNamespace(
        model=UnigramLM(table),
        accelerator=FakeAccelerator(),
        precompute_ref_logps=True,
        calculate_KL=True,
        loss_type="kto",
        beta=0.4,
        desirable_weight=1.3,
        undesirable_weight=0.8,
        aux_loss_enabled=False,
        _tp_size=1,
        _total_train_tokens=0,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        args=None,
    )
    stub._compute_kl_logps = functools.partial(KTOTrainer._compute_kl_logps, stub)  # TRL's own helper
    inputs = {
        "input_ids": ids,
        "attention_mask": attention,
        "completion_mask": completion,
        "KL_input_ids": kl_ids,
        "KL_attention_mask": kl_attention,
        "KL_completion_mask": kl_completion,
        "label": label,
        "ref_logps": ref,
        "ref_KL_logps": ref_kl,
    }
    trl_loss = KTOTrainer._compute_loss(stub, stub.model, inputs, return_outputs=False)

    logps, _ = _our_logps(table, ids, completion)
    out = kto_loss(logps, ref, label, kl_logps, ref_kl, beta=0.4, desirable_weight=1.3, undesirable_weight=0.8)
    assert out.kl.item() > 0
    assert_close(out.losses.mean(), trl_loss, atol=1e-5, rtol=1e-5)
    m = stub._metrics["train"]
    assert abs(out.kl.item() - m["kl"][0]) < 1e-5
    assert abs(out.chosen_rewards[label].mean().item() - m["rewards/chosen"][0]) < 1e-5
    assert abs(out.chosen_rewards[~label].mean().item() - m["rewards/rejected"][0]) < 1e-5
