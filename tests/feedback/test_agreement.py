"""Agreement metrics against numbers worked out by hand / published worked examples."""

import math

import pytest

from rlhfkit.feedback.agreement import (
    cohen_kappa,
    krippendorff_alpha,
    pairwise_kappas,
    units_from_labels,
    units_from_matrix,
)

N = None
# K. Krippendorff, "Computing Krippendorff's Alpha-Reliability" (2011), section C: 4 observers,
# 12 units, values 1-5, missing data. Published: nominal 0.743, ordinal 0.815, interval 0.849.
K2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
    [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N],
]


@pytest.mark.parametrize("level,expected", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_krippendorff_2011_worked_example(level, expected):
    assert krippendorff_alpha(units_from_matrix(K2011), level) == pytest.approx(expected, abs=5e-4)


def test_krippendorff_nominal_by_hand():
    # units (a,a), (a,b), (b,b): coincidences o_aa=2, o_ab=o_ba=1, o_bb=2; n_a=n_b=3, n=6
    # D_o = 2/6; D_e = (3*3 + 3*3)/(6*5) = 18/30 -> alpha = 1 - (1/3)/(3/5) = 4/9
    assert krippendorff_alpha([["a", "a"], ["a", "b"], ["b", "b"]]) == pytest.approx(4 / 9)
    # perfect agreement with variation -> 1; a unit with one value is not pairable
    assert krippendorff_alpha([[1, 1], [2, 2, 2], [3]]) == pytest.approx(1.0)
    assert math.isnan(krippendorff_alpha([[1, 1], [1, 1]]))  # no variation: undefined


def test_cohen_kappa_by_hand():
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15. p_o = 35/50 = 0.7;
    # p_e = (25/50)(30/50) + (25/50)(20/50) = 0.3 + 0.2 = 0.5 -> kappa = 0.4
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    # systematic disagreement: p_o = 0, p_e = 0.5 -> -1
    assert cohen_kappa([1, 2, 1, 2], [2, 1, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(cohen_kappa(["x", "x"], ["x", "x"]))
    with pytest.raises(ValueError):
        cohen_kappa([1], [1, 2])


def test_pairwise_kappas_and_units_from_labels():
    labels = (
        [(i, "r1", v) for i, v in enumerate("yynn")] + [(i, "r2", v) for i, v in enumerate("ynnn")] + [(0, "r3", "y")]
    )
    ks = pairwise_kappas(labels)
    assert [(k["a"], k["b"], k["n"]) for k in ks] == [("r1", "r2", 4)]  # r3 shares only one item
    # p_o = 3/4; p_e = (2/4)(1/4) + (2/4)(3/4) = 1/2 -> kappa = 0.5
    assert ks[0]["kappa"] == pytest.approx(0.5)
    assert sorted(map(len, units_from_labels(labels))) == [2, 2, 2, 3]
