"""The page the pipeline's and the loop's HTML reports share: one self-contained file (its style
inline, its charts inline SVG from ``eval/charts.py``, no script, nothing fetched), the cell
formatting of their tables, and the tolerant reading of a run folder that may be half written.

The reports themselves sit beside their owners: ``pipeline/report.py`` and ``loop/report.py``.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

__all__ = ["CSS", "esc", "finite", "num", "signed", "ci_text", "prompt_cell", "read_json", "write_page"]


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


def esc(x) -> str:
    """``x`` as text for HTML (an element's text or an attribute's value)."""
    return html.escape(str(x), quote=True)


def finite(v) -> bool:
    """A real number that can be drawn and printed (not a bool, None, NaN or an infinity)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def num(v, digits: int = 3) -> str:
    """A table number, ``–`` where there is none."""
    return f"{v:.{digits}f}" if finite(v) else "–"


def signed(v, digits: int = 3) -> str:
    """A change, with its sign (a gain of +0.28, an interval end of -0.01)."""
    return f"{v:+.{digits}f}" if finite(v) else "–"


def ci_text(d: dict | None, key: str = "win_rate") -> str:
    """``value [low, high]`` of a bootstrap record (``ci_low`` / ``ci_high``)."""
    if not d:
        return "–"
    return f"{num(d.get(key))} [{num(d.get('ci_low'))}, {num(d.get('ci_high'))}]"


def prompt_cell(text: str, limit: int = 240) -> str:
    """A prompt for a table cell: its last ``limit`` characters (the end of a dialogue is the turn
    being answered), the full text on hover."""
    short = text if len(text) <= limit else "…" + text[-limit:]
    return f'<span title="{esc(text)}">{esc(short)}</span>'


def read_json(path: Path):
    """The JSON in ``path``, or None where it is missing or half written (a run still going)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_page(path: Path, title: str, body: list[str]) -> Path:
    """Write the page (``body``'s parts under ``title``) to ``path`` through a temporary file, so
    a reader never opens half a report; returns ``path``."""
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
