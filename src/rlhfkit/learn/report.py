"""The versions-over-time report: one self-contained HTML page from a learner's folder (and,
when given, a deployment simulation's measurements: ``benchmarks/deploy_sim.py``).

From ``LEARN_DIR`` alone (``rlhfkit learn versions LEARN_DIR --html FILE``): a timeline of the
versions promoted, refused and rolled back (``versions.jsonl``), the gate's figures by round, the
feedback each round trained on by kind, and the versions table (lineage: parent, round, feedback,
per-user weights, gate figures). With ``sim_dir`` (``events.jsonl``, ``evals.jsonl``,
``summary.json``) also the served model's held-out gold score over time with the promotions and
refusals marked, request latency over time, and feedback counts per kind. Figures are drawn as the
pipeline's and the loop's reports draw theirs (``eval.charts``: matplotlib's SVG backend without
pyplot's global state, byte-deterministic, no reference inside the SVG), embedded inline: the page
fetches nothing, runs no script and is the same bytes for the same folder.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

import matplotlib

from rlhfkit.eval import charts
from rlhfkit.learn import lineage
from rlhfkit.learn.defence import TRUSTED_WEIGHT
from rlhfkit.models import versions


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash
            continue
    return out


def user_weights_summary(per_user: dict) -> dict:
    """How many users a round weighed at 1/2 or more (more likely honest than not), between 0 and
    1/2, and at 0, and the verdicts cut."""
    ws = [u.get("weight", 1.0) for u in per_user.values()]
    return {
        "users": len(ws),
        "full": sum(w >= TRUSTED_WEIGHT for w in ws),
        "partial": sum(0 < w < TRUSTED_WEIGHT for w in ws),
        "zero": sum(w <= 0 for w in ws),
        "cut": sum(u.get("cut", 0) for u in per_user.values()),
    }


def round_rows(learn_dir: Path) -> list[dict]:
    """One row per logged round (promoted or refused), in log order: when, outcome, version,
    feedback by kind, the users' weights (from the round's defence), the gate's figures."""
    rows = []
    for rec in lineage.read_log(learn_dir):
        if rec.get("event") not in ("promoted", "refused"):
            continue
        defence = learn_dir / "rounds" / f"round-{rec.get('round')}" / "defence" / "defence.json"
        per_user = versions.read_json_object(defence).get("per_user", {}) if defence.is_file() else {}
        gate = rec.get("gate") or {}
        rm = gate.get("reward_model") or {}
        rows.append(
            {
                "at": rec.get("at"),
                "event": rec["event"],
                "round": rec.get("round"),
                "version": rec.get("version"),
                "parent": rec.get("parent"),
                "feedback": rec.get("feedback_count") or {},
                "weights": user_weights_summary(per_user),
                "win_rate": rm.get("win_rate"),
                "ci": (rm.get("ci_low"), rm.get("ci_high")),
                "gold_win_rate": (gate.get("gold") or {}).get("win_rate"),
                "kl_to_v0": gate.get("kl_to_v0"),
                "reasons": rec.get("reasons") or [],
            }
        )
    return rows


def _fmt(x, spec=".3f") -> str:
    return "-" if x is None else format(x, spec)


def _timeline_figure(rows: list[dict], log: list[dict], t0: float) -> str:
    with matplotlib.rc_context(charts.RC):
        fig, ax = charts.chart_figure(800, 260)
        xs = [(r["at"] - t0) / 60 for r in rows]
        wins = [r["win_rate"] for r in rows]
        ax.plot([x for x, w in zip(xs, wins) if w is not None], [w for w in wins if w is not None], color="#888", lw=1)
        for r, x in zip(rows, xs):
            y = r["win_rate"] if r["win_rate"] is not None else 0.5
            if r["event"] == "promoted":
                ax.scatter([x], [y], marker="^", color="#2a7", s=60, zorder=3)
                ax.annotate(r["version"], (x, y), textcoords="offset points", xytext=(4, 6))
            else:
                ax.scatter([x], [y], marker="x", color="#c33", s=60, zorder=3)
        for rec in log:
            if rec.get("event") == "rollback":
                ax.axvline((rec["at"] - t0) / 60, color="#c80", ls="--", lw=1)
        ax.axhline(0.5, color="#bbb", lw=0.8, ls=":")
        ax.set_xlim(0, max(xs + [0.0]) * 1.1 + 0.1)  # from v0's creation
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("minutes since v0")
        ax.set_ylabel("gate: RM win rate")
        ax.set_title("rounds: promoted (green triangle), refused (red cross), rollback (dashed)")
        return charts.render_svg(fig, "Rounds: the gate's win rate of each round's candidate over time")


