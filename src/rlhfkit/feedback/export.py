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
"""
from __future__ import annotations

from collections import Counter, defaultdict
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

from . import db
from .tasks import render_prompt

__all__ = ["EXPORT_KINDS", "export_records", "export_jsonl", "export_hf", "write_records"]

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
    q = (select(L.c.item_id, L.c.user_id, L.c.payload, I.c.prompt, I.c.messages, I.c.responses)
         .select_from(L.join(I, I.c.id == L.c.item_id))
         .where(L.c.project_id == project_id).order_by(L.c.item_id, L.c.id))
    if not include_gold:
        q = q.where(L.c.is_gold == False)  # noqa: E712
    return list(conn.execute(q).mappings())


def export_records(conn: Connection, project_id: int, kind: str, *, include_gold: bool = False,
                   aggregate: str = "none") -> list:
    """The records of ``kind`` made from a project's labels (see the module docstring)."""
    if kind not in EXPORT_KINDS:
        raise ValueError(f"unknown export kind {kind!r}; expected one of {', '.join(EXPORT_KINDS)}")
    if aggregate not in ("none", "majority"):
        raise ValueError("aggregate must be 'none' or 'majority'")
    project = conn.execute(select(db.projects).where(db.projects.c.id == project_id)).mappings().first()
    if project is None:
        raise LookupError(f"no project {project_id}")
    ttype, name = project["task_type"], project["name"]
    if ttype not in EXPORT_KINDS[kind]:
        raise ValueError(f"project {name!r} holds {ttype} tasks; export kind {kind!r} needs "
                         f"{' or '.join(EXPORT_KINDS[kind])}")
    rows = _rows(conn, project_id, include_gold)
    if aggregate == "majority":
        rows = _majority(rows, ttype)
    out: list = []
    for r in rows:
        prompt = render_prompt(r["prompt"], r["messages"])
        texts = [x["text"] for x in r["responses"]]
        p = r["payload"]
        if ttype == "pairwise":
            v = p["verdict"]
            if v == "both_bad":
                continue
            if v == "tie":
                out.append(PreferencePair(prompt, texts[0], texts[1], tie=True, subset=name))
            else:
                w = 0 if v == "first" else 1
                margin = None if p.get("strength") is None else float(p["strength"])
                out.append(PreferencePair(prompt, texts[w], texts[1 - w], margin=margin, subset=name))
        elif ttype == "ranking":
            rec = RankingRecord(prompt, texts, list(p["ranks"]))
            out.extend(rec.to_pairs(subset=name) if kind == "pairs" else [rec])
        elif ttype == "rating":
            out.append(RatingRecord(prompt, texts[0], float(p["rating"]), float(project["scale_min"]),
                                    float(project["scale_max"]), list(p.get("flags", []))))
        elif ttype == "thumbs":
            out.append(ThumbsRecord(prompt, texts[0], bool(p["label"])))
        elif ttype == "rewrite":
            if kind == "rewrites":
                out.append(RewriteRecord(prompt, texts[0], p["rewrite"]))
            elif r["messages"]:
                out.append(ConversationRecord(list(r["messages"]) + [{"role": "assistant",
                                                                      "content": p["rewrite"]}]))
            else:
                out.append(CompletionRecord(prompt, p["rewrite"]))
    return out


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
    import datasets

    recs = [r.to_dict() for r in records]
    datasets.Dataset.from_list(recs).save_to_disk(str(Path(path)))
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
    from rlhfkit.privacy import redact_records

    records, counts = redact_records(records)
    kept = [r for r in records if getattr(r, "chosen", None) is None or r.chosen != r.rejected]
    return kept, counts, len(records) - len(kept)


def _maybe_redacted(records: list, redact: bool) -> list:
    return redact_export(records)[0] if redact else records