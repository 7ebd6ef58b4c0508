"""A self-contained HTML report of a pipeline run: one file, inline SVG plots, no external assets
and no plotting dependency (the SVG is written here, so the report needs nothing beyond the core
install and opens offline).

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

    from rlhfkit.eval.report import render_report
    render_report("outputs/pipeline_sentiment")        # -> outputs/pipeline_sentiment/report.html
"""

from __future__ import annotations

import html
import json
import math
import time
from pathlib import Path
from typing import Sequence

from rlhfkit.data.loading import read_jsonl
from rlhfkit.rewards.judges import lower_is_better

__all__ = [
    "reliability_bins",
    "line_chart",
    "bar_chart",
    "reliability_chart",
    "shade_tokens",
    "render_report",
    "render_loop_report",
]


PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"]


def reliability_bins(probs: Sequence[float], labels: Sequence[float], n_bins: int = 10) -> list[dict]:
    """Equal-width bins of predicted probability: ``{"lo", "hi", "n", "p_mean", "acc"}`` per bin
    (``p_mean`` / ``acc`` are None for an empty bin): the points of a reliability diagram, whose
    weighted gaps ``sum n_b |acc_b - p_b| / N`` are the ECE (Guo et al. 2017)."""
    out = []
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        sel = [(p, y) for p, y in zip(probs, labels) if min(int(p * n_bins), n_bins - 1) == b]
        n = len(sel)
        out.append(
            {
                "lo": lo,
                "hi": hi,
                "n": n,
                "p_mean": sum(p for p, _ in sel) / n if n else None,
                "acc": sum(y for _, y in sel) / n if n else None,
            }
        )
    return out


# ----------------------------------------------------------------------------- SVG plots
def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _nice_range(lo: float, hi: float) -> tuple[float, float]:
    if lo == hi:
        pad = abs(lo) * 0.1 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.06
    return lo - pad, hi + pad


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo
    raw = span / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    ticks, t = [], start
    while t <= hi + 1e-12 and len(ticks) < 12:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"


class _Frame:
    """Axes of one SVG plot: data -> pixel transforms, grid, tick labels, titles."""

    def __init__(self, title: str, xlabel: str, ylabel: str, xr, yr, width=430, height=270):
        self.w, self.h = width, height
        self.l, self.r, self.t, self.b = 58, 14, 30, 42
        self.xr, self.yr = xr, yr
        self.parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">',
            f'<rect width="{width}" height="{height}" fill="white"/>',
            f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="13" font-weight="bold">{_esc(title)}</text>',
            f'<text x="{width / 2}" y="{height - 6}" text-anchor="middle" font-size="11">{_esc(xlabel)}</text>',
            f'<text x="13" y="{height / 2}" text-anchor="middle" font-size="11" '
            f'transform="rotate(-90 13 {height / 2})">{_esc(ylabel)}</text>',
        ]
        for t in _ticks(*yr):
            y = self.y(t)
            self.parts.append(
                f'<line x1="{self.l}" x2="{width - self.r}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>'
                f'<text x="{self.l - 4}" y="{y + 3.5:.1f}" text-anchor="end" font-size="10">{_fmt(t)}</text>'
            )
        self.parts.append(
            f'<rect x="{self.l}" y="{self.t}" width="{width - self.l - self.r}" '
            f'height="{height - self.t - self.b}" fill="none" stroke="#888"/>'
        )

    def x(self, v: float) -> float:
        lo, hi = self.xr
        return self.l + (v - lo) / (hi - lo) * (self.w - self.l - self.r)

    def y(self, v: float) -> float:
        lo, hi = self.yr
        return self.h - self.b - (v - lo) / (hi - lo) * (self.h - self.t - self.b)

    def x_ticks(self) -> None:
        for t in _ticks(*self.xr):
            self.parts.append(
                f'<text x="{self.x(t):.1f}" y="{self.h - self.b + 13}" text-anchor="middle" '
                f'font-size="10">{_fmt(t)}</text>'
            )

    def svg(self) -> str:
        return "".join(self.parts) + "</svg>"


