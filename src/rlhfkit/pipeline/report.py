"""The self-contained HTML report of a pipeline run: one file, its charts inline SVG
(``eval/charts.py``), no script and nothing fetched, so it opens offline (``eval/html_page.py``).

Contents, read from a finished (or partly finished) pipeline ``output_dir``:
- the stages with their status, time and fingerprint (``<stage>/stage.json``);
- headline numbers: reward-model held-out accuracy and ECE, win rate of the policy against the
  reference judged by the reward model and by the gold judge (bootstrap 95% intervals), gold score
  before / after with the gain's interval, KL(policy || reference) per sequence (``eval/eval.json``);
- training curves over steps (``policy/metrics.jsonl``: reward, gold score, KL for the online
  recipes; loss, implicit-reward accuracy and margin for DPO / KTO; the SFT and reward-model losses);
- win rates with their intervals; the reward model's reliability diagram (``reward/calibration.json``);
- held-out responses with every token shaded by its per-token shaped reward (``-beta * KL``, plus
  the reward model's score on the last token) and by its per-token KL (``eval/token_samples.jsonl``);
- a table of the reference's and the policy's replies to the same held-out prompts, right after
  the headline numbers, with their gold and reward-model scores (``eval/samples.jsonl``).

    from rlhfkit.pipeline.report import render_report
    render_report("outputs/pipeline_sentiment")        # -> outputs/pipeline_sentiment/report.html
"""

from __future__ import annotations

import time
from pathlib import Path

from rlhfkit.data.loading import read_jsonl
from rlhfkit.eval.charts import bar_chart, line_chart, reliability_chart
from rlhfkit.eval.html_page import ci_text, esc, finite, num, prompt_cell, read_json, signed, write_page
from rlhfkit.pipeline.stages import STAGES
from rlhfkit.rewards.judges import lower_is_better

__all__ = ["shade_tokens", "sample_table", "render_report"]


# ----------------------------------------------------------------------------- token shading
def _shade(value: float, scale: float, pos: tuple[int, int, int], neg: tuple[int, int, int]) -> str:
    a = 0.0 if scale <= 0 else min(abs(value) / scale, 1.0) * 0.85
    r, g, b = pos if value >= 0 else neg
    return f"rgba({r},{g},{b},{a:.2f})"


def _robust_scale(values: list[float]) -> float:
    """The 95th percentile of |value| (a few huge tokens, such as the score on the last one, do
    not wash out the rest), at least 1e-6."""
    v = sorted(abs(x) for x in values if finite(x))
    if not v:
        return 1e-6
    return max(v[min(len(v) - 1, int(0.95 * (len(v) - 1)))], 1e-6)


def shade_tokens(tokens: list[str], values: list[float], scale: float, kind: str) -> str:
    """Tokens as ``<span>``s with a background by value: reward green (+) / red (-), KL orange
    (policy more likely than the reference) / blue (less likely). Hover shows the number."""
    pos, neg = ((34, 160, 60), (214, 39, 40)) if kind == "reward" else ((255, 127, 14), (31, 119, 180))
    spans = []
    for t, v in zip(tokens, values):
        text = esc(t).replace("\n", "⏎")
        spans.append(
            f'<span class="tok {kind}" style="background:{_shade(v, scale, pos, neg)}" '
            f'title="{kind} {v:+.4f}">{text or "&#8203;"}</span>'
        )
    return "".join(spans)


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"


def _curve(rows: list[dict], key: str) -> list[tuple[float, float]]:
    return [(r["step"], r[key]) for r in rows if "step" in r and finite(r.get(key))]


def _reply(text: str, ended) -> str:
    """A reply for a table cell; one cut at the token budget (``ended`` false) ends in a marked …."""
    cut = (
        '<span class="cut" title="cut at the token budget (no end-of-turn token yet)"> …</span>'
        if ended is False
        else ""
    )
    return f'<div class="reply">{esc(text)}{cut}</div>'


def _change_cell(before, after, lower_better: bool = False, digits: int = 3) -> str:
    """``before → after`` shaded green where the change is an improvement, red where it is not."""
    if not (finite(before) and finite(after)):
        return f'<td class="num">{num(before, digits)} → {num(after, digits)}</td>'
    before, after = round(before, digits), round(after, digits)  # shaded only where the shown numbers differ
    better = (after < before) if lower_better else (after > before)
    cls = "better" if better else ("worse" if after != before else "")
    return f'<td class="num {cls}">{num(before, digits)} → {num(after, digits)}</td>'


