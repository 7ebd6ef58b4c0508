"""The reports' charts as inline SVG: a line chart, a bar chart with error bars and a reliability
diagram, each a string to put in an HTML page.

Drawn by matplotlib rather than by hand: it is well kept, already pinned for the benchmarks'
plots, and lays out ticks, labels and legends that a hand-written SVG kit only approximated
(no clipped or overlapping labels). Its SVG backend is used without pyplot's global state (a
``Figure`` with a ``FigureCanvasSVG``, settings in an ``rc_context``), and the output is
byte-deterministic for a given input: a fixed ``svg.hashsalt`` for its ids, no date or creator
in the metadata. ``svg.fonttype: none`` keeps text as ``<text>`` (searchable, small) rather than
glyph outlines.

The page stays one self-contained file with no reference of any kind: nothing is clipped (the
axes hold all the data, so no ``clip-path: url(#...)``), and markers are drawn in place, each
its own ``<path>``, by the base renderer's documented fallbacks rather than defined once and
placed with ``<use xlink:href="#...">``.
"""

from __future__ import annotations

import io

import matplotlib
from matplotlib.backend_bases import RendererBase
from matplotlib.backends.backend_mixed import MixedModeRenderer
from matplotlib.backends.backend_svg import FigureCanvasSVG, RendererSVG
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from rlhfkit.eval.html_page import finite

__all__ = ["PALETTE", "RC", "chart_figure", "line_chart", "bar_chart", "reliability_chart", "render_svg"]


PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"]
WIDTH_PX, HEIGHT_PX = 430, 270  # two charts side by side in the page's 1180 px column
MAX_POINTS = 80  # a series with more values is drawn as a line only (its points would be a smear)
PT_PER_PX = 72 / 96  # SVG sizes are in points, the page's in CSS pixels

RC = {
    # ids hashed from a fixed salt, not a random one (none is made now: nothing clipped, no marker
    # defined for reuse; the salt keeps the bytes the same should one be)
    "svg.hashsalt": "rlhfkit-report",
    "svg.fonttype": "none",  # text stays text
    "text.parse_math": False,  # a title or label with two "$" (a judge's name) is text, not mathtext
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],  # the font its layout measured (bundled); one name per <text>
    "font.size": 10 * PT_PER_PX,
    "axes.titlesize": 13 * PT_PER_PX,
    "axes.titleweight": "bold",
    "axes.labelsize": 11 * PT_PER_PX,
    "axes.edgecolor": "#888888",
    "axes.linewidth": 1.0 * PT_PER_PX,
    "xtick.labelsize": 10 * PT_PER_PX,
    "ytick.labelsize": 10 * PT_PER_PX,
    "xtick.major.size": 0,  # the grid marks the ticks
    "ytick.major.size": 0,
    "xtick.minor.size": 0,
    "ytick.minor.size": 0,
    "legend.fontsize": 10 * PT_PER_PX,
    "legend.frameon": False,
    "axes.formatter.useoffset": False,  # tick labels are the values themselves
    "axes.formatter.limits": (-4, 4),
}
NO_METADATA = {"Creator": None, "Date": None, "Format": None, "Type": None}


class _ReferenceFreeSVGRenderer(RendererSVG):
    """``RendererSVG`` that draws each marker as its own ``<path>``: ``RendererBase``'s
    ``draw_markers`` / ``draw_path_collection`` are the fallbacks matplotlib documents for it."""

    draw_markers = RendererBase.draw_markers
    draw_path_collection = RendererBase.draw_path_collection


def chart_figure(width_px: int = WIDTH_PX, height_px: int = HEIGHT_PX) -> tuple[Figure, object]:
    """``(figure, axes)`` of a chart ``width_px`` by ``height_px`` CSS pixels, with the grid;
    draw into it under ``matplotlib.rc_context(RC)`` and turn it into SVG with ``render_svg``
    (for a chart the three above do not draw)."""
    fig = Figure(figsize=(width_px * PT_PER_PX / 72, height_px * PT_PER_PX / 72), dpi=72, layout="constrained")
    FigureCanvasSVG(fig)  # the canvas its layout measures text with
    ax = fig.add_subplot()
    ax.grid(True, color="#e5e5e5", linewidth=1.0 * PT_PER_PX)
    ax.set_axisbelow(True)
    return fig, ax


def render_svg(fig: Figure, title: str) -> str:
    """``fig`` as an ``<svg>`` element for an HTML page, named ``title`` for screen readers."""
    for artist in fig.findobj():
        artist.set_clip_on(False)
    width, height = fig.get_size_inches()
    buffer = io.StringIO()
    # FigureCanvasSVG.print_svg with the renderer above: the figure drawn once into a string
    renderer = MixedModeRenderer(
        fig, width, height, fig.dpi, _ReferenceFreeSVGRenderer(width * 72, height * 72, buffer, metadata=NO_METADATA)
    )
    fig.draw(renderer)
    renderer.finalize()
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]  # the XML prolog and doctype are for a file, not a page
    return svg.replace("<svg ", f'<svg role="img" aria-label="{_attr(title)}" ', 1)