def line_chart(
    series: dict[str, list[tuple[float, float]]],
    title: str,
    xlabel: str = "step",
    ylabel: str = "",
    hline: float | None = None,
) -> str:
    """An SVG line chart, one polyline (with points) per named series."""
    pts = [(x, y) for s in series.values() for x, y in s if _finite(x) and _finite(y)]
    if not pts:
        return ""
    xs, ys = [p[0] for p in pts], [p[1] for p in pts] + ([hline] if hline is not None else [])
    f = _Frame(title, xlabel, ylabel, _nice_range(min(xs), max(xs)), _nice_range(min(ys), max(ys)))
    f.x_ticks()
    if hline is not None:
        f.parts.append(
            f'<line x1="{f.l}" x2="{f.w - f.r}" y1="{f.y(hline):.1f}" y2="{f.y(hline):.1f}" '
            f'stroke="#999" stroke-dasharray="4 3"/>'
        )
    for i, (name, s) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        s = [(x, y) for x, y in s if _finite(x) and _finite(y)]
        if not s:
            continue
        path = " ".join(f"{f.x(x):.1f},{f.y(y):.1f}" for x, y in s)
        f.parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.6"/>')
        if len(s) <= 80:
            f.parts += [
                f'<circle cx="{f.x(x):.1f}" cy="{f.y(y):.1f}" r="2.2" fill="{color}"><title>{_esc(name)} '
                f"step {_fmt(x)}: {_fmt(y)}</title></circle>"
                for x, y in s
            ]
        if len(series) > 1:
            f.parts.append(
                f'<text x="{f.l + 8}" y="{f.t + 14 + 13 * i}" font-size="11" fill="{color}">{_esc(name)}</text>'
            )
    return f.svg()


def bar_chart(
    items: list[tuple[str, float, float | None, float | None]],
    title: str,
    ylabel: str = "",
    hline: float | None = None,
    yr: tuple[float, float] | None = None,
) -> str:
    """An SVG bar chart with error bars: ``(label, value, ci_low, ci_high)`` per bar."""
    items = [it for it in items if _finite(it[1])]
    if not items:
        return ""
    vals = (
        [v for _, v, lo, hi in items for v in (v, lo, hi) if _finite(v)]
        + [0.0]
        + ([hline] if hline is not None else [])
    )
    f = _Frame(title, "", ylabel, (0, len(items)), yr or _nice_range(min(vals), max(vals)))
    if hline is not None:
        f.parts.append(
            f'<line x1="{f.l}" x2="{f.w - f.r}" y1="{f.y(hline):.1f}" y2="{f.y(hline):.1f}" '
            f'stroke="#999" stroke-dasharray="4 3"/>'
        )
    for i, (label, v, lo, hi) in enumerate(items):
        color = PALETTE[i % len(PALETTE)]
        x0, x1 = f.x(i + 0.2), f.x(i + 0.8)
        y0, y1 = f.y(0 if f.yr[0] <= 0 <= f.yr[1] else f.yr[0]), f.y(v)
        f.parts.append(
            f'<rect x="{x0:.1f}" y="{min(y0, y1):.1f}" width="{x1 - x0:.1f}" height="{abs(y1 - y0):.1f}" '
            f'fill="{color}" fill-opacity="0.75"><title>{_esc(label)}: {_fmt(v)}</title></rect>'
        )
        if _finite(lo) and _finite(hi):
            xc = (x0 + x1) / 2
            f.parts.append(
                f'<line x1="{xc:.1f}" x2="{xc:.1f}" y1="{f.y(lo):.1f}" y2="{f.y(hi):.1f}" stroke="black" stroke-width="1.5"/>'
                f'<line x1="{xc - 6:.1f}" x2="{xc + 6:.1f}" y1="{f.y(lo):.1f}" y2="{f.y(lo):.1f}" stroke="black"/>'
                f'<line x1="{xc - 6:.1f}" x2="{xc + 6:.1f}" y1="{f.y(hi):.1f}" y2="{f.y(hi):.1f}" stroke="black"/>'
            )
        f.parts.append(
            f'<text x="{(x0 + x1) / 2:.1f}" y="{f.h - f.b + 13}" text-anchor="middle" font-size="10">{_esc(label)}</text>'
            # the value at the bar's left edge: centred, it sat on the error bar
            f'<text x="{x0 + 2:.1f}" y="{min(y0, y1) - 4:.1f}" text-anchor="start" font-size="10">{_fmt(v)}</text>'
        )
    return f.svg()


