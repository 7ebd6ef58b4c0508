"""The self-contained HTML report of an ``rlhfkit loop`` (``eval/html_page.py``, charts from
``eval/charts.py``), rewritten after every round, so it renders a loop still running."""

from __future__ import annotations

import time
from pathlib import Path

from rlhfkit.data.loading import read_jsonl
from rlhfkit.eval.charts import line_chart
from rlhfkit.eval.html_page import esc, num, prompt_cell, read_json, write_page
from rlhfkit.loop.layout import ROUND_STAGES, round_dir, rounds_on_disk

__all__ = ["render_loop_report"]


def _agreement_cell(labels_stage: dict) -> str:
    """A loop round's label agreement with gold, with the pairs it rests on when they were recorded."""
    share = num(labels_stage.get("agreement_with_gold"))
    if labels_stage.get("agreement_pairs") is None:  # rounds written before the counts were kept
        return share
    return f"{share} of {labels_stage['agreement_pairs']} ({labels_stage.get('gold_tie_pairs') or 0} ties)"


def render_loop_report(output_dir: str | Path, path: str | Path | None = None) -> Path:
    """Write the HTML report of the ``rlhfkit loop`` in ``output_dir`` (default
    ``output_dir/report.html``): per round the labels spent, the held-out gold score, the KL to
    the initial policy and the ensemble's held-out accuracy (table and plots against labels), how
    uncertain the selected pairs were against all candidates, the policy rounds' training curves
    one after another, the last round's labelled pairs, and the stages. Renders a partial loop."""
    out = Path(output_dir)
    path = Path(path) if path is not None else out / "report.html"
    state = read_json(out / "loop_state.json") or {}
    curve = read_json(out / "curve.json") or state.get("curve") or []
    rounds = rounds_on_disk(out)
    rec = {(r, s): (read_json(round_dir(out, r) / s / "stage.json") or {}) for r in rounds for s in ROUND_STAGES}
    outputs = {k: v.get("outputs") or {} for k, v in rec.items()}
    title = f"rlhfkit loop: {state.get('name', out.name)}"
    body = [
        f"<h1>{esc(title)}</h1>",
        f'<p class="muted">{esc(out)} · rendered {time.strftime("%Y-%m-%d %H:%M:%S")} · selection '
        f"{esc(state.get('selection', '?'))} (round 1 at random) · {len(curve) - 1 if curve else 0} of "
        f"{esc(state.get('rounds', '?'))} rounds done · status {esc(state.get('status', '?'))}"
        + (
            f" (round {esc(state.get('round'))}, stage {esc(state.get('stage'))})"
            if state.get("status") == "running"
            else ""
        )
        + "</p>",
    ]
    if curve:
        trs = []
        for p in curve:
            r = p["round"]
            sel, lab = outputs.get((r, "select"), {}), outputs.get((r, "labels"), {})
            unc = (
                f"{num(sel.get('mean_uncertainty_selected'), 4)} / {num(sel.get('mean_uncertainty_all'), 4)}"
                if sel.get("mean_uncertainty_selected") is not None
                else "–"
            )
            trs.append(
                f'<tr><td class="num">{r}</td><td>{esc(sel.get("method", "initial policy" if r == 0 else ""))}</td>'
                f'<td class="num">{p["labels"]}</td><td class="num">{num(p["gold"], 4)}</td>'
                f'<td class="num">{num(p.get("kl"))}</td><td class="num">{num(p.get("rm_accuracy"))}</td>'
                f'<td class="num">{unc}</td><td class="num">{_agreement_cell(lab)}</td></tr>'
            )
        body.append(
            "<h2>Rounds</h2><table><tr><th>round</th><th>selection</th><th>labels so far</th>"
            "<th>held-out gold</th><th>KL to the initial policy</th><th>ensemble held-out accuracy</th>"
            "<th>uncertainty: selected / all candidate pairs</th><th>labels agreeing with gold</th></tr>"
            + "".join(trs)
            + "</table>"
            '<p class="muted">Gold and KL: the policy after the round on the held-out prompts (KL summed over '
            "the response, nats). Accuracy: the ensemble mean on the gold-ordered held-out pairs. "
            "Uncertainty: the previous round's ensemble's disagreement about the pairs. Labels agreeing "
            "with gold: the share of the round's labels whose chosen response the gold judge scores higher, "
            "over the pairs it does not score equal (ties: pairs it scores equal, which no label can get right).</p>"
        )
        pts = curve
        plots = [
            line_chart(
                {"gold": [(p["labels"], p["gold"]) for p in pts]},
                "Held-out gold score vs labels",
                xlabel="labels",
                ylabel="mean gold score",
            ),
            line_chart(
                {"KL": [(p["labels"], p["kl"]) for p in pts if p.get("kl") is not None]},
                "KL to the initial policy vs labels",
                xlabel="labels",
                ylabel="nats / sequence",
            ),
            line_chart(
                {"accuracy": [(p["labels"], p["rm_accuracy"]) for p in pts if p.get("rm_accuracy") is not None]},
                "Ensemble accuracy on held-out pairs vs labels",
                xlabel="labels",
                ylabel="fraction",
                hline=0.5,
            ),
        ]
        unc = {
            k: [
                (r, outputs[(r, "select")][f"mean_uncertainty_{k}"])
                for r in rounds
                if outputs.get((r, "select"), {}).get(f"mean_uncertainty_{k}") is not None
            ]
            for k in ("selected", "all")
        }
        if unc["all"]:
            plots.append(
                line_chart(unc, "Uncertainty of the pairs sent to labelers", xlabel="round", ylabel="ensemble variance")
            )
        # the policy rounds one after another: steps counted across rounds
        series: dict[str, list[tuple[float, float]]] = {"reward (ensemble mean)": [], "gold": []}
        offset = 0
        for r in rounds:
            rows = read_jsonl(round_dir(out, r) / "policy" / "metrics.jsonl", tolerant=True)
            for row in rows:
                for key, name in (("reward", "reward (ensemble mean)"), ("gold", "gold")):
                    if key in row:
                        series[name].append((offset + row["step"], row[key]))
            offset += max((row.get("step", 0) for row in rows), default=0)
        plots.append(
            line_chart(series, "Policy optimisation, all rounds", xlabel="step (all rounds)", ylabel="mean score")
        )
        plots = [x for x in plots if x]
        body.append('<h2>Curves</h2><div class="plots">' + "".join(plots) + "</div>")
    last = max((r for r in rounds if (round_dir(out, r) / "labels" / "labels.jsonl").is_file()), default=None)
    if last is not None:
        labels = read_jsonl(round_dir(out, last) / "labels" / "labels.jsonl", tolerant=True)[:12]
        trs = [
            f'<tr><td class="prompt">{prompt_cell(x.get("prompt", ""))}</td><td>{esc(x.get("chosen", ""))}</td>'
            f'<td>{esc(x.get("rejected", ""))}</td><td class="num">{num(x.get("gold_chosen"))} / '
            f"{num(x.get('gold_rejected'))}</td></tr>"
            for x in labels
        ]
        body.append(
            f"<h2>Pairs labelled in round {last}</h2><table><tr><th>prompt</th><th>chosen</th>"
            "<th>rejected</th><th>gold chosen / rejected</th></tr>" + "".join(trs) + "</table>"
        )
    trs = []
    for r in rounds:
        for s in ROUND_STAGES:
            x = rec[(r, s)]
            if x:
                trs.append(
                    f"<tr><td>{r}</td><td>{s}</td><td>{esc(x.get('status'))}</td>"
                    f'<td class="num">{num(x.get("seconds"), 1)}</td><td class="num">{x.get("runs", "")}</td></tr>'
                )
    if trs:
        body.append(
            "<h2>Stages</h2><table><tr><th>round</th><th>stage</th><th>status</th><th>seconds</th>"
            "<th>runs</th></tr>" + "".join(trs) + "</table>"
        )
    return write_page(path, title, body)