def _attr(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


def _label(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def _hline(ax, y: float | None) -> None:
    if y is not None:
        ax.axhline(y, color="#999999", linestyle=(0, (4, 3)), linewidth=1.0 * PT_PER_PX)


def line_chart(
    series: dict[str, list[tuple[float, float]]],
    title: str,
    xlabel: str = "step",
    ylabel: str = "",
    hline: float | None = None,
) -> str:
    """A line per named series, with its points (``<g id="points-i">``, one ``<path>`` each) where
    it has at most ``MAX_POINTS``, and a legend when there are several; a dashed line at
    ``hline``. x is a count (a step, labels, a round): its ticks are whole numbers. Points that
    are not finite numbers are left out; "" when no point is left."""
    kept = {name: [(x, y) for x, y in s if finite(x) and finite(y)] for name, s in series.items()}
    if not any(kept.values()):
        return ""
    with matplotlib.rc_context(RC):
        fig, ax = chart_figure()
        _label(ax, title, xlabel, ylabel)
        _hline(ax, hline)
        for i, (name, s) in enumerate(kept.items()):
            if not s:
                continue
            color = PALETTE[i % len(PALETTE)]
            xs, ys = [x for x, _ in s], [y for _, y in s]
            ax.plot(xs, ys, color=color, linewidth=1.6 * PT_PER_PX, label=name)
            if len(s) <= MAX_POINTS:
                ax.plot(
                    xs, ys, linestyle="none", marker="8", markersize=4.4 * PT_PER_PX, color=color, gid=f"points-{i}"
                )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        xs_all = [x for s in kept.values() for x, _ in s]
        if min(xs_all) == max(xs_all):  # one x (one round so far): a whole number either side
            ax.set_xlim(xs_all[0] - 1, xs_all[0] + 1)
        if len(series) > 1:
            ax.legend(loc="best")
        return render_svg(fig, title)


def bar_chart(
    items: list[tuple[str, float, float | None, float | None]],
    title: str,
    ylabel: str = "",
    hline: float | None = None,
    yr: tuple[float, float] | None = None,
) -> str:
    """A bar per ``(label, value, ci_low, ci_high)`` from 0, its interval as an error bar (where
    both ends are finite) and its value printed above its left edge; a dashed line at ``hline``;
    the y range ``yr`` (default: the values, their intervals and 0). "" when no value is finite."""
    items = [it for it in items if finite(it[1])]
    if not items:
        return ""
    with matplotlib.rc_context(RC):
        fig, ax = chart_figure()
        _label(ax, title, "", ylabel)
        ax.grid(False, axis="x")
        _hline(ax, hline)
        for i, (_, v, lo, hi) in enumerate(items):
            ax.bar(i, v, width=0.6, color=PALETTE[i % len(PALETTE)], alpha=0.75)
            if finite(lo) and finite(hi):
                # an interval whose end lies a rounding step on the wrong side of the value (a
                # bootstrap of sums and sizes against the plain mean) is drawn as reaching the value:
                # matplotlib refuses a negative error bar, and one bar must not take the page down
                err = [[max(v - lo, 0.0)], [max(hi - v, 0.0)]]
                ax.errorbar(i, v, yerr=err, color="black", capsize=12 * PT_PER_PX, linewidth=1.5 * PT_PER_PX)
            # the value at the bar's left edge: centred, it would sit on the error bar
            ax.annotate(
                f"{v:.3g}",
                (i - 0.3, max(v, 0)),
                xytext=(1.5, 3),
                textcoords="offset points",
                ha="left",
                va="bottom",
                fontsize=10 * PT_PER_PX,
            )
        ax.set_xticks(range(len(items)), [label for label, *_ in items])
        ax.set_xlim(-0.5, len(items) - 0.5)
        ax.axhline(0, color="#888888", linewidth=1.0 * PT_PER_PX)
        # room above the highest bar or interval for its value, under the title
        lo, hi = yr if yr is not None else ax.get_ylim()
        ax.set_ylim(lo, hi + 0.1 * (hi - lo))
        return render_svg(fig, title)


def reliability_chart(bins: list[dict], title: str = "Reward-model calibration") -> str:
    """Reliability diagram: observed frequency that the first response is preferred against the
    mean predicted ``sigmoid(r_first - r_second)`` per bin (``reliability_bins``); the diagonal
    is perfect calibration. Bars span the bins, their shade the number of pairs."""
    with matplotlib.rc_context(RC):
        fig, ax = chart_figure()
        _label(ax, title, "predicted P(first preferred)", "observed frequency")
        ax.plot([0, 1], [0, 1], color="#999999", linestyle=(0, (4, 3)), linewidth=1.0 * PT_PER_PX)
        filled = [b for b in bins if b["n"]]
        n_max = max((b["n"] for b in filled), default=0) or 1
        for b in filled:
            alpha = 0.15 + 0.6 * b["n"] / n_max
            ax.bar(b["lo"], b["acc"], width=b["hi"] - b["lo"], align="edge", color="#1f77b4", alpha=alpha)
        if filled:
            ax.plot(
                [b["p_mean"] for b in filled],
                [b["acc"] for b in filled],
                color="#d62728",
                linewidth=1.6 * PT_PER_PX,
                marker="8",
                markersize=5 * PT_PER_PX,
            )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        return render_svg(fig, title)