def reliability_chart(bins: list[dict], title: str = "Reward-model calibration") -> str:
    """Reliability diagram: observed frequency that the first response is preferred against the
    mean predicted ``sigmoid(r_first - r_second)`` per bin; the diagonal is perfect calibration.
    Bar widths are the bins, their shade the number of pairs."""
    f = _Frame(title, "predicted P(first preferred)", "observed frequency", (0, 1), (0, 1))
    f.x_ticks()
    f.parts.append(
        f'<line x1="{f.x(0):.1f}" y1="{f.y(0):.1f}" x2="{f.x(1):.1f}" y2="{f.y(1):.1f}" '
        f'stroke="#999" stroke-dasharray="4 3"/>'
    )
    n_max = max((b["n"] for b in bins), default=0) or 1
    pts = []
    for b in bins:
        if not b["n"]:
            continue
        x0, x1 = f.x(b["lo"]) + 1, f.x(b["hi"]) - 1
        alpha = 0.15 + 0.6 * b["n"] / n_max
        f.parts.append(
            f'<rect x="{x0:.1f}" y="{f.y(b["acc"]):.1f}" width="{x1 - x0:.1f}" '
            f'height="{f.y(0) - f.y(b["acc"]):.1f}" fill="#1f77b4" fill-opacity="{alpha:.2f}">'
            f"<title>[{b['lo']:.1f}, {b['hi']:.1f}): {b['n']} pairs, observed {b['acc']:.3f}, "
            f"predicted {b['p_mean']:.3f}</title></rect>"
        )
        pts.append((b["p_mean"], b["acc"]))
    if pts:
        f.parts.append(
            '<polyline points="'
            + " ".join(f"{f.x(p):.1f},{f.y(a):.1f}" for p, a in pts)
            + '" fill="none" stroke="#d62728" stroke-width="1.6"/>'
        )
        f.parts += [f'<circle cx="{f.x(p):.1f}" cy="{f.y(a):.1f}" r="2.5" fill="#d62728"/>' for p, a in pts]
    return f.svg()


# ----------------------------------------------------------------------------- token shading
def _shade(value: float, scale: float, pos: tuple[int, int, int], neg: tuple[int, int, int]) -> str:
    a = 0.0 if scale <= 0 else min(abs(value) / scale, 1.0) * 0.85
    r, g, b = pos if value >= 0 else neg
    return f"rgba({r},{g},{b},{a:.2f})"


def _robust_scale(values: list[float]) -> float:
    """The 95th percentile of |value| (a few huge tokens, such as the score on the last one, do
    not wash out the rest), at least 1e-6."""
    v = sorted(abs(x) for x in values if _finite(x))
    if not v:
        return 1e-6
    return max(v[min(len(v) - 1, int(0.95 * (len(v) - 1)))], 1e-6)


def shade_tokens(tokens: list[str], values: list[float], scale: float, kind: str) -> str:
    """Tokens as ``<span>``s with a background by value: reward green (+) / red (-), KL orange
    (policy more likely than the reference) / blue (less likely). Hover shows the number."""
    pos, neg = ((34, 160, 60), (214, 39, 40)) if kind == "reward" else ((255, 127, 14), (31, 119, 180))
    spans = []
    for t, v in zip(tokens, values):
        text = _esc(t).replace("\n", "⏎")
        spans.append(
            f'<span class="tok {kind}" style="background:{_shade(v, scale, pos, neg)}" '
            f'title="{kind} {v:+.4f}">{text or "&#8203;"}</span>'
        )
    return "".join(spans)


# ----------------------------------------------------------------------------- report
def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _curve(rows: list[dict], key: str) -> list[tuple[float, float]]:
    return [(r["step"], r[key]) for r in rows if "step" in r and _finite(r.get(key))]


def _prompt(text: str, limit: int = 240) -> str:
    """A prompt for a table cell: its last ``limit`` characters (the end of a dialogue is the turn
    being answered), the full text on hover."""
    short = text if len(text) <= limit else "…" + text[-limit:]
    return f'<span title="{_esc(text)}">{_esc(short)}</span>'