def sample_table(
    samples: list[dict], gold_judge: str = "", sampling: dict | None = None, pool: str | None = None
) -> str:
    """The held-out prompts in evaluation order (not chosen), each with the reference's and the
    policy's reply and their scores."""
    how = ""
    if sampling:
        rendering = (
            "each sent as one user turn through the policy's chat template"
            if sampling.get("chat_template")
            else "each given as plain text to continue"
        )
        nucleus = f", top-p {sampling['top_p']:g}" if sampling.get("top_p", 1) < 1 else ""
        topk = f", top-k {sampling['top_k']}" if sampling.get("top_k") else ""
        how = (
            f"Prompts{f' ({esc(pool)})' if pool else ''}: {rendering}; replies sampled at temperature "
            f"{sampling.get('temperature', 1):g}{nucleus}{topk}, at most {sampling.get('max_new_tokens')} tokens "
            "(… marks a reply cut there). "
        )
    lower = lower_is_better(gold_judge) if gold_judge else False
    trs = []
    for x in samples:
        trs.append(
            f'<tr><td class="ask">{esc(x.get("prompt", ""))}</td>'
            f"<td>{_reply(x.get('reference', ''), x.get('reference_ended'))}</td>"
            f"<td>{_reply(x.get('policy', ''), x.get('policy_ended'))}</td>"
            + (_change_cell(x.get("gold_reference"), x.get("gold_policy"), lower) if gold_judge else "")
            + _change_cell(x.get("judge_reference"), x.get("judge_policy"))
            + f'<td class="num">{num(x.get("kl"))}</td></tr>'
        )
    gold_th = f"<th>gold ({esc(gold_judge)})<br>before → after</th>" if gold_judge else ""
    return (
        "<h2>Held-out replies: before (reference) and after (policy)</h2>"
        f'<p class="muted">{how}The first {len(samples)} held-out prompts in evaluation order, not chosen; '
        "one sample of each model. Green: the policy's reply scores better.</p>"
        '<table class="samples"><tr><th>prompt</th><th>reference reply (before)</th><th>policy reply (after)</th>'
        f"{gold_th}<th>reward model<br>before → after</th><th>KL (nats)</th></tr>" + "".join(trs) + "</table>"
    )


