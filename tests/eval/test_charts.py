"""The reports' charts (``eval/charts.py``): the same input gives the same bytes, the SVG holds
its title, axis labels, legend and one point per finite value, nothing in it refers to anything
(so the page stays one self-contained file), and values that are not finite numbers are left
out rather than breaking the chart or the page."""

import json
import math
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

from rlhfkit.eval.charts import bar_chart, line_chart, reliability_chart
from rlhfkit.rewards.metrics import reliability_bins
from rlhfkit.pipeline.report import render_report

SVG = "{http://www.w3.org/2000/svg}"
SERIES = {"train loss": [(1, 0.69), (2, 0.5), (3, 0.41)], "held-out loss": [(1, 0.7), (3, 0.45)]}
REFERENCES = r"<script|<link|<img|src=|href=|url\(|@import"


def _points(svg: str, i: int) -> list:
    group = ET.fromstring(svg).find(f".//{SVG}g[@id='points-{i}']")
    return [] if group is None else group.findall(f"{SVG}path")


def _texts(svg: str) -> list[str]:
    return [t.text for t in ET.fromstring(svg).iter(f"{SVG}text")]


def test_a_line_chart_is_the_same_bytes_for_the_same_input_and_holds_its_data():
    svg = line_chart(SERIES, "Reward model training loss", ylabel="loss", hline=0.5)
    assert svg == line_chart(SERIES, "Reward model training loss", ylabel="loss", hline=0.5)
    assert svg.startswith("<svg ") and svg.endswith("</svg>\n")  # no XML prolog inside a page
    texts = _texts(svg)
    for text in ("Reward model training loss", "step", "loss", "train loss", "held-out loss"):
        assert text in texts, text
    assert len(_points(svg, 0)) == 3 and len(_points(svg, 1)) == 2
    assert 'aria-label="Reward model training loss"' in svg
    assert not re.search(REFERENCES, svg)


def test_a_chart_is_the_same_bytes_in_another_process():
    """No date, random id or process-dependent order in the SVG: a fresh interpreter draws the
    same bytes."""
    code = (
        "import sys, json; from rlhfkit.eval.charts import line_chart, bar_chart; "
        "s = {k: [tuple(p) for p in v] for k, v in json.loads(sys.argv[1]).items()}; "
        "sys.stdout.write(line_chart(s, 'T', ylabel='loss') + bar_chart([('a', 0.6, 0.4, 0.8)], 'W'))"
    )
    here = line_chart(SERIES, "T", ylabel="loss") + bar_chart([("a", 0.6, 0.4, 0.8)], "W")
    there = subprocess.run(
        [sys.executable, "-c", code, json.dumps(SERIES)], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert there == here


def test_bars_and_the_reliability_diagram_hold_their_labels_and_values():
    bars = bar_chart([("reward model", 0.961, 0.93, 0.99), ("gold (vader)", 0.867, 0.8, 0.92)], "Win rate", "win rate")
    texts = _texts(bars)
    assert {"Win rate", "win rate", "reward model", "gold (vader)", "0.961", "0.867"} <= set(texts)
    bins = reliability_bins([0.05, 0.15, 0.18, 0.95], [0, 1, 0, 1], n_bins=10)
    assert [b["n"] for b in bins] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 1]
    assert bins[1]["p_mean"] == (0.15 + 0.18) / 2 and bins[1]["acc"] == 0.5
    diagram = reliability_chart(bins, "Reward-model calibration (ECE 0.100)")
    assert {"Reward-model calibration (ECE 0.100)", "predicted P(first preferred)"} <= set(_texts(diagram))
    assert not re.search(REFERENCES, bars + diagram)


def test_values_that_are_not_finite_are_left_out():
    nan, inf = math.nan, math.inf
    svg = line_chart({"reward": [(1, 0.2), (2, nan), (3, inf), (4, -inf), (5, 0.4)], "kl": [(1, nan)]}, "Reward")
    assert len(_points(svg, 0)) == 2 and _points(svg, 1) == []
    assert not any(t and re.search(r"nan|inf", t, re.I) for t in _texts(svg))
    assert line_chart({"reward": [(1, nan), (inf, 2.0)]}, "Reward") == ""
    bars = bar_chart([("policy", 0.6, nan, inf), ("reference", nan, 0.1, 0.2)], "Gold")
    assert "policy" in _texts(bars) and "reference" not in _texts(bars)


def test_a_report_with_non_finite_values_in_its_curves_still_renders(tmp_path):
    (tmp_path / "policy").mkdir()
    rows = [{"step": 1, "reward": 0.1, "kl": 0.0}, {"step": 2, "reward": math.nan, "kl": math.inf}]
    rows.append({"step": 3, "reward": 0.3, "kl": 0.5})
    (tmp_path / "policy" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    page = render_report(tmp_path).read_text(encoding="utf-8")
    assert "Reward during training" in page and "KL to the reference during training" in page
    assert page.count("<svg") == 2 and not re.search(r">\s*-?(nan|inf)\s*<", page, re.I)


def test_an_interval_a_rounding_step_past_its_value_and_dollar_signs_still_draw():
    """A bar whose interval ends a float step on the wrong side of its value (a bootstrap of sums
    against the plain mean) draws with a zero-length whisker, and a label holding two "$" (a
    judge's or prompt's text) is drawn as text, not parsed as mathtext."""
    v = 0.1 + 0.2
    bars = bar_chart([("gold ($x$ and $)", v, v + 1e-12, v + 0.1)], "Cost in $ and $$", "score $")
    texts = _texts(bars)
    assert {"gold ($x$ and $)", "Cost in $ and $$", "score $"} <= set(texts)
