"""The report's simulated-labeler agreement says how many pairs it rests on: a gold tie is ordered
by the label noise alone and is left out of the figure, so 100% over 5 pairs must not read as
100% of 96."""

import json

from rlhfkit.pipeline.report import render_report


def _feedback_record(out, **outputs):
    d = out / "feedback"
    d.mkdir(parents=True)
    base = {"source": "simulated", "labeler": "vader", "label_noise": 0.5, "pairs": 80, "heldout_pairs": 16}
    (d / "stage.json").write_text(json.dumps({"status": "done", "outputs": {**base, **outputs}}), encoding="utf-8")


def test_agreement_names_the_pairs_it_is_computed_over_and_the_gold_ties(tmp_path):
    # the --quick run: 96 pairs, 5 with different gold scores, all 5 ordered as the gold judge orders them
    _feedback_record(tmp_path, labeler_agreement_with_gold=1.0, labeler_agreement_pairs=5, gold_tie_pairs=91)
    page = render_report(tmp_path).read_text(encoding="utf-8")
    assert (
        "80 training + 16 held-out pairs from simulated (simulated labelers: vader + noise 0.5, agreeing with "
        "the gold judge on 100.0% of the 5 pairs whose gold scores differ; 91 gold ties, ordered by the "
        "noise alone)"
    ) in page


def test_agreement_singular_and_no_decided_pair(tmp_path):
    _feedback_record(tmp_path / "a", labeler_agreement_with_gold=0.0, labeler_agreement_pairs=1, gold_tie_pairs=1)
    page = render_report(tmp_path / "a").read_text(encoding="utf-8")
    assert "on 0.0% of the 1 pair whose gold scores differ; 1 gold tie, ordered by the noise alone)" in page
    _feedback_record(tmp_path / "b", labeler_agreement_with_gold=None, labeler_agreement_pairs=0, gold_tie_pairs=96)
    page = render_report(tmp_path / "b").read_text(encoding="utf-8")
    assert "no pair with different gold scores to agree on; 96 gold ties" in page


def test_a_record_cached_before_the_counts_still_renders(tmp_path):
    _feedback_record(tmp_path, labeler_agreement_with_gold=0.75)
    page = render_report(tmp_path).read_text(encoding="utf-8")
    assert "agreeing with the gold judge on 75.0% of pairs)" in page
