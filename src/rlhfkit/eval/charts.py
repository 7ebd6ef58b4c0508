"""The reports' charts as inline SVG, written by hand: a line chart, a bar chart with error bars
and a reliability diagram, each a string to put in an HTML page."""

from __future__ import annotations

import math

from rlhfkit.eval.html_page import esc as _esc
from rlhfkit.eval.html_page import finite as _finite

__all__ = ["PALETTE", "line_chart", "bar_chart", "reliability_chart"]


PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"]


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