def _num(v, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if _finite(v) else "–"


def _signed(v, digits: int = 3) -> str:
    """A change, with its sign (a gain of +0.28, an interval end of -0.01)."""
    return f"{v:+.{digits}f}" if _finite(v) else "–"


def _agreement_cell(labels_stage: dict) -> str:
    """A loop round's label agreement with gold, with the pairs it rests on when they were recorded."""
    share = _num(labels_stage.get("agreement_with_gold"))
    if labels_stage.get("agreement_pairs") is None:  # rounds written before the counts were kept
        return share
    return f"{share} of {labels_stage['agreement_pairs']} ({labels_stage.get('gold_tie_pairs') or 0} ties)"


def _ci(d: dict | None, key: str = "win_rate") -> str:
    if not d:
        return "–"
    return f"{_num(d.get(key))} [{_num(d.get('ci_low'))}, {_num(d.get('ci_high'))}]"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif,"Apple Color Emoji","Segoe UI Emoji","Noto Color Emoji";margin:24px auto;max-width:1180px;color:#222;padding:0 12px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px;margin:8px 0} td,th{border:1px solid #ddd;padding:4px 7px;vertical-align:top;text-align:left}
th{background:#f5f5f5} .num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.plots{display:flex;flex-wrap:wrap;gap:10px} .plots svg{border:1px solid #eee}
.tok{white-space:pre-wrap;border-radius:2px;padding:1px 0;font-family:ui-monospace,Menlo,Consolas,monospace,"Apple Color Emoji","Segoe UI Emoji","Noto Color Emoji";font-size:12.5px}
.prompt{max-width:320px;color:#666;font-family:ui-monospace,Menlo,Consolas,monospace,"Apple Color Emoji","Segoe UI Emoji","Noto Color Emoji";font-size:12.5px} .muted{color:#777;font-size:12px}
.legend span{display:inline-block;padding:1px 6px;margin-right:6px;border-radius:2px;font-size:12px}
.headline td{font-size:14px}
table.samples{font-size:13.5px} .samples td.ask{max-width:250px;font-weight:600;color:#333}
.reply{white-space:pre-wrap;max-width:380px;line-height:1.35} .cut{color:#999}
td.better{background:#e3f4e3} td.worse{background:#fbe4e4}
"""


def _reply(text: str, ended) -> str:
    """A reply for a table cell; one cut at the token budget (``ended`` false) ends in a marked …."""
    cut = (
        '<span class="cut" title="cut at the token budget (no end-of-turn token yet)"> …</span>'
        if ended is False
        else ""
    )
    return f'<div class="reply">{_esc(text)}{cut}</div>'


def _change_cell(before, after, lower_better: bool = False, digits: int = 3) -> str:
    """``before → after`` shaded green where the change is an improvement, red where it is not."""
    if not (_finite(before) and _finite(after)):
        return f'<td class="num">{_num(before, digits)} → {_num(after, digits)}</td>'
    before, after = round(before, digits), round(after, digits)  # shaded only where the shown numbers differ
    better = (after < before) if lower_better else (after > before)
    cls = "better" if better else ("worse" if after != before else "")
    return f'<td class="num {cls}">{_num(before, digits)} → {_num(after, digits)}</td>'


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
            f"Prompts{f' ({_esc(pool)})' if pool else ''}: {rendering}; replies sampled at temperature "
            f"{sampling.get('temperature', 1):g}{nucleus}{topk}, at most {sampling.get('max_new_tokens')} tokens "
            "(… marks a reply cut there). "
        )
    lower = lower_is_better(gold_judge) if gold_judge else False
    trs = []
    for x in samples:
        trs.append(
            f'<tr><td class="ask">{_esc(x.get("prompt", ""))}</td>'
            f"<td>{_reply(x.get('reference', ''), x.get('reference_ended'))}</td>"
            f"<td>{_reply(x.get('policy', ''), x.get('policy_ended'))}</td>"
            + (_change_cell(x.get("gold_reference"), x.get("gold_policy"), lower) if gold_judge else "")
            + _change_cell(x.get("judge_reference"), x.get("judge_policy"))
            + f'<td class="num">{_num(x.get("kl"))}</td></tr>'
        )
    gold_th = f"<th>gold ({_esc(gold_judge)})<br>before → after</th>" if gold_judge else ""
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
    summary = summary or (_read_json(out / "pipeline.json") or {})
    records = {p.parent.name: _read_json(p) for p in sorted(out.glob("*/stage.json"))}
    order = ["init", "sft", "feedback", "reward", "policy", "eval", "report"]
    ev = _read_json(out / "eval" / "eval.json") or {}
    calib = _read_json(out / "reward" / "calibration.json") or {}
    policy_rows = read_jsonl(out / "policy" / "metrics.jsonl", tolerant=True)
    algorithm = summary.get("algorithm") or ((records.get("policy") or {}).get("outputs") or {}).get("algorithm", "")
    title = summary.get("title") or f"rlhfkit pipeline: {summary.get('name', out.name)}"
    body: list[str] = [
        f"<h1>{_esc(title)}</h1>",
        f'<p class="muted">{_esc(out)} · rendered {time.strftime("%Y-%m-%d %H:%M:%S")}'
        + (f" · policy optimisation: {_esc(algorithm)}" if algorithm else "")
        + (f" · initial policy: {_esc(summary['init'])}" if summary.get("init") else "")
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
                f"accuracy {_num(calib.get('accuracy'))}, ECE {_num(calib.get('ece'))}, "
                f"mean margin {_num(calib.get('mean_margin'))} ({calib.get('pairs')} pairs)",
            )
        )
    if ev.get("win_rate"):
        rows.append(("win rate vs reference (judge: reward model)", _ci(ev["win_rate"])))
    gold = ev.get("gold")
    if gold:
        direction = "lower is better" if lower_is_better(gold["judge"]) else ""
        rows.append(
            (
                f"gold judge ({_esc(gold['judge'])}{', ' + direction if direction else ''}): before → after",
                f"{_num(gold['reference']['mean'], 4)} → {_num(gold['policy']['mean'], 4)}; gain "
                f"{_signed(gold['gain']['mean'], 4)} [{_signed(gold['gain']['ci_low'], 4)}, "
                f"{_signed(gold['gain']['ci_high'], 4)}]",
            )
        )
        rows.append((f"win rate vs reference (judge: {_esc(gold['judge'])})", _ci(gold.get("win_rate"))))
    if ev.get("kl"):
        rows.append(
            (
                "KL(policy ‖ reference), nats / sequence",
                _ci(ev["kl"], "mean")
                + (f"; k3 estimate (never negative) {_ci(ev['kl_k3'], 'mean')}" if ev.get("kl_k3") else ""),
            )
        )
    if ev:
        rows.append(
            (
                "held-out prompts",
                f"{ev.get('prompts')} (response length: policy {_num(ev.get('policy_length'), 1)}, "
                f"reference {_num(ev.get('reference_length'), 1)} tokens)",
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
        eplots.append(reliability_chart(calib["bins"], f"Reward-model calibration (ECE {_num(calib.get('ece'))})"))
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
            f"r<sub>t</sub> = −β·KL<sub>t</sub> (β = {_esc(beta)}) plus the reward model's score on the last token "
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
            gold_cell = _num(t.get("gold")) if t.get("gold") is not None else "–"
            trs.append(
                f'<tr><td class="prompt">{_prompt(t["prompt"])}</td>'
                f"<td><div>{shade_tokens(t['tokens'], t['reward'], r_scale, 'reward')}</div>"
                f'<div style="margin-top:4px">{shade_tokens(t["tokens"], t["kl"], k_scale, "kl")}</div></td>'
                f'<td class="num">{_num(t["score"])}</td><td class="num">{gold_cell}</td>'
                f'<td class="num">{_num(t["seq_kl"])}</td></tr>'
            )
        body.append(
            "<table><tr><th>prompt</th><th>response (top: per-token reward, bottom: per-token KL)</th>"
            "<th>RM score</th><th>gold</th><th>KL (nats)</th></tr>" + "".join(trs) + "</table>"
        )

    # stages
    trs = []
    for name in order:
        rec = records.get(name)
        if rec is None:
            continue
        # the report stage is still running while it writes this page
        status = "writing this page" if name == "report" and rec.get("status") == "running" else rec.get("status")
        trs.append(
            f'<tr><td>{name}</td><td>{_esc(status)}</td><td class="num">{_num(rec.get("seconds"), 1)}</td>'
            f'<td class="num">{_num(rec.get("cpu_seconds"), 1)}</td>'
            f'<td class="num">{rec.get("runs", "")}</td><td><code>{_esc(str(rec.get("fingerprint", ""))[:12])}</code></td></tr>'
        )
    if trs:
        body.append(
            "<h2>Stages</h2><table><tr><th>stage</th><th>status</th><th>seconds (last run)</th><th>CPU seconds</th><th>runs</th>"
            "<th>fingerprint</th></tr>" + "".join(trs) + "</table>"
            '<p class="muted">A stage reruns when its settings or an input stage\'s fingerprint change; '
            "otherwise it is read from its folder.</p>"
        )

    return _write_page(path, title, body)


def _write_page(path: Path, title: str, body: list[str]) -> Path:
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


LOOP_STAGES = ("candidates", "select", "labels", "reward", "policy", "eval")


def render_loop_report(output_dir: str | Path, path: str | Path | None = None) -> Path:
    """Write the HTML report of the ``rlhfkit loop`` in ``output_dir`` (default
    ``output_dir/report.html``): per round the labels spent, the held-out gold score, the KL to
    the initial policy and the ensemble's held-out accuracy (table and plots against labels), how
    uncertain the selected pairs were against all candidates, the policy rounds' training curves
    one after another, the last round's labelled pairs, and the stages. Renders a partial loop."""
    out = Path(output_dir)
    path = Path(path) if path is not None else out / "report.html"
    state = _read_json(out / "loop_state.json") or {}
    curve = _read_json(out / "curve.json") or state.get("curve") or []
    rounds = sorted(int(d.name.split("-")[1]) for d in out.glob("round-*") if d.name.split("-")[1].isdigit())
    rec = {(r, s): (_read_json(out / f"round-{r}" / s / "stage.json") or {}) for r in rounds for s in LOOP_STAGES}
    outputs = {k: v.get("outputs") or {} for k, v in rec.items()}
    title = f"rlhfkit loop: {state.get('name', out.name)}"
    body = [
        f"<h1>{_esc(title)}</h1>",
        f'<p class="muted">{_esc(out)} · rendered {time.strftime("%Y-%m-%d %H:%M:%S")} · selection '
        f"{_esc(state.get('selection', '?'))} (round 1 at random) · {len(curve) - 1 if curve else 0} of "
        f"{_esc(state.get('rounds', '?'))} rounds done · status {_esc(state.get('status', '?'))}"
        + (
            f" (round {_esc(state.get('round'))}, stage {_esc(state.get('stage'))})"
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
                f"{_num(sel.get('mean_uncertainty_selected'), 4)} / {_num(sel.get('mean_uncertainty_all'), 4)}"
                if sel.get("mean_uncertainty_selected") is not None
                else "–"
            )
            trs.append(
                f'<tr><td class="num">{r}</td><td>{_esc(sel.get("method", "initial policy" if r == 0 else ""))}</td>'
                f'<td class="num">{p["labels"]}</td><td class="num">{_num(p["gold"], 4)}</td>'
                f'<td class="num">{_num(p.get("kl"))}</td><td class="num">{_num(p.get("rm_accuracy"))}</td>'
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
            rows = read_jsonl(out / f"round-{r}" / "policy" / "metrics.jsonl", tolerant=True)
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
    last = max((r for r in rounds if (out / f"round-{r}" / "labels" / "labels.jsonl").is_file()), default=None)
    if last is not None:
        labels = read_jsonl(out / f"round-{last}" / "labels" / "labels.jsonl", tolerant=True)[:12]
        trs = [
            f'<tr><td class="prompt">{_prompt(x.get("prompt", ""))}</td><td>{_esc(x.get("chosen", ""))}</td>'
            f'<td>{_esc(x.get("rejected", ""))}</td><td class="num">{_num(x.get("gold_chosen"))} / '
            f"{_num(x.get('gold_rejected'))}</td></tr>"
            for x in labels
        ]
        body.append(
            f"<h2>Pairs labelled in round {last}</h2><table><tr><th>prompt</th><th>chosen</th>"
            "<th>rejected</th><th>gold chosen / rejected</th></tr>" + "".join(trs) + "</table>"
        )
    trs = []
    for r in rounds:
        for s in LOOP_STAGES:
            x = rec[(r, s)]
            if x:
                trs.append(
                    f"<tr><td>{r}</td><td>{s}</td><td>{_esc(x.get('status'))}</td>"
                    f'<td class="num">{_num(x.get("seconds"), 1)}</td><td class="num">{x.get("runs", "")}</td></tr>'
                )
    if trs:
        body.append(
            "<h2>Stages</h2><table><tr><th>round</th><th>stage</th><th>status</th><th>seconds</th>"
            "<th>runs</th></tr>" + "".join(trs) + "</table>"
        )
    return _write_page(path, title, body)