def _gold_figures(evals: list[dict], marks: list) -> str:
    """The served model's gold score over time (promotions and refusals marked) and against the
    number of verdicts stored: two charts side by side."""
    with matplotlib.rc_context(charts.RC):
        fig, ax = charts.chart_figure(520, 300)
        # a version's score holds from its promotion (v0: from the start) until the next one; it
        # was measured later (the evaluation queues behind users' requests)
        promoted_at = {r.get("version"): x for x, r in marks if r["event"] == "promoted"}
        xs = [0.0 if e["version"] == "v0" else promoted_at.get(e["version"], e["t"] / 60) for e in evals]
        golds = [e["gold"] for e in evals]
        end = max([e["t"] / 60 for e in evals] + [x for x, _ in marks])
        ax.step(xs + [end], golds + golds[-1:], where="post", color="#25a")
        ax.plot(xs, golds, "o", color="#25a")
        for x, e in zip(xs, evals):
            ax.annotate(e["version"], (x, e["gold"]), textcoords="offset points", xytext=(3, 5))
        for x, r in marks:
            promoted = r["event"] == "promoted"
            ax.axvline(x, color="#2a7" if promoted else "#c33", lw=1, ls="-" if promoted else ":")
        ax.set_xlabel("minutes")
        ax.set_ylabel("held-out gold score")
        ax.set_title("served version's gold (green: promoted, red dotted: refused)")
        over_time = charts.render_svg(fig, "held-out gold score over time")
    with matplotlib.rc_context(charts.RC):
        fig, ax = charts.chart_figure(520, 300)
        ax.plot([e["verdicts"] for e in evals], [e["gold"] for e in evals], "o-", color="#25a")
        ax.set_xlabel("verdicts stored")
        ax.set_ylabel("held-out gold score")
        ax.set_title("gold against feedback count")
        return over_time + charts.render_svg(fig, "held-out gold score against the verdicts stored")


def _latency_figure(chats: list[dict], events: list[dict], summary: dict, t_start: float) -> str:
    with matplotlib.rc_context(charts.RC):
        fig, ax = charts.chart_figure(1040, 280)
        ok = [e for e in chats if e["ok"]]
        bad = [e for e in events if not e["ok"]]
        ax.scatter(
            [(e["t0"] - t_start) / 60 for e in ok],
            [e["latency"] for e in ok],
            s=6,
            color="#25a",
            alpha=0.6,
            label="chat request (2xx)",
        )
        if bad:
            ax.scatter(
                [(e["t0"] - t_start) / 60 for e in bad],
                [0] * len(bad),
                marker="x",
                color="#c33",
                label="failed request",
            )
        for k, rnd in enumerate(summary.get("rounds", [])):
            ax.axvspan(
                rnd["start"] / 60,
                rnd["end"] / 60,
                color="#fc8",
                alpha=0.3,
                label="learner round running" if k == 0 else None,
            )
        ax.set_xlabel("minutes")
        ax.set_ylabel("latency (s)")
        ax.legend(loc="upper left")
        ax.set_title("request latency")
        return charts.render_svg(fig, "request latency over time")


