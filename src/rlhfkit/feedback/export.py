"""Export stored labels as training data that ``rlhfkit.data.read_records`` reads back.

==========  ==================  ==============================================================
kind        from task types     record
==========  ==================  ==============================================================
pairs       pairwise, ranking   PreferencePair (chosen/rejected; tie=True for ties; "both bad"
                                verdicts give no pair; strength -> margin; rankings -> every
                                pair with different ranks)
rankings    ranking             RankingRecord
ratings     rating              RatingRecord (scale and flags kept)
thumbs      thumbs              ThumbsRecord (KTO format)
sft         rewrite             CompletionRecord (prompt/completion) or, for conversations,
                                ConversationRecord (context + the rewrite as assistant turn)
rewrites    rewrite             RewriteRecord (original and rewrite)
==========  ==================  ==============================================================

``aggregate="none"`` (default) writes one record per label (each labeler's judgement);
``"majority"`` writes one per item: the plurality verdict (pairs from pairwise, thumbs; items
whose vote is split evenly are dropped) or the mean rating. Gold items are left out unless
``include_gold``. Each record's ``subset`` (pairs) is the project name.

Who labelled, and how far to trust them (:func:`export_labels`):

- ``labeler_key``: each per-label record carries ``labeler``, a pseudonym
  ``labeler-`` + 12 hex digits of HMAC-SHA256(key, the user's id): the same person gets the
  same pseudonym in every export of the store (so training can weigh or normalise per person),
  never the user name, and without the key it cannot be traced back or matched across stores
  (:func:`labeler_key`: ``$RLHFKIT_LABELER_KEY``, else ``<db>.labeler_key`` kept beside a SQLite
  store). Majority records have no single labeler.
- ``min_gold_accuracy``: the labels of labelers whose accuracy on the project's gold questions
  (the dashboard's figure) is below it are left out, before any majority vote.
- ``weight_by_gold``: each record's ``weight`` is its labeler's gold accuracy (training multiplies
  the record's loss by it: a labeler right on 60% of gold questions counts 0.6 of one right on
  all of them). Not with ``aggregate="majority"`` (one record per item has no one labeler).
  A labeler with no gold answers is taken at the project's pooled gold accuracy (all labelers'
  gold answers together: the best guess for someone not yet measured), for both options; a
  project without answered gold questions cannot use either.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import Connection

from rlhfkit.data import (
    CompletionRecord,
    ConversationRecord,
    PreferencePair,
    RankingRecord,
    RatingRecord,
    RewriteRecord,
    ThumbsRecord,
    write_jsonl,
)
from rlhfkit.privacy import redact_records

from . import db
from .enduser.keys import create_key_file
from .stats import gold_answers
from .tasks import render_prompt

__all__ = [
    "EXPORT_KINDS",
    "ExportResult",
    "export_labels",
    "export_records",
    "export_jsonl",
    "export_hf",
    "write_records",
    "labeler_key",
    "labeler_pseudonym",
]

LABELER_KEY_ENV = "RLHFKIT_LABELER_KEY"

EXPORT_KINDS: dict[str, tuple[str, ...]] = {
    "pairs": ("pairwise", "ranking"),
    "rankings": ("ranking",),
    "ratings": ("rating",),
    "thumbs": ("thumbs",),
    "sft": ("rewrite",),
    "rewrites": ("rewrite",),
}


def _rows(conn: Connection, project_id: int, include_gold: bool):
    L, I = db.labels, db.items
    q = (
        select(L.c.item_id, L.c.user_id, L.c.payload, I.c.prompt, I.c.messages, I.c.responses)
        .select_from(L.join(I, I.c.id == L.c.item_id))
        .where(L.c.project_id == project_id)
        .order_by(L.c.item_id, L.c.id)
    )
    if not include_gold:
        q = q.where(L.c.is_gold == False)  # noqa: E712
    return list(conn.execute(q).mappings())


def labeler_key(db_url: str) -> bytes | None:
    """The secret labeler pseudonyms are made with: ``$RLHFKIT_LABELER_KEY``, else the key file
    beside a SQLite store (``<db>.labeler_key``, 32 random bytes as hex, created owner-only on
    first use; keep it with the database, or the pseudonyms change). None for a database URL
    without the variable (there is no file to keep a key beside). ValueError, saying what to do,
    for a key file that cannot be made or read, or that is empty (never an empty key: the
    pseudonyms would be HMACs anyone can recompute)."""
    if os.environ.get(LABELER_KEY_ENV):
        return os.environ[LABELER_KEY_ENV].encode("utf-8")
    path = db.sqlite_file(db_url)
    if path is None:
        return None
    key_file = path.with_name(path.name + ".labeler_key")
    try:
        if not key_file.exists():
            create_key_file(key_file)
        key = key_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(
            f"labeler key {key_file}: {e}; make its folder writable, or set ${LABELER_KEY_ENV} "
            "(or give --with_labeler false)"
        ) from None
    if not key:
        raise ValueError(
            f"labeler key {key_file} is empty: restore it from a backup of the store (the pseudonyms "
            f"of earlier exports were made with it), or delete it to make a new key (new pseudonyms)"
        )
    return key.encode("utf-8")


def labeler_pseudonym(user_id: int, key: bytes) -> str:
    """``labeler-`` + the first 12 hex digits of HMAC-SHA256(key, "rlhfkit labeler <user id>")
    (48 bits: collisions among a project's labelers are out of reach)."""
    digest = hmac.new(key, f"rlhfkit labeler {int(user_id)}".encode(), hashlib.sha256).hexdigest()
    return "labeler-" + digest[:12]


@dataclass
class ExportResult:
    """What :func:`export_labels` made: the ``records``; with a gold threshold, the labels and
    labelers left out (``dropped_labels``; ``dropped_labelers`` maps each one's pseudonym, or
    ``user-<id>`` without a key, to (gold accuracy, gold answers)); ``gold_pooled`` the project's
    pooled gold accuracy when gold answers were used."""

    records: list
    min_gold_accuracy: float | None = None
    weight_by_gold: bool = False
    dropped_labels: int = 0
    dropped_labelers: dict = field(default_factory=dict)
    gold_pooled: float | None = None

    def note(self) -> str:
        """What the gold-accuracy options did, as the tail of the export command's last line."""
        note = ""
        if self.min_gold_accuracy is not None:
            who = ", ".join(f"{k} {acc:.3f} on {n} gold answers" for k, (acc, n) in self.dropped_labelers.items())
            n = len(self.dropped_labelers)
            note += (
                f"; left out {self.dropped_labels} labels of {n} labeler{'' if n == 1 else 's'} under gold "
                f"accuracy {self.min_gold_accuracy:g}" + (f" ({who})" if who else "")
            )
        if self.weight_by_gold:
            note += (
                f"; weight = the labeler's gold accuracy (the pooled {self.gold_pooled:.3f} for labelers "
                "without gold answers)"
            )
        return note


def export_records(
    conn: Connection, project_id: int, kind: str, *, include_gold: bool = False, aggregate: str = "none", **trust
) -> list:
    """The records of ``kind`` made from a project's labels (see the module docstring);
    ``trust``: ``labeler_key``, ``min_gold_accuracy``, ``weight_by_gold`` of :func:`export_labels`."""
    return export_labels(conn, project_id, kind, include_gold=include_gold, aggregate=aggregate, **trust).records


def export_labels(
    conn: Connection,
    project_id: int,
    kind: str,
    *,
    include_gold: bool = False,
    aggregate: str = "none",
    labeler_key: bytes | None = None,
    min_gold_accuracy: float | None = None,
    weight_by_gold: bool = False,
) -> ExportResult:
    """The records of ``kind`` made from a project's labels, with labeler pseudonyms (given a
    ``labeler_key``), labels of labelers under ``min_gold_accuracy`` left out, and weights by gold
    accuracy (see the module docstring). ValueError for a combination that cannot be made."""
    if kind not in EXPORT_KINDS:
        raise ValueError(f"unknown export kind {kind!r}; expected one of {', '.join(EXPORT_KINDS)}")
    if aggregate not in ("none", "majority"):
        raise ValueError("aggregate must be 'none' or 'majority'")
    if weight_by_gold and aggregate == "majority":
        raise ValueError(
            "weight_by_gold weighs each label by its labeler; aggregate majority makes one record per "
            "item: use min_gold_accuracy to keep low-accuracy labelers out of the vote"
        )
    if min_gold_accuracy is not None and not 0 <= min_gold_accuracy <= 1:
        raise ValueError(f"min_gold_accuracy must be in [0, 1], got {min_gold_accuracy}")
    project = conn.execute(select(db.projects).where(db.projects.c.id == project_id)).mappings().first()
    if project is None:
        raise LookupError(f"no project {project_id}")
    ttype, name = project["task_type"], project["name"]
    if ttype not in EXPORT_KINDS[kind]:
        raise ValueError(
            f"project {name!r} holds {ttype} tasks; export kind {kind!r} needs {' or '.join(EXPORT_KINDS[kind])}"
        )
    rows = _rows(conn, project_id, include_gold)
    result = ExportResult(records=[], min_gold_accuracy=min_gold_accuracy, weight_by_gold=weight_by_gold)
    accuracy: dict[int, float] = {}
    if min_gold_accuracy is not None or weight_by_gold:
        accuracy, result.gold_pooled = _gold_accuracy(conn, project_id, name, {r["user_id"] for r in rows})
    if min_gold_accuracy is not None:
        answers = gold_answers(conn, project_id)
        low = {u for u, a in accuracy.items() if a < min_gold_accuracy}
        result.dropped_labels = sum(1 for r in rows if r["user_id"] in low)
        result.dropped_labelers = {
            (labeler_pseudonym(u, labeler_key) if labeler_key else f"user-{u}"): (
                accuracy[u],
                answers.get(u, (0, 0))[1],
            )
            for u in sorted(low)
        }
        rows = [r for r in rows if r["user_id"] not in low]
    if aggregate == "majority":
        rows = _majority(rows, ttype)
    for r in rows:
        who = {}
        if aggregate == "none" and labeler_key is not None:
            who["labeler"] = labeler_pseudonym(r["user_id"], labeler_key)
        if weight_by_gold:
            who["weight"] = accuracy[r["user_id"]]
        result.records.extend(_records_of(r, ttype, kind, project, who))
    return result


def _gold_accuracy(conn: Connection, project_id: int, name: str, users: set) -> tuple[dict, float]:
    """(``{user id: gold accuracy}`` for ``users``, pooled accuracy): a labeler without gold
    answers gets the pooled one. ValueError when the project has no answered gold questions."""
    answers = gold_answers(conn, project_id)
    answered = sum(n for _, n in answers.values())
    if not answered:
        raise ValueError(
            f"project {name!r} has no answered gold questions: min_gold_accuracy and weight_by_gold "
            "need them (import items with a `gold` answer into a project with gold_rate above 0)"
        )
    pooled = sum(c for c, _ in answers.values()) / answered
    return {u: (answers[u][0] / answers[u][1] if u in answers else pooled) for u in users}, pooled


def _records_of(r, ttype: str, kind: str, project, who: dict) -> list:
    """The records one label row (or majority row) gives; ``who``: its ``labeler`` / ``weight``."""
    name = project["name"]
    prompt = render_prompt(r["prompt"], r["messages"])
    texts = [x["text"] for x in r["responses"]]
    p = r["payload"]
    if ttype == "pairwise":
        v = p["verdict"]
        if v == "both_bad":
            return []
        if v == "tie":
            return [PreferencePair(prompt, texts[0], texts[1], tie=True, subset=name, **who)]
        w = 0 if v == "first" else 1
        margin = None if p.get("strength") is None else float(p["strength"])
        return [PreferencePair(prompt, texts[w], texts[1 - w], margin=margin, subset=name, **who)]
    if ttype == "ranking":
        rec = RankingRecord(prompt, texts, list(p["ranks"]), **who)
        return rec.to_pairs(subset=name) if kind == "pairs" else [rec]
    if ttype == "rating":
        return [
            RatingRecord(
                prompt,
                texts[0],
                float(p["rating"]),
                float(project["scale_min"]),
                float(project["scale_max"]),
                list(p.get("flags", [])),
                **who,
            )
        ]
    if ttype == "thumbs":
        return [ThumbsRecord(prompt, texts[0], bool(p["label"]), **who)]
    if ttype == "rewrite":
        if kind == "rewrites":
            return [RewriteRecord(prompt, texts[0], p["rewrite"], **who)]
        if r["messages"]:
            return [ConversationRecord(list(r["messages"]) + [{"role": "assistant", "content": p["rewrite"]}], **who)]
        return [CompletionRecord(prompt, p["rewrite"], **who)]
    return []


def _majority(rows: list, ttype: str) -> list:
    by_item: dict = defaultdict(list)
    for r in rows:
        by_item[r["item_id"]].append(r)
    out = []
    for group in by_item.values():
        base = dict(group[0])
        if ttype == "rating":
            ratings = [g["payload"]["rating"] for g in group]
            flags = sorted({f for g in group for f in g["payload"].get("flags", [])})
            base["payload"] = {"rating": sum(ratings) / len(ratings), "flags": flags}
        elif ttype in ("pairwise", "thumbs"):
            key = "verdict" if ttype == "pairwise" else "label"
            votes = Counter(g["payload"][key] for g in group).most_common()
            if len(votes) > 1 and votes[0][1] == votes[1][1]:
                continue  # split vote: no majority
            base["payload"] = {key: votes[0][0]}
        else:  # ranking and rewrite labels are not merged
            out.extend(group)
            continue
        out.append(base)
    return out


def write_records(records: list, path, format: str = "jsonl") -> int:
    """Write records as JSON lines (atomically) or as a Hugging Face ``datasets.Dataset``
    (``save_to_disk`` folder, read it back with ``datasets.load_from_disk``); returns the count."""
    if format == "jsonl":
        return write_jsonl(path, records)
    if format != "hf":
        raise ValueError("format must be jsonl or hf")
    import datasets  # only here: a heavy import that the JSONL exports never need

    recs = [r.to_dict() for r in records]
    # every column any record has (a field left out while None, e.g. labeler, is None there):
    # Dataset.from_list would take the first record's columns only
    columns = list(dict.fromkeys(k for d in recs for k in d))
    datasets.Dataset.from_dict({k: [d.get(k) for d in recs] for k in columns}).save_to_disk(str(Path(path)))
    return len(recs)


def export_jsonl(conn: Connection, project_id: int, kind: str, path, *, redact: bool = False, **kw) -> int:
    """Write the export as JSON lines; ``redact`` replaces personal data (``rlhfkit.privacy``)."""
    return write_records(_maybe_redacted(export_records(conn, project_id, kind, **kw), redact), path, "jsonl")


def export_hf(conn: Connection, project_id: int, kind: str, path, *, redact: bool = False, **kw) -> int:
    """Write the export as a Hugging Face ``datasets.Dataset`` folder."""
    return write_records(_maybe_redacted(export_records(conn, project_id, kind, **kw), redact), path, "hf")


def redact_export(records: list) -> tuple[list, Counter, int]:
    """Exported records with personal data replaced (``rlhfkit.privacy``): the records, the count
    per kind, and how many pairs were left out because their two answers differed only in what
    was redacted (one text now: no preference is left)."""
    records, counts = redact_records(records)
    kept = [r for r in records if getattr(r, "chosen", None) is None or r.chosen != r.rejected]
    return kept, counts, len(records) - len(kept)


def _maybe_redacted(records: list, redact: bool) -> list:
    return redact_export(records)[0] if redact else records
