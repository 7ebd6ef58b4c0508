"""The deployment simulation (benchmarks/deploy_sim.py): a real ``rlhfkit serve`` and a real
``rlhfkit learn run`` on loopback with simulated users; its counters agree with each other and
with the store, and its small pure parts are checked by hand."""

import importlib.util
import json
from pathlib import Path

import pytest

from .conftest import TINY

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def sim():
    spec = importlib.util.spec_from_file_location("deploy_sim", ROOT / "benchmarks" / "deploy_sim.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bootstrap_rating_thumbs_and_prompt_split_by_hand(sim):
    """Paired differences (0.1, 0.3, 0.2) have mean 0.2 and every resample's mean lies in
    [0.1, 0.3]; a rating is 3 at the centre, one step per scale, clipped to 1-5; a thumb is up
    only above the centre; the held-out prompts and the users' pool are disjoint and cover all."""
    d = sim.bootstrap_diff([0.0, 0.0, 0.0], [0.1, 0.3, 0.2], n_boot=200)
    assert d["mean"] == pytest.approx(0.2) and 0.1 - 1e-9 <= d["ci_low"] <= d["ci_high"] <= 0.3 + 1e-9 and d["n"] == 3
    assert [sim.rating_of(s, 0.5, 0.2) for s in (0.5, 0.69, 0.71, 0.1, 2.0, -3.0)] == [3, 4, 4, 1, 5, 1]
    assert (sim.thumbs_of(0.51, 0.5), sim.thumbs_of(0.5, 0.5)) == (True, False)
    held, pool = sim.split_prompts([f"p{i}" for i in range(10)], 3, seed=1)
    assert len(held) == 3 and not set(held) & set(pool) and sorted(held + pool) == sorted(f"p{i}" for i in range(10))
    assert sim.paired([1.0, None, 2.0], [1.5, 3.0, None]) == ([1.0], [1.5])


def test_latency_phases_split_idle_and_training_by_send_time(sim):
    """Before the first round (t0 < 10) is idle, inside a round (10-20, 30-40) is training,
    between rounds is neither; failed and non-chat requests are left out."""
    ev = [
        dict(kind="chat", ok=True, t0=t, latency=lat)
        for t, lat in ((1, 1.0), (5, 3.0), (12, 2.0), (25, 9.0), (35, 4.0))
    ]
    ev += [dict(kind="chat", ok=False, t0=2, latency=50.0), dict(kind="eval", ok=True, t0=3, latency=70.0)]
    out = sim.latency_phases(ev, [(10, 20), (30, 40)])
    assert out["idle"] == {"n": 2, "p50": 2.0, "p95": pytest.approx(1.0 + 0.95 * 2.0)}
    assert out["training"]["n"] == 2 and out["training"]["p50"] == 3.0


def test_a_short_simulation_counts_every_request_and_every_verdict(sim, tmp_path, tiny_base):
    """Three users (one flooding: each verdict sent 3 times) chat with serve (tiny model) while
    the learner runs beside it: every request is answered or counted failed (events.jsonl has one
    line each); the verdicts the users gave minus those the server refused are those it
    acknowledged (each with its own label id); the store holds one verdict per reply and kind (a
    repeat replaces the one before), so exactly the distinct (reply, kind) acknowledged, fewer
    than the flood's acknowledgements; the learner's round names the flooding user with its
    weight in its defence (the lineage's per-user figures); the report page is written."""
    learn_args = " ".join(
        f"--{k} {str(v).lower() if isinstance(v, bool) else v}"
        for k, v in {**TINY, "once": False, "min_feedback": 6, "poll_seconds": 0.5}.items()
    )
    out = tmp_path / "sim"
    s = sim.main(
        [
            "--model",
            str(tiny_base),
            "--users",
            "3",
            "--minutes",
            "0.5",
            "--adversarial_share",
            "0.34",
            "--adversarial_kinds",
            "flood",
            "--flood_repeat",
            "3",
            "--think_seconds",
            "0.2",
            "--eval_prompts",
            "4",
            "--max_tokens",
            "8",
            "--threads",
            "1",
            "--poll_seconds",
            "0.5",
            "--learn",
            learn_args,
            "--out",
            str(out),
        ]
    )
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    req = s["requests"]
    assert req["sent"] == len(events) == req["answered"] + req["failed"]
    assert req["failed"] == sum(1 for e in events if e["status"] is None or not 200 <= e["status"] < 300)
    evaluations = (out / "evals.jsonl").read_text().splitlines()  # at start, then once per version served
    assert req["by_kind"]["chat"] > 0 and req["by_kind"]["feedback"] > 0
    assert len(evaluations) >= 1 and req["by_kind"]["eval"] == 4 * len(evaluations)  # the 4 held-out prompts each time
    fb = s["feedback"]
    assert fb["verdicts_given"] > 0
    assert fb["verdicts_given"] - fb["verdicts_refused"] == fb["verdicts_acknowledged"] == fb["distinct_label_ids"]
    assert fb["in_store"] == fb["expected_in_store"] < fb["verdicts_acknowledged"]
    assert s["threads_still_running"] == 0
    flooder = [u for u, b in s["adversarial"].items() if b == "flood"]
    assert len(flooder) == 1 and len(s["adversarial"]) == 3
    assert s["lineage_users"], "the learner ran no round"
    first_round = next(iter(s["lineage_users"].values()))
    assert "weight" in first_round[flooder[0]]
    page = (out / "report.html").read_text()
    assert "<svg" in page and "Simulation" in page and f"{req['sent']} / {req['answered']} / {req['failed']}" in page


def test_kept_share_of_the_clean_gain_by_hand(tmp_path):
    """benchmarks/deploy_sim_repeat.py: clean runs gaining 0.2 and 0.4 on every prompt (mean 0.3),
    adversarial runs 0.15: ratio 0.5. Resampling the clean runs gives a mean of 0.2, 0.3 or 0.4
    with chances 1/4, 1/2, 1/4 (prompts within a run are all equal), so the ratio is 0.75, 0.5 or
    0.375 and its 2.5 / 97.5 percentiles are 0.375 and 0.75. Clean runs of -0.1 and +0.1 have a
    mean of 0: no ratio, and a quarter of the draws at -0.1: no bounds. A run's differences are
    last - v0 on the prompts answered in both evaluations."""
    spec = importlib.util.spec_from_file_location("deploy_sim_repeat", ROOT / "benchmarks" / "deploy_sim_repeat.py")
    rep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rep)
    out = rep.kept_share([[0.2, 0.2], [0.4, 0.4]], [[0.15, 0.15], [0.15, 0.15]], n_boot=4000)
    assert out["ratio"] == pytest.approx(0.5) and out["clean_runs"] == pytest.approx([0.2, 0.4])
    assert (out["ci_low"], out["ci_high"]) == (pytest.approx(0.375), pytest.approx(0.75))
    flat = rep.kept_share([[-0.1, -0.1], [0.1, 0.1]], [[0.1, 0.1]], n_boot=400)
    assert flat["ratio"] is None and flat["ci_low"] is None and flat["ci_high"] is None
    evals = tmp_path / "evals.jsonl"
    rows = [{"version": "v0", "per_prompt": [0.5, None, 0.1]}, {"version": "v2", "per_prompt": [0.75, 0.3, 0.35]}]
    evals.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert rep.run_diffs(evals) == pytest.approx([0.25, 0.25])