def render_report(output_dir: str | Path, path: str | Path | None = None, summary: dict | None = None) -> Path:
    """Write the HTML report of the pipeline run in ``output_dir`` to ``path`` (default
    ``output_dir/report.html``) and return its path. Missing parts (a stage not run yet, no SFT)
    are left out, so it renders from a partial run too."""
    out = Path(output_dir)
    path = Path(path) if path is not None else out / "report.html"
    summary = summary or (read_json(out / "pipeline.json") or {})
    records = {p.parent.name: read_json(p) for p in sorted(out.glob("*/stage.json"))}
    ev = read_json(out / "eval" / "eval.json") or {}
    calib = read_json(out / "reward" / "calibration.json") or {}
    policy_rows = read_jsonl(out / "policy" / "metrics.jsonl", tolerant=True)
    algorithm = summary.get("algorithm") or ((records.get("policy") or {}).get("outputs") or {}).get("algorithm", "")
    title = summary.get("title") or f"rlhfkit pipeline: {summary.get('name', out.name)}"
    body: list[str] = [
        f"<h1>{esc(title)}</h1>",
        f'<p class="muted">{esc(out)} · rendered {time.strftime("%Y-%m-%d %H:%M:%S")}'
        + (f" · policy optimisation: {esc(algorithm)}" if algorithm else "")
        + (f" · initial policy: {esc(summary['init'])}" if summary.get("init") else "")
        + (" · <b>quick preset</b> (tiny model, few steps: a smoke run, not a result)" if summary.get("quick") else "")
        + "</p>",
    ]

    # headline numbers
    rows = []
    fb = (records.get("feedback") or {}).get("outputs") or {}
    if fb:
        desc = f"{fb.get('pairs')} training + {fb.get('heldout_pairs')} held-out pairs from {fb.get('source')}"
        if fb.get("labeler_agreement_pairs") is not None:  # the figure with the pairs it rests on
            n, ties = fb["labeler_agreement_pairs"], fb.get("gold_tie_pairs") or 0
            agreement = (
                f"agreeing with the gold judge on {fb['labeler_agreement_with_gold']:.1%} of the {n} "
                + ("pair whose gold scores differ" if n == 1 else "pairs whose gold scores differ")
                if n
                else "no pair with different gold scores to agree on"
            )
            desc += (
                f" (simulated labelers: {fb.get('labeler')} + noise {fb.get('label_noise')}, {agreement}; "
                f"{ties} gold {'tie' if ties == 1 else 'ties'}, ordered by the noise alone)"
            )
        elif fb.get("labeler_agreement_with_gold") is not None:  # a record written before the counts were kept
            desc += (
                f" (simulated labelers: {fb.get('labeler')} + noise {fb.get('label_noise')}, agreeing with the "
                f"gold judge on {fb['labeler_agreement_with_gold']:.1%} of pairs)"
            )
        rows.append(("feedback", desc))
    if calib:
        rows.append(
            (
                "reward model, held-out pairs",
                f"accuracy {num(calib.get('accuracy'))}, ECE {num(calib.get('ece'))}, "
                f"mean margin {num(calib.get('mean_margin'))} ({calib.get('pairs')} pairs)",
            )
        )
    if ev.get("win_rate"):
        rows.append(("win rate vs reference (judge: reward model)", ci_text(ev["win_rate"])))
    gold = ev.get("gold")
    if gold:
        direction = "lower is better" if lower_is_better(gold["judge"]) else ""
        rows.append(
            (
                f"gold judge ({esc(gold['judge'])}{', ' + direction if direction else ''}): before → after",
                f"{num(gold['reference']['mean'], 4)} → {num(gold['policy']['mean'], 4)}; gain "
                f"{signed(gold['gain']['mean'], 4)} [{signed(gold['gain']['ci_low'], 4)}, "
                f"{signed(gold['gain']['ci_high'], 4)}]",
            )
        )
        rows.append((f"win rate vs reference (judge: {esc(gold['judge'])})", ci_text(gold.get("win_rate"))))
    if ev.get("kl"):
        rows.append(
            (
                "KL(policy ‖ reference), nats / sequence",
                ci_text(ev["kl"], "mean")
                + (f"; k3 estimate (never negative) {ci_text(ev['kl_k3'], 'mean')}" if ev.get("kl_k3") else ""),
            )
        )
    if ev:
        rows.append(
            (
                "held-out prompts",
                f"{ev.get('prompts')} (response length: policy {num(ev.get('policy_length'), 1)}, "
                f"reference {num(ev.get('reference_length'), 1)} tokens)",
            )
        )
    if rows:
        body.append(
            '<h2>Results</h2><table class="headline">'
            + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
            + "</table>"
            + '<p class="muted">Intervals: percentile bootstrap 95% over held-out prompts (pairs for the reward '
            "model). Win rates count ties as ½. The reference is the policy that optimisation started from.</p>"
        )

    # reference vs policy replies: what a reader looks at first
    samples = read_jsonl(out / "eval" / "samples.jsonl", tolerant=True)
    if samples:
        body.append(
            sample_table(
                samples[: int(summary.get("n_sample_rows", 12))],
                gold["judge"] if gold else "",
                summary.get("sampling"),
                summary.get("prompts"),
            )
        )

    # training curves
    plots = []
    if policy_rows and any("reward" in r for r in policy_rows):
        plots.append(
            line_chart(
                {"reward (RM score)": _curve(policy_rows, "reward")},
                "Reward during training",
                ylabel="mean reward-model score",
            )
        )
        if any("gold" in r for r in policy_rows):
            plots.append(
                line_chart(
                    {"gold": _curve(policy_rows, "gold")},
                    "Gold judge during training",
                    ylabel=f"mean gold score ({summary.get('gold', 'gold')})",
                )
            )
        if any("kl" in r for r in policy_rows):
            plots.append(
                line_chart(
                    {"KL": _curve(policy_rows, "kl")}, "KL to the reference during training", ylabel="nats / sequence"
                )
            )
    elif policy_rows:
        plots.append(
            line_chart(
                {
                    "loss": _curve(policy_rows, "loss"),
                    **(
                        {"held-out loss": _curve(policy_rows, "eval_loss")}
                        if any("eval_loss" in r for r in policy_rows)
                        else {}
                    ),
                },
                f"{algorithm or 'policy'} loss",
                ylabel="loss",
            )
        )
        acc = {k: _curve(policy_rows, k) for k in ("accuracy", "eval_accuracy") if any(k in r for r in policy_rows)}
        if acc:
            plots.append(line_chart(acc, "Implicit-reward accuracy", ylabel="fraction of pairs", hline=0.5))
        margin = {k: _curve(policy_rows, k) for k in ("margin", "eval_margin") if any(k in r for r in policy_rows)}
        if margin:
            plots.append(line_chart(margin, "Implicit-reward margin (chosen − rejected)", ylabel="beta · log-ratio"))
    for stage, label in (("sft", "SFT"), ("reward", "Reward model")):
        rs = read_jsonl(out / stage / "metrics.jsonl", tolerant=True)
        if rs:
            series = {"train loss": _curve(rs, "loss")}
            if any("eval_loss" in r for r in rs):
                series["held-out loss"] = _curve(rs, "eval_loss")
            plots.append(line_chart(series, f"{label} training loss", ylabel="loss"))
    plots = [p for p in plots if p]
    if plots:
        body.append('<h2>Training</h2><div class="plots">' + "".join(plots) + "</div>")

    # evaluation plots
    eplots = []
    bars = []
    if ev.get("win_rate"):
        w = ev["win_rate"]
        bars.append(("reward model", w["win_rate"], w.get("ci_low"), w.get("ci_high")))
    if gold and gold.get("win_rate"):
        w = gold["win_rate"]
        bars.append((f"gold ({gold['judge']})", w["win_rate"], w.get("ci_low"), w.get("ci_high")))
    if bars:
        eplots.append(
            bar_chart(bars, "Win rate of the policy vs the reference", "win rate (ties ½)", hline=0.5, yr=(0, 1))
        )
    if gold:
        g = [
            (
                "before (reference)",
                gold["reference"]["mean"],
                gold["reference"].get("ci_low"),
                gold["reference"].get("ci_high"),
            ),
            ("after (policy)", gold["policy"]["mean"], gold["policy"].get("ci_low"), gold["policy"].get("ci_high")),
        ]
        eplots.append(bar_chart(g, f"Gold judge ({gold['judge']}) before / after", "mean score"))
    if calib.get("bins"):
        eplots.append(reliability_chart(calib["bins"], f"Reward-model calibration (ECE {num(calib.get('ece'))})"))
    eplots = [p for p in eplots if p]
    if eplots:
        body.append('<h2>Evaluation</h2><div class="plots">' + "".join(eplots) + "</div>")

    # per-token shading
    toks = read_jsonl(out / "eval" / "token_samples.jsonl", tolerant=True)
    if toks:
        r_scale = _robust_scale([v for t in toks for v in t["reward"]])
        k_scale = _robust_scale([v for t in toks for v in t["kl"]])
        beta = toks[0].get("kl_coef")
        body.append(
            "<h2>What the policy learned, token by token</h2>"
            f'<p class="muted">Held-out prompts, one response each from the trained policy. Per token t: '
            f"KL<sub>t</sub> = log π(y<sub>t</sub>) − log π<sub>ref</sub>(y<sub>t</sub>); shaped reward "
            f"r<sub>t</sub> = −β·KL<sub>t</sub> (β = {esc(beta)}) plus the reward model's score on the last token "
            f"(the per-token reward PPO learns from; GRPO and RLOO score whole replies, so for them the "
            f"shading shows where the KL and the score fall). Shades saturate at the 95th percentile of |value| "
            f"(reward {_fmt(r_scale)}, KL {_fmt(k_scale)}); hover a token for its number.</p>"
            '<p class="legend"><span style="background:rgba(34,160,60,.6)">reward +</span>'
            '<span style="background:rgba(214,39,40,.6)">reward −</span>'
            '<span style="background:rgba(255,127,14,.6)">KL + (policy more likely than reference)</span>'
            '<span style="background:rgba(31,119,180,.6)">KL − (less likely)</span></p>'
        )
        trs = []
        for t in toks:
            gold_cell = num(t.get("gold")) if t.get("gold") is not None else "–"
            trs.append(
                f'<tr><td class="prompt">{prompt_cell(t["prompt"])}</td>'
                f"<td><div>{shade_tokens(t['tokens'], t['reward'], r_scale, 'reward')}</div>"
                f'<div style="margin-top:4px">{shade_tokens(t["tokens"], t["kl"], k_scale, "kl")}</div></td>'
                f'<td class="num">{num(t["score"])}</td><td class="num">{gold_cell}</td>'
                f'<td class="num">{num(t["seq_kl"])}</td></tr>'
            )
        body.append(
            "<table><tr><th>prompt</th><th>response (top: per-token reward, bottom: per-token KL)</th>"
            "<th>RM score</th><th>gold</th><th>KL (nats)</th></tr>" + "".join(trs) + "</table>"
        )

    # stages
    trs = []
    for name in STAGES:
        rec = records.get(name)
        if rec is None:
            continue
        # the report stage is still running while it writes this page
        status = "writing this page" if name == "report" and rec.get("status") == "running" else rec.get("status")
        trs.append(
            f'<tr><td>{name}</td><td>{esc(status)}</td><td class="num">{num(rec.get("seconds"), 1)}</td>'
            f'<td class="num">{num(rec.get("cpu_seconds"), 1)}</td>'
            f'<td class="num">{rec.get("runs", "")}</td><td><code>{esc(str(rec.get("fingerprint", ""))[:12])}</code></td></tr>'
        )
    if trs:
        body.append(
            "<h2>Stages</h2><table><tr><th>stage</th><th>status</th><th>seconds (last run)</th><th>CPU seconds</th><th>runs</th>"
            "<th>fingerprint</th></tr>" + "".join(trs) + "</table>"
            '<p class="muted">A stage reruns when its settings or an input stage\'s fingerprint change; '
            "otherwise it is read from its folder.</p>"
        )

    return write_page(path, title, body)
