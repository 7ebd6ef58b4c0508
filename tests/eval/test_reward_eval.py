import math

import pytest
import torch

from rlhfkit.rewards.metrics import expected_calibration_error, pair_metrics


def test_ece_by_hand():
    # bins of width 0.1: p=0.05,0.05 (bin 0, labels 0,1: |0.5-0.05| = 0.45, weight 2/4)
    # p=0.95 (bin 9, label 1: |1-0.95| = 0.05, weight 1/4); p=0.65 (bin 6, label 0: 0.65, weight 1/4)
    p = torch.tensor([0.05, 0.05, 0.95, 0.65])
    y = torch.tensor([0.0, 1.0, 1.0, 0.0])
    assert expected_calibration_error(p, y) == pytest.approx(0.5 * 0.45 + 0.25 * 0.05 + 0.25 * 0.65)


def test_pair_metrics_by_hand():
    chosen = torch.tensor([2.0, 0.0, 1.0, 3.0, 5.0])
    rejected = torch.tensor([1.0, 1.0, 1.0, 0.0, 5.5])
    flip = torch.tensor([False, True, False, True, False])
    tie = torch.tensor([False, False, False, False, True])
    m = pair_metrics(chosen, rejected, flip, tie)
    # decided pairs: diffs 1, -1, 0, 3 -> correct 1, 0, 1/2, 1 -> accuracy 2.5/4
    assert m["pairs"] == 4 and m["ties"] == 1
    assert m["accuracy"] == pytest.approx(2.5 / 4)
    assert m["mean_margin"] == pytest.approx((1 - 1 + 0 + 3) / 4)
    assert m["tie_mean_abs_diff"] == pytest.approx(0.5)
    # shown order: pair0 (c,r) label 1, diff +1 -> pred 1 (TP)
    # pair1 flipped (r,c)=(1,0) label 0, first-second=+1 -> pred 1 (FP)
    # pair2 (c,r)=(1,1) label 1, p=0.5 -> pred 0 (FN)
    # pair3 flipped (r,c)=(0,3) label 0, first-second=-3 -> pred 0 (TN)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(0.5)

    def s(x):
        return 1 / (1 + math.exp(-x))

    probs = [s(1), s(1), s(0), s(-3)]  # bins 7, 7, 5, 0; labels 1, 0, 1, 0
    ece = (2 / 4) * abs(0.5 - (probs[0] + probs[1]) / 2) + (1 / 4) * abs(1 - probs[2]) + (1 / 4) * abs(0 - probs[3])
    assert m["ece"] == pytest.approx(ece)


def test_format_report_header_cells_are_separated_and_aligned_with_their_values():
    """Every header name stands apart from its neighbours (never 'tiestie_mean_abs_diff') and
    each value ends in the same column as its name. Widths by hand: 16 for the subset name, then
    12 per column except mean_margin (11 + 2 = 13) and tie_mean_abs_diff (17 + 2 = 19): 132 in all."""
    from rlhfkit.eval.reward_eval import format_report

    overall = {
        "pairs": 3,
        "accuracy": 0.5,
        "precision": 0.25,
        "recall": 1.0,
        "f1": 0.4,
        "ece": 0.125,
        "mean_margin": 0.75,
        "ties": 1,
        "tie_mean_abs_diff": 0.0625,
    }
    header, row = format_report({"overall": overall, "by_subset": {}}).splitlines()
    names = ["pairs", "accuracy", "precision", "recall", "f1", "ece", "mean_margin", "ties", "tie_mean_abs_diff"]
    assert header.split() == ["subset"] + names
    assert row.split() == ["overall", "3", "0.5000", "0.2500", "1.0000", "0.4000", "0.1250", "0.7500", "1", "0.0625"]
    assert len(header) == len(row) == 16 + 7 * 12 + 13 + 19
    assert header.endswith("  tie_mean_abs_diff") and "ties  tie_mean_abs_diff" in header
    # right-aligned: name and value end in the same column; ends by hand from the widths above
    ends = [28, 40, 52, 64, 76, 88, 101, 113, 132]
    for name, value, end in zip(names, row.split()[1:], ends):
        assert header[end - len(name) - 2 : end] == "  " + name
        assert row[end - len(value) - 1 : end] == " " + value


def test_rating_and_thumbs_metric_pieces_by_hand():
    from rlhfkit.rewards.metrics import average_ranks, mean_squared_error, roc_auc, spearman, threshold_accuracy

    assert mean_squared_error([0.5, 1.0, 0.0], [0.0, 1.0, 1.0]) == pytest.approx((0.25 + 0 + 1) / 3)
    assert average_ranks([10, 20, 20, 30]) == [1, 2.5, 2.5, 4]
    assert average_ranks([3, 1, 3, 3]) == [3, 1, 3, 3]  # three tied at ranks 2, 3, 4 -> 3
    # no ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1)) = 1 - 6 * 2 / 60
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # ties: ranks x = [1, 2.5, 2.5, 4], y = [1, 2, 3, 4]; both means 2.5;
    # sum dx dy = 2.25 + 0 + 0 + 2.25 = 4.5, sum dx^2 = 4.5, sum dy^2 = 5 -> 4.5 / sqrt(22.5) = sqrt(0.9)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(math.sqrt(0.9))
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))  # a constant side has no rank correlation
    # positives 0.35, 0.8 against negatives 0.1, 0.4: 0.35 beats 0.1 only, 0.8 beats both -> 3 / 4
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    # a tie between a positive and a negative counts 1/2: (0.5 + 1 + 1 + 1) / 4
    assert roc_auc([1, 1, 2, 0], [True, False, True, False]) == pytest.approx(0.875)
    assert math.isnan(roc_auc([1, 2], [True, True]))
    # up above 0: 2 (up, right), -1 (up, wrong), 0 (down, 1/2), 0.5 (down, wrong) -> 1.5 / 4
    assert threshold_accuracy([2, -1, 0, 0.5], [True, True, False, False]) == pytest.approx(0.375)


def test_rating_and_thumbs_metric_pieces_agree_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    from rlhfkit.rewards.metrics import roc_auc, spearman

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, (40,), generator=g).tolist()  # many ties
    y = (torch.tensor(x) + torch.randint(0, 3, (40,), generator=g)).tolist()
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
    labels = [v > 3 for v in y]
    u = stats.mannwhitneyu([s for s, l in zip(x, labels) if l], [s for s, l in zip(x, labels) if not l]).statistic
    assert roc_auc(x, labels) == pytest.approx(u / (sum(labels) * (len(labels) - sum(labels))))


def test_rating_and_thumbs_metrics():
    from rlhfkit.rewards.metrics import rating_metrics, thumbs_metrics

    m = rating_metrics([0.5, 1.0, 0.0], [0.0, 1.0, 0.5])
    assert m["examples"] == 3 and m["mse"] == m["loss"] == pytest.approx(0.5 / 3)
    # ranks [2, 3, 1] vs [1, 3, 2]: deviations [0, 1, -1] and [-1, 1, 0] -> 1 / sqrt(2 * 2)
    assert m["spearman"] == pytest.approx(0.5)
    t = thumbs_metrics([0.0, 2.0], [True, False])
    # BCE: -log sigmoid(0) = log 2 and -log(1 - sigmoid(2)) = log(1 + e^2)
    assert t["loss"] == pytest.approx((math.log(2) + math.log(1 + math.exp(2))) / 2)
    assert (t["examples"], t["positives"], t["accuracy"], t["auc"]) == (2, 1, 0.25, 0.0)