def _sim_figures(sim_dir: Path, log: list[dict], t_start: float) -> list[tuple[str, str]]:
    figs = []
    evals = _read_jsonl(sim_dir / "evals.jsonl")
    events = _read_jsonl(sim_dir / "events.jsonl")
    summary = json.loads((sim_dir / "summary.json").read_text()) if (sim_dir / "summary.json").is_file() else {}
    marks = [((r["at"] - t_start) / 60, r) for r in log if r.get("event") in ("promoted", "refused")]
    if evals:
        figs.append(("Served model's held-out gold score", _gold_figures(evals, marks)))
    chats = [e for e in events if e["kind"] == "chat"]
    if chats:
        figs.append(("Latency", _latency_figure(chats, events, summary, t_start)))
    kinds = (summary.get("feedback") or {}).get("by_kind") or {}
    if kinds and any(e["kind"] == "feedback" for e in events):
        with matplotlib.rc_context(charts.RC):
            fig, ax = charts.chart_figure(520, 240)
            ax.bar(list(kinds), list(kinds.values()), color="#25a")
            ax.set_ylabel("feedback sent")
            ax.set_title("feedback per kind")
            figs.append(("Feedback per kind", charts.render_svg(fig, "feedback sent per kind")))
    return figs


CSS = """body{font-family:system-ui,sans-serif;margin:1.5em auto;padding:0 1.5em;max-width:1100px;color:#222}
h1{font-size:1.5em}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td{white-space:nowrap}td.l{text-align:left;white-space:normal;min-width:8em}.ok{color:#173}.no{color:#a22}svg{max-width:100%;height:auto}
.kv{font-size:14px}h2{margin-top:1.4em;font-size:1.15em}"""


