import math

import pytest
import torch

from rlhfkit.eval.reward_eval import expected_calibration_error, pair_metrics


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
    s = lambda x: 1 / (1 + math.exp(-x))
    probs = [s(1), s(1), s(0), s(-3)]  # bins 7, 7, 5, 0
    labels = [1, 0, 1, 0]
    ece = (2 / 4) * abs(0.5 - (probs[0] + probs[1]) / 2) + (1 / 4) * abs(1 - probs[2]) + (1 / 4) * abs(0 - probs[3])
    assert m["ece"] == pytest.approx(ece)


def test_format_report_header_cells_are_separated_and_aligned_with_their_values():
    """Every header name stands apart (it used to print 'tiestie_mean_abs_diff') and each value
    ends in the same column as its name. Widths by hand: 16 for the subset name, then 12 per
    column except mean_margin (11 + 2 = 13) and tie_mean_abs_diff (17 + 2 = 19): 132 in all."""
    from rlhfkit.eval.reward_eval import format_report

    overall = {"pairs": 3, "accuracy": 0.5, "precision": 0.25, "recall": 1.0, "f1": 0.4, "ece": 0.125,
               "mean_margin": 0.75, "ties": 1, "tie_mean_abs_diff": 0.0625}
    header, row = format_report({"overall": overall, "by_subset": {}}).splitlines()
    names = ["pairs", "accuracy", "precision", "recall", "f1", "ece", "mean_margin", "ties", "tie_mean_abs_diff"]
    assert header.split() == ["subset"] + names
    assert row.split() == ["overall", "3", "0.5000", "0.2500", "1.0000", "0.4000", "0.1250", "0.7500", "1", "0.0625"]
    assert len(header) == len(row) == 16 + 7 * 12 + 13 + 19
    assert header.endswith("  tie_mean_abs_diff") and "ties  tie_mean_abs_diff" in header
    # right-aligned: name and value end in the same column; ends by hand from the widths above
    ends = [28, 40, 52, 64, 76, 88, 101, 113, 132]
    for name, value, end in zip(names, row.split()[1:], ends):
        assert header[end - len(name) - 2:end] == "  " + name
        assert row[end - len(value) - 1:end] == " " + value
