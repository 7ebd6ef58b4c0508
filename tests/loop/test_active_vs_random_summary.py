"""The active-vs-random benchmark's summary (benchmarks/active_vs_random.py): seed means taken at
the same label count when an included earlier run lacks a point, and the label ratio on the
seed-averaged curves of the recorded six SmolLM2 loop seeds, derived by hand."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("active_vs_random", ROOT / "benchmarks" / "active_vs_random.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def curve(points):
    return [{"labels": n, "gold": g, "rm_accuracy": a} for n, g, a in points]


def test_seed_means_align_by_label_count_not_position(bench):
    """Seed A has ensemble accuracy at 64 and 128 labels, seed B only at 128 (64 unknown): the
    accuracy curves are compared at 128 alone, mean (0.6 + 0.8) / 2 = 0.7; zipping by position
    would have averaged A's 64-label point with B's 128-label point (0.55)."""
    a = {
        "seed": 0,
        "curves": {s: curve([(0, 0.1, None), (64, 0.2, 0.5), (128, 0.3, 0.6)]) for s in ("random", "uncertainty")},
    }
    b = {
        "seed": 1,
        "curves": {s: curve([(0, 0.1, None), (64, 0.2, None), (128, 0.3, 0.8)]) for s in ("random", "uncertainty")},
    }
    sm = bench.summarise([a, b], "rm_accuracy", seed=0, draws=50)
    assert sm["mean_curves"]["random"] == [{"labels": 128, "rm_accuracy": pytest.approx(0.7)}]
    gold = bench.summarise([a, b], "gold", seed=0, draws=50)  # every gold point is known
    assert [p["labels"] for p in gold["mean_curves"]["random"]] == [0, 64, 128]


def test_recorded_six_seeds_give_the_documented_ratio(bench):
    """Gold means over seeds 0-5 (docs/BENCHMARKS.md, sixth session): random reaches
    (0.324 + 0.239 + 0.229 + 0.426 + 0.075 + 0.248) / 6 = 0.256833 at 256 labels; active is at
    1.333 / 6 = 0.222167 at 192 and 1.734 / 6 = 0.289 at 256, so it reaches 0.256833 at
    192 + 64 * (0.256833 - 0.222167) / (0.289 - 0.222167) = 225.197 labels: ratio 256 / 225.197."""
    seeds = bench.included_seeds(str(ROOT / "benchmarks" / "results" / "loop_sentiment_seeds0-5.json"))
    assert [s["seed"] for s in seeds] == [0, 1, 2, 3, 4, 5]
    sm = bench.summarise(seeds, "gold", seed=0, draws=200)
    target = 1.541 / 6
    need = 192 + 64 * (target - 1.333 / 6) / (1.734 / 6 - 1.333 / 6)
    assert sm["ratio_of_mean_curves"]["target"] == pytest.approx(target)
    assert sm["ratio_of_mean_curves"]["ratio"] == pytest.approx(256 / need)
    assert sm["paired_difference"][-1]["mean"] == pytest.approx((1.734 - 1.541) / 6)
    # per seed, seed 4's random run ends below its start: no ratio; seed 1 never reaches: 0
    assert seeds[4]["ratio"] is None and seeds[1]["ratio"] == 0.0