def render_report(learn_dir, sim_dir=None) -> str:
    """The report's HTML (module docstring)."""
    learn_dir = Path(learn_dir)
    if not versions.is_learn_dir(learn_dir):
        raise versions.VersionError(f"{learn_dir}: not a learner's folder (no current.json or versions/)")
    log = lineage.read_log(learn_dir)
    vrows = lineage.version_rows(learn_dir)
    rows = round_rows(learn_dir)
    # the first version's creation, else the first logged event: never the clock (same folder,
    # same bytes)
    t0 = min([r["created"] for r in vrows if r.get("created")] or [x["at"] for x in log if x.get("at")] or [0.0])
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>rlhfkit learn: versions of {e(learn_dir.name)}"
        f"</title><style>{CSS}</style></head><body>",
        f"<h1>Versions over time</h1><p class='kv'>learner folder <code>{e(str(learn_dir))}</code></p>",
        f"<p class='kv'>serving <b>{e(str(versions.current_version(learn_dir)))}</b>; "
        f"{sum(r['event'] == 'promoted' for r in rows)} promoted, {sum(r['event'] == 'refused' for r in rows)} refused, "
        f"{sum(1 for r in log if r.get('event') == 'rollback')} rollback(s)</p>",
    ]
    if sim_dir is not None:
        sim_dir = Path(sim_dir)
        summary = json.loads((sim_dir / "summary.json").read_text()) if (sim_dir / "summary.json").is_file() else {}
        events = _read_jsonl(sim_dir / "events.jsonl")
        # every time of the simulation counts from its start (summary: t_start)
        t_start = summary.get("t_start") or min([x["t0"] for x in events] or [t0])
        if summary:
            req, lat, d = summary["requests"], summary["latency"], summary.get("gold_last_minus_first") or {}
            parts.append(
                "<h2>Simulation</h2><table class='kv'>"
                + "".join(
                    f"<tr><th>{e(k)}</th><td class='l'>{e(str(v))}</td></tr>"
                    for k, v in [
                        ("model / users / minutes", f"{summary['model']} / {summary['users']} / {summary['minutes']}"),
                        ("adversarial users", sum(1 for b in summary["adversarial"].values() if b != "honest")),
                        ("requests sent / answered / failed", f"{req['sent']} / {req['answered']} / {req['failed']}"),
                        (
                            "verdicts given / refused / stored",
                            f"{summary['feedback']['verdicts_given']} / "
                            f"{summary['feedback']['verdicts_refused']} / {summary['feedback']['in_store']}",
                        ),
                        (
                            "latency idle p50 / p95 (s)",
                            f"{_fmt(lat['idle']['p50'], '.2f')} / {_fmt(lat['idle']['p95'], '.2f')}"
                            f" (n {lat['idle']['n']})",
                        ),
                        (
                            "latency while training p50 / p95 (s)",
                            f"{_fmt(lat['training']['p50'], '.2f')} / "
                            f"{_fmt(lat['training']['p95'], '.2f')} (n {lat['training']['n']})",
                        ),
                        (
                            "gold last - first [95% CI]",
                            f"{_fmt(d.get('mean'))} [{_fmt(d.get('ci_low'))}, {_fmt(d.get('ci_high'))}]"
                            f" over {d.get('n', 0)} held-out prompts",
                        ),
                        (
                            "load average (mean / max)",
                            f"{_fmt(summary['load_average']['mean'], '.2f')} / "
                            f"{_fmt(summary['load_average']['max'], '.2f')} on {summary.get('cpu_count')} CPUs",
                        ),
                    ]
                )
                + "</table>"
            )
        for title, svg in _sim_figures(sim_dir, log, t_start):
            parts.append(f"<h2>{e(title)}</h2>{svg}")
    if rows:
        parts.append(f"<h2>Rounds</h2>{_timeline_figure(rows, log, t0)}")
        parts.append(
            "<table><tr><th>when (UTC)</th><th>round</th><th>outcome</th><th>parent</th><th>feedback by kind</th>"
            "<th>users (w&ge;&frac12; / 0&lt;w&lt;&frac12; / w=0)</th><th>cut</th><th>RM win [95% CI]</th><th>gold win</th>"
            "<th>KL(v0)</th><th class='l'>reasons</th></tr>"
        )
        for r in rows:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["at"])) if r["at"] else "-"
            outcome = (
                f"<span class='ok'>promoted {e(r['version'])}</span>"
                if r["event"] == "promoted"
                else "<span class='no'>refused</span>"
            )
            w = r["weights"]
            fb = ", ".join(f"{k} {v}" for k, v in sorted(r["feedback"].items())) or "-"
            parts.append(
                f"<tr><td>{when}</td><td>{r['round']}</td><td class='l'>{outcome}</td><td>{e(str(r['parent']))}</td>"
                f"<td class='l'>{e(fb)}</td><td>{w['users']} ({w['full']} / {w['partial']} / {w['zero']})</td>"
                f"<td>{w['cut']}</td><td>{_fmt(r['win_rate'])} [{_fmt(r['ci'][0], '.2f')}, {_fmt(r['ci'][1], '.2f')}]"
                f"</td><td>{_fmt(r['gold_win_rate'])}</td><td>{_fmt(r['kl_to_v0'])}</td>"
                f"<td class='l'>{e('; '.join(r['reasons']))}</td></tr>"
            )
        parts.append("</table>")
    parts.append(
        "<h2>Versions</h2><table><tr><th></th><th>version</th><th>parent</th><th>round</th><th>created (UTC)</th>"
        "<th>method</th><th>feedback</th><th>users</th><th>w&lt;&frac12;</th><th>cut</th><th>RM win [95% CI]</th>"
        "<th>gold win</th><th>KL(v0)</th></tr>"
    )
    for r in vrows:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["created"])) if r.get("created") else "-"
        ci = r.get("ci") or [None, None]
        parts.append(
            f"<tr><td>{'&#9679;' if r['current'] else ''}</td><td class='l'>{e(r['version'])}</td>"
            f"<td>{e(str(r['parent'] or '-'))}</td><td>{r['round'] if r['round'] is not None else '-'}</td>"
            f"<td>{created}</td><td>{e(str(r.get('method') or '-'))}</td><td>{r['feedback']}</td>"
            f"<td>{r['users']}</td><td>{r['down_weighted']}</td><td>{r['cut']}</td>"
            f"<td>{_fmt(r['win_rate'])} [{_fmt(ci[0], '.2f')}, {_fmt(ci[1], '.2f')}]</td>"
            f"<td>{_fmt(r['gold_win_rate'])}</td><td>{_fmt(r['kl_to_v0'])}</td></tr>"
        )
    parts.append(
        "</table><p style='font-size:12px;color:#666'>&#9679; = served now. w: a user's weight from the "
        "round's defence (the chance, from their agreement with the consensus, that the user is honest rather "
        "than random or inverted); cut: verdicts over the per-user cap.</p></body></html>"
    )
    return "\n".join(parts)


def write_report(learn_dir, path, sim_dir=None) -> Path:
    """Write ``render_report`` to ``path``; returns it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(learn_dir, sim_dir), encoding="utf-8")
    return path
