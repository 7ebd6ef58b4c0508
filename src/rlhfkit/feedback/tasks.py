"""Task types: what an imported item looks like, what a verdict looks like, and how a verdict given
on the screen (positions A, B, C ... in a per-task random order) becomes a stored canonical label
(indices of the responses as imported, so model identity and screen order never leak into data).

Task types and their verdicts (API body of ``POST /api/tasks/{id}/label``):

==========  ===================  ===============================================================
type        responses per item   verdict (screen terms)            -> stored payload
==========  ===================  ===============================================================
pairwise    2                    ``{"choice": "A"|"B"|"tie"|"both_bad", "strength": 1-3|null}``
                                 -> ``{"verdict": "first"|"second"|"tie"|"both_bad", "strength"}``
ranking     2-26                 ``{"ranking": ["C", "A", "B"]}`` (best first) or
                                 ``{"ranks": [r_A, r_B, ...]}`` (0 = best, ties allowed)
                                 -> ``{"ranks": [rank of response 0, rank of response 1, ...]}``
rating      1                    ``{"rating": int in [scale_min, scale_max], "flags": [...]}``
                                 flags from ``harmful``, ``untruthful``, ``off_topic``
thumbs      1                    ``{"label": true|false}``
rewrite     1                    ``{"rewrite": "the corrected answer"}`` (a demonstration)
==========  ===================  ===============================================================

Import line (JSONL, one item a line)::

    {"prompt": "...", "responses": ["...", "..."]}            # or [{"text", "model"}, ...]
    {"messages": [{"role": "user", "content": "..."}, ...], "responses": [...]}   # multi-turn
    {"prompt": "...", "chosen": "...", "rejected": "..."}     # pairwise from a pair file
    {"prompt": "...", "completion": "..."}                    # one-response task types
    optional: "id" (your id), "models" (names, hidden from labelers), "gold" (known answer:
    pairwise "first"|"second"|"tie"|"both_bad", ranking ranks, rating number, thumbs bool)
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from rlhfkit.data import ROLES, DataError

__all__ = [
    "TASK_TYPES",
    "FLAGS",
    "PAIR_VERDICTS",
    "MAX_FIELD_CHARS",
    "LabelError",
    "parse_item",
    "parse_items",
    "drop_duplicate_items",
    "canonical_label",
    "grade",
    "category",
    "screen_keys",
    "render_prompt",
]

# type: (min responses, max responses)
TASK_TYPES: dict[str, tuple[int, int]] = {
    "pairwise": (2, 2),
    "ranking": (2, 26),
    "rating": (1, 1),
    "thumbs": (1, 1),
    "rewrite": (1, 1),
}
FLAGS = ("harmful", "untruthful", "off_topic")
PAIR_VERDICTS = ("first", "second", "tie", "both_bad")
MAX_EXTERNAL_ID = 200  # characters of an item's own id (the external_id column)
RATING_GOLD_TOLERANCE = 1  # a rating within this many points of the gold rating counts as correct
# the longest text an imported item may hold in one field (prompt, a message, a response): what a
# labeler can read, and what a rewrite may be (canonical_label); larger is a mistake or an attack
MAX_FIELD_CHARS = 100_000


class LabelError(ValueError):
    """A verdict that does not fit its task (answered 422)."""


def screen_keys(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


def render_prompt(prompt: str, messages: list[dict] | None) -> str:
    """The item's context as one prompt string (exports): the prompt, or the conversation rendered
    like ``rlhfkit.data.render_dialogue`` (a lone user turn is its text alone)."""
    if not messages:
        return prompt
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    names = {"user": "User", "assistant": "Assistant", "system": "System"}
    return "\n\n".join(f"{names[m['role']]}: {m['content']}" for m in messages)


# ----------------------------------------------------------------------------- import
def _err(msg: str, field: str, reason: str = "invalid_value") -> DataError:
    return DataError(msg, field=field, reason=reason)


def _plain_text(v: Any, field: str, allow_empty: bool = False) -> str:
    if not isinstance(v, str):
        raise _err(f"expected a string, got {'null' if v is None else type(v).__name__}", field, "wrong_type")
    if not allow_empty and not v.strip():
        raise _err("expected a non-empty string", field, "empty_text")
    try:  # JSON's "\ud800" parses to a lone surrogate: no database column or export can hold it
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise _err("not valid Unicode text (a lone surrogate such as \\ud800)", field) from None
    if "\x00" in v:  # JSON's "\u0000": PostgreSQL text columns refuse it
        raise _err("a NUL character (\\u0000) is not text any store keeps", field)
    return v


def parse_item(
    d: Any, task_type: str, scale: tuple[int, int] = (1, 7), max_chars: int | None = MAX_FIELD_CHARS
) -> dict:
    """Validate one import record; returns the item columns (prompt, messages, responses,
    is_gold, gold, external_id). Raises :class:`DataError` naming the field; a text longer than
    ``max_chars`` characters is one (None: no limit)."""

    def _text(v: Any, field: str, allow_empty: bool = False) -> str:
        v = _plain_text(v, field, allow_empty)
        if max_chars is not None and len(v) > max_chars:
            raise _err(f"{len(v)} characters, more than the limit of {max_chars} (max_field_chars)", field, "too_long")
        return v

    if not isinstance(d, dict):
        raise DataError(f"expected a JSON object, got {type(d).__name__}", reason="not_object")
    lo_n, hi_n = TASK_TYPES[task_type]
    messages = None
    if "messages" in d and d["messages"] is not None:
        if not isinstance(d["messages"], list) or not d["messages"]:
            raise _err("expected a non-empty list of {role, content}", "messages", "wrong_type")
        messages = []
        for i, m in enumerate(d["messages"]):
            name = f"messages[{i}]"
            if not isinstance(m, dict):
                raise _err("expected an object with role and content", name, "wrong_type")
            for k in ("role", "content"):
                if k not in m:
                    raise _err("missing required field", f"{name}.{k}", "missing_field")
            role = _text(m["role"], f"{name}.role")
            if role not in ROLES:
                raise _err(f"expected one of {', '.join(ROLES)}, got {role!r}", f"{name}.role")
            messages.append({"role": role, "content": _text(m["content"], f"{name}.content")})
        prompt = d.get("prompt")
        prompt = render_prompt("", messages) if prompt is None else _text(prompt, "prompt", True)
    else:
        if "prompt" not in d:
            raise _err("missing required field (or give 'messages')", "prompt", "missing_field")
        prompt = _text(d["prompt"], "prompt", allow_empty=True)

    if "responses" in d:
        raw = d["responses"]
        if not isinstance(raw, list):
            raise _err("expected a list of responses", "responses", "wrong_type")
        responses = []
        for i, r in enumerate(raw):
            if isinstance(r, dict):
                if "text" not in r:
                    raise _err("missing required field", f"responses[{i}].text", "missing_field")
                responses.append({"text": _text(r["text"], f"responses[{i}].text"), "model": r.get("model")})
            else:
                responses.append({"text": _text(r, f"responses[{i}]"), "model": None})
    elif "chosen" in d or "rejected" in d:
        if task_type != "pairwise":
            raise _err(f"chosen/rejected records fit pairwise projects, not {task_type}", "chosen")
        for k in ("chosen", "rejected"):
            if k not in d:
                raise _err("missing required field", k, "missing_field")
        responses = [
            {"text": _text(d["chosen"], "chosen"), "model": None},
            {"text": _text(d["rejected"], "rejected"), "model": None},
        ]
    elif "completion" in d:
        responses = [{"text": _text(d["completion"], "completion"), "model": d.get("model")}]
    else:
        raise _err("missing required field (or 'completion' / 'chosen'+'rejected')", "responses", "missing_field")
    if not lo_n <= len(responses) <= hi_n:
        want = str(lo_n) if lo_n == hi_n else f"{lo_n}-{hi_n}"
        raise _err(f"a {task_type} item needs {want} responses, got {len(responses)}", "responses")
    models = d.get("models")
    if models is not None:
        if not isinstance(models, list) or len(models) != len(responses):
            raise _err(f"expected a list of {len(responses)} model names", "models")
        for i, m in enumerate(models):
            responses[i]["model"] = None if m is None else _text(m, f"models[{i}]")

    gold = None
    if d.get("gold") is not None:
        gold = _parse_gold(d["gold"], task_type, len(responses), scale)
    ext = d.get("id")
    if ext is not None and not isinstance(ext, (str, int)):
        raise _err("expected a string or integer id", "id", "wrong_type")
    if ext is not None:
        ext = _text(str(ext), "id", allow_empty=True)
        if len(ext) > MAX_EXTERNAL_ID:  # the column's width (PostgreSQL enforces it)
            raise _err(f"expected at most {MAX_EXTERNAL_ID} characters, got {len(ext)}", "id")
    return {
        "prompt": prompt,
        "messages": messages,
        "responses": responses,
        "is_gold": gold is not None,
        "gold": gold,
        "external_id": ext,
    }


def _parse_gold(g: Any, task_type: str, n: int, scale: tuple[int, int]) -> Any:
    if task_type == "pairwise":
        if isinstance(g, int) and not isinstance(g, bool) and g in (0, 1):
            g = PAIR_VERDICTS[g]
        if g not in PAIR_VERDICTS:
            raise _err(f"expected one of {', '.join(PAIR_VERDICTS)} (or 0 / 1)", "gold")
        return g
    if task_type == "ranking":
        if (
            not isinstance(g, list)
            or len(g) != n
            or any(isinstance(r, bool) or not isinstance(r, int) or r < 0 for r in g)
        ):
            raise _err(f"expected a list of {n} ranks (integers, 0 = best)", "gold")
        return g
    if task_type == "rating":
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not scale[0] <= g <= scale[1]:
            raise _err(f"expected a rating in [{scale[0]}, {scale[1]}]", "gold")
        return g
    if task_type == "thumbs":
        if not isinstance(g, bool):
            raise _err("expected true or false", "gold", "wrong_type")
        return g
    raise _err(f"{task_type} items cannot be gold questions", "gold")


def drop_duplicate_items(items: list[dict]) -> tuple[list[dict], int]:
    """Parsed items without exact repeats (every column equal: prompt, messages, responses with
    their models, gold, id), the first copy kept in order; and how many went. A copy would be
    labelled twice as two items, and its labels could land on both sides of a held-out split."""
    import json

    seen: set[str] = set()
    kept = []
    for it in items:
        key = json.dumps(it, sort_keys=True, ensure_ascii=False)
        if key not in seen:
            seen.add(key)
            kept.append(it)
    return kept, len(items) - len(kept)


def redact_items(items: list[dict]) -> tuple[list[dict], Counter, int]:
    """Replace personal data (``rlhfkit.privacy``) in parsed items' prompts, messages and responses
    before labelers see them. Returns the items kept, the count per kind, and how many items were
    left out because two of their responses became the same text (a comparison of two equal
    answers teaches nothing). A prompt rendered from the messages is rendered again from the
    redacted messages (its data counted once)."""
    from rlhfkit.privacy import redact_value

    counts: Counter = Counter()
    kept = []
    for it in items:
        rendered = it["messages"] is not None and it["prompt"] == render_prompt("", it["messages"])
        it["responses"] = redact_value(it["responses"], counts)
        if it["messages"] is not None:
            it["messages"] = redact_value(it["messages"], counts)
        it["prompt"] = render_prompt("", it["messages"]) if rendered else redact_value(it["prompt"], counts)
        texts = [r["text"] for r in it["responses"]]
        if len(set(texts)) == len(texts):
            kept.append(it)
    return kept, counts, len(items) - len(kept)


def parse_items(
    source, task_type: str, scale: tuple[int, int] = (1, 7), max_chars: int | None = MAX_FIELD_CHARS
) -> list[dict]:
    """Validate every record of a JSONL / JSON-list file, a ``datasets`` folder or a list of dicts;
    the first bad one raises :class:`DataError` with file, line (or index) and field (a text over
    ``max_chars`` characters too). Nothing is returned partially."""
    from rlhfkit.data.readers import iter_raw, line_limit

    label, it = iter_raw(source, line_limit(max_chars))
    out = []
    for loc, value in it:
        if isinstance(value, DataError):
            raise value
        try:
            out.append(parse_item(value, task_type, scale, max_chars))
        except DataError as e:
            raise e.located(path=label, **loc) from None
    if not out:
        raise DataError("no items in the file", path=label, reason="invalid_value")
    return out


# ----------------------------------------------------------------------------- verdicts
def canonical_label(task_type: str, body: dict, order: list[int], scale: tuple[int, int] = (1, 7)) -> dict:
    """The stored payload for a verdict given in screen terms; ``order[pos]`` is the response index
    shown at screen position ``pos``. Raises :class:`LabelError`."""
    if not isinstance(body, dict):
        raise LabelError("expected a JSON object")
    n = len(order)
    keys = screen_keys(n)
    if task_type == "pairwise":
        choice = body.get("choice")
        if choice in ("tie", "both_bad"):
            verdict = choice
        elif choice in keys:
            verdict = PAIR_VERDICTS[order[keys.index(choice)]]
        else:
            raise LabelError("choice must be 'A', 'B', 'tie' or 'both_bad'")
        strength = body.get("strength")
        if strength is not None and (isinstance(strength, bool) or strength not in (1, 2, 3)):
            raise LabelError("strength must be 1, 2, 3 or null")
        if verdict in ("tie", "both_bad"):
            strength = None
        return {"verdict": verdict, "strength": strength}
    if task_type == "ranking":
        if body.get("ranking") is not None:
            ranking = body["ranking"]
            if not isinstance(ranking, list) or sorted(map(str, ranking)) != keys:
                raise LabelError(f"ranking must list each of {', '.join(keys)} once, best first")
            screen_ranks = [ranking.index(k) for k in keys]
        else:
            screen_ranks = body.get("ranks")
            if (
                not isinstance(screen_ranks, list)
                or len(screen_ranks) != n
                or any(isinstance(r, bool) or not isinstance(r, int) or not 0 <= r < n for r in screen_ranks)
            ):
                raise LabelError(f"give 'ranking' (keys best first) or 'ranks' ({n} integers, 0 = best)")
        ranks = [0] * n
        for pos, r in enumerate(screen_ranks):
            ranks[order[pos]] = r
        return {"ranks": ranks}
    if task_type == "rating":
        r = body.get("rating")
        if isinstance(r, bool) or not isinstance(r, int) or not scale[0] <= r <= scale[1]:
            raise LabelError(f"rating must be an integer in [{scale[0]}, {scale[1]}]")
        flags = body.get("flags") or []
        if not isinstance(flags, list) or any(f not in FLAGS for f in flags):
            raise LabelError(f"flags must be a list drawn from {', '.join(FLAGS)}")
        return {"rating": r, "flags": sorted(set(flags))}
    if task_type == "thumbs":
        label = body.get("label")
        if not isinstance(label, bool):
            raise LabelError("label must be true (thumbs up) or false (thumbs down)")
        return {"label": label}
    if task_type == "rewrite":
        text = body.get("rewrite")
        if not isinstance(text, str) or not text.strip():
            raise LabelError("rewrite must be a non-empty string")
        if len(text) > 100_000:
            raise LabelError("rewrite is longer than 100000 characters")
        return {"rewrite": text}
    raise LabelError(f"unknown task type {task_type!r}")


def category(task_type: str, payload: dict) -> Any:
    """The value compared between labelers for agreement (None: not measured). Pairwise: the
    verdict (nominal); ranking: which response came first (nominal; "tie" when shared); rating:
    the rating (ordinal); thumbs: the label (nominal); rewrite: not measured."""
    if task_type == "pairwise":
        return payload["verdict"]
    if task_type == "ranking":
        ranks = payload["ranks"]
        best = min(ranks)
        tops = [i for i, r in enumerate(ranks) if r == best]
        return tops[0] if len(tops) == 1 else "tie"
    if task_type == "rating":
        return payload["rating"]
    if task_type == "thumbs":
        return payload["label"]
    return None


def grade(task_type: str, payload: dict, gold: Any) -> bool | None:
    """Whether a label on a gold item matches the known answer (ranking: same top response;
    rating: within ``RATING_GOLD_TOLERANCE``)."""
    if gold is None:
        return None
    if task_type == "pairwise":
        return payload["verdict"] == gold
    if task_type == "ranking":
        return category("ranking", payload) == category("ranking", {"ranks": gold})
    if task_type == "rating":
        return abs(payload["rating"] - gold) <= RATING_GOLD_TOLERANCE
    if task_type == "thumbs":
        return payload["label"] == gold
    return None
