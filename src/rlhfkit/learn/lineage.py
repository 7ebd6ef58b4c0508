"""Lineage: what trained each version, the log of promotions, refusals and rollbacks, and the
``versions`` / ``rollback`` commands.

``versions.jsonl`` (one JSON object a line, appended and fsynced): ``{"event": "promoted" |
"refused" | "rollback", "round", "version", "parent" / "from", "at", "gate": figures, "reasons"}``.
A version's ``version.json`` (``models.versions``) carries ``round``, ``method``, ``feedback``
(``ids`` as ranges, ``count`` by kind, ``per_user``: n, cut, judged, agreed, agreement, weight,
status, fold; ``consensus``: reward_model / crossfit / majority / none, with the pooled
agreements ``consensus_agreement`` of the previous model and ``crossfit_agreement``, and
``honest_agreement``, the q of the weights; fields added
later are absent in older folders, and readers take them with ``get``), ``gate`` (the figures that let it through), ``reward_model`` (its folder inside
LEARN_DIR) and ``parent``.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

from rlhfkit.learn.config import RollbackConfig, VersionsConfig  # noqa: F401 - the commands' configs
from rlhfkit.learn.defence import TRUSTED_WEIGHT
from rlhfkit.models import versions

LOG_FILE = "versions.jsonl"


def feedback_lineage(events: Sequence[dict], defence: dict, id_ranges) -> dict:
    """The ``feedback`` part of a version's lineage from the round's events and defence."""
    return {
        "ids": id_ranges(e["id"] for e in events),
        "count": dict(sorted(Counter(e["kind"] for e in events).items())),
        "per_user": defence["per_user"],
        "consensus": defence["consensus"],
        "consensus_agreement": defence.get("consensus_agreement"),
        "crossfit_agreement": defence.get("crossfit_agreement"),
        "honest_agreement": defence.get("honest_agreement"),
        "cut": sum(u.get("cut", 0) for u in defence["per_user"].values()),
    }


def append_log(learn_dir: str | os.PathLike, record: dict) -> None:
    """Append one line to ``versions.jsonl`` (fsynced: a line acknowledged is kept)."""
    path = Path(learn_dir) / LOG_FILE
    line = json.dumps({"at": time.time(), **record}, sort_keys=True) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_log(learn_dir: str | os.PathLike) -> list[dict]:
    """Every complete line of ``versions.jsonl`` (a line cut by a crash is skipped)."""
    path = Path(learn_dir) / LOG_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def logged_round(learn_dir, round_no: int) -> dict | None:
    """The promotion or refusal logged for ``round_no`` (None: not logged yet)."""
    for r in read_log(learn_dir):
        if r.get("round") == round_no and r.get("event") in ("promoted", "refused"):
            return r
    return None


def rollback(learn_dir: str | os.PathLike, version: str, reason: str = "") -> dict:
    """Make ``version`` current again (``models.versions.promote``: checked complete, replaced
    atomically) and log it; returns the log record. Only a version that was served once (v0, one
    promoted, or one a rollback replaced) may be: a candidate whose gate passed but whose round was
    refused when its promotion was due (the served version had moved) keeps its folder, never
    having been let through."""
    learn_dir = Path(learn_dir)
    if not versions.is_learn_dir(learn_dir):
        raise versions.VersionError(f"{learn_dir}: not a learner's folder (no current.json or versions/)")
    log = read_log(learn_dir)
    try:
        served = {"v0", versions.current_version(learn_dir)}
    except versions.VersionError:  # current.json gone or broken: rollback is how it is repaired
        served = {"v0"}
    served |= {r.get("version") for r in log if r.get("event") == "promoted"}
    served |= {r.get("from") for r in log if r.get("event") == "rollback"}
    # a folder that is not there is promote's to name
    if version not in served and versions.version_dir(learn_dir, version).exists():
        names = ", ".join(sorted((v for v in served if v), key=lambda v: int(v[1:]) if v[1:].isdigit() else 0))
        raise versions.VersionError(
            f"{version} was never served (its round was refused after its gate); roll back to one of: {names}"
        )
    # "from" is what promote replaced under the folder's lock: read before it, a round's promotion
    # landing in between would be logged as the wrong version
    before = versions.promote(learn_dir, version)["previous"]
    record = {"event": "rollback", "version": version, "from": before, "reason": reason or None}
    append_log(learn_dir, record)
    return record


def version_rows(learn_dir: str | os.PathLike) -> list[dict]:
    """One row per version: name, parent, round, created, current, feedback count, users, gate
    figures (reward-model and gold win rates, KL to v0)."""
    rows = []
    for info in versions.list_versions(learn_dir):
        gate = info.get("gate") or {}
        fb = info.get("feedback") or {}
        rm = gate.get("reward_model") or {}
        rows.append(
            {
                "version": info["version"],
                "parent": info.get("parent"),
                "round": info.get("round"),
                "created": info.get("created"),
                "current": info["current"],
                "method": info.get("method"),
                "feedback": sum((fb.get("count") or {}).values()),
                "users": len(fb.get("per_user") or {}),
                "down_weighted": sum(
                    1 for u in (fb.get("per_user") or {}).values() if u.get("weight", 1) < TRUSTED_WEIGHT
                ),
                "cut": fb.get("cut", 0),
                "win_rate": rm.get("win_rate"),
                "ci": [rm.get("ci_low"), rm.get("ci_high")] if rm else None,
                "gold_win_rate": (gate.get("gold") or {}).get("win_rate"),
                "kl_to_v0": gate.get("kl_to_v0"),
            }
        )
    return rows


def format_table(rows: Sequence[dict], log: Sequence[dict]) -> str:
    """The ``rlhfkit learn versions`` table, then the refusals and rollbacks of the log."""

    def f(x, spec=".3f"):
        return "-" if x is None else format(x, spec)

    lines = [
        f"{'':2}{'version':9}{'parent':8}{'round':>6} {'created':20}{'feedback':>9}{'users':>6}{'w<.5':>5}{'cut':>5}"
        f"{'RM win':>8}{'95% CI':>14}{'gold':>7}{'KL(v0)':>8}"
    ]
    for r in rows:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["created"])) if r.get("created") else "-"
        ci = f"{f(r['ci'][0], '.2f')}-{f(r['ci'][1], '.2f')}" if r.get("ci") else "-"
        lines.append(
            f"{'*' if r['current'] else ' ':2}{r['version']:9}{r['parent'] or '-':8}"
            f"{r['round'] if r['round'] is not None else '-':>6} {created:20}{r['feedback']:>9}{r['users']:>6}"
            f"{r['down_weighted']:>5}{r['cut']:>5}{f(r['win_rate']):>8}{ci:>14}{f(r['gold_win_rate']):>7}{f(r['kl_to_v0']):>8}"
        )
    others = [x for x in log if x.get("event") in ("refused", "rollback")]
    if others:
        lines.append("")
        for x in others:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(x.get("at", 0)))
            if x["event"] == "refused":
                lines.append(f"{when}  round {x.get('round')}: candidate refused: {'; '.join(x.get('reasons') or [])}")
            else:
                lines.append(
                    f"{when}  rollback {x.get('from')} -> {x.get('version')}"
                    + (f" ({x['reason']})" if x.get("reason") else "")
                )
    lines.append(
        "(* = current; w<.5: users weighed below 1/2 (more likely random or inverted than honest); cut: verdicts over the per-user cap)"
    )
    return "\n".join(lines)


def run_versions(config) -> None:
    """``rlhfkit learn versions LEARN_DIR``."""
    from rlhfkit.training.config import ConfigError

    if not versions.is_learn_dir(config.learn_dir):
        raise ConfigError(f"{config.learn_dir}: not a learner's folder (no current.json or versions/)")
    rows = version_rows(config.learn_dir)
    if config.json:
        for r in rows:
            print(json.dumps(r, sort_keys=True))
    else:
        print(format_table(rows, read_log(config.learn_dir)))
    if config.html:
        from rlhfkit.learn.report import write_report

        print(f"learn: report written to {write_report(config.learn_dir, config.html)}")


def run_rollback(config) -> None:
    """``rlhfkit learn rollback LEARN_DIR VERSION``."""
    from rlhfkit.training.config import ConfigError

    try:
        record = rollback(config.learn_dir, config.version, config.reason)
    except versions.VersionError as e:
        raise ConfigError(str(e)) from None
    print(
        f"learn: {record['version']} is current again (was {record['from']}); logged in "
        f"{Path(config.learn_dir) / LOG_FILE}"
    )
