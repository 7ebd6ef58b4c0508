"""Record dataclasses for every kind of feedback, following Hugging Face ``datasets`` / TRL column
conventions (``prompt``/``completion``, ``messages``, ``prompt``/``chosen``/``rejected``,
``prompt``/``completion``/``label``).

Every record has ``from_dict(d)`` (validates and raises :class:`DataError` naming the field; the
reader adds file and line) and ``to_dict()`` (plain JSON-able dict; ``from_dict(r.to_dict()) == r``).
Unknown keys are ignored by ``from_dict`` (datasets often carry extra columns).

Every judged record (all but :class:`PromptRecord`) may carry who gave it and how much it counts:
``labeler`` (a pseudonymous id, e.g. ``labeler-3f2a...`` from ``rlhfkit feedback export``; never a
user name) and ``weight`` (a number >= 0; training multiplies the record's loss by it and
normalises by the sum of weights; absent = 1). ``to_dict`` leaves them out while they are None,
so records without them write exactly as before.

Validation rules shared by all records:
- ``prompt`` is a string and may be empty (implicit-prompt data), except in :class:`PromptRecord`;
- response texts (``completion``, ``chosen``, ``rejected``, ``responses[i]``, ``original``,
  ``rewrite``, message ``content``) are non-empty strings (not only whitespace);
- numbers are ``int``/``float`` but never ``bool``; booleans must be real ``bool``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from .errors import DataError

__all__ = [
    "PromptRecord",
    "CompletionRecord",
    "ConversationRecord",
    "PreferencePair",
    "RankingRecord",
    "RatingRecord",
    "ThumbsRecord",
    "RewriteRecord",
    "ROLES",
    "record_texts",
]

ROLES = ("system", "user", "assistant")


# ----------------------------------------------------------------------------- validators
def _tname(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _check_mapping(d: Any) -> None:
    if not isinstance(d, dict):
        raise DataError(f"expected a JSON object, got {_tname(d)}", reason="not_object")


def _get(d: dict, name: str) -> Any:
    if name not in d:
        raise DataError("missing required field", field=name, reason="missing_field")
    return d[name]


def _text(v: Any, name: str, *, allow_empty: bool = False) -> str:
    if not isinstance(v, str):
        what = "a string" if allow_empty else "a non-empty string"
        raise DataError(f"expected {what}, got {_tname(v)}", field=name, reason="wrong_type")
    if not allow_empty and not v.strip():
        raise DataError("expected a non-empty string, got an empty string", field=name, reason="empty_text")
    return v


def _number(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise DataError(f"expected a number, got {_tname(v)}", field=name, reason="wrong_type")
    try:
        finite = math.isfinite(v)
    except OverflowError:  # an integer beyond the float range (JSON has no size limit on them)
        finite = False
    if not finite:
        shown = repr(v) if isinstance(v, float) else "an integer beyond the float range"
        raise DataError(f"expected a finite number, got {shown}", field=name, reason="invalid_value")
    return float(v)


def _bool(v: Any, name: str) -> bool:
    if not isinstance(v, bool):
        raise DataError(f"expected true or false, got {_tname(v)}", field=name, reason="wrong_type")
    return v


def _list(v: Any, name: str) -> list:
    if not isinstance(v, (list, tuple)):
        raise DataError(f"expected a list, got {_tname(v)}", field=name, reason="wrong_type")
    return list(v)


def record_texts(record: Any) -> list[tuple[str, str]]:
    """(field, text) for every text in a record (used for the ``max_chars`` length check)."""
    out: list[tuple[str, str]] = []

    def walk(v: Any, name: str) -> None:
        if isinstance(v, str):
            out.append((name, v))
        elif isinstance(v, dict):
            for k, x in v.items():
                walk(x, f"{name}.{k}" if name else str(k))
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                walk(x, f"{name}[{i}]")

    walk(record.to_dict() if hasattr(record, "to_dict") else record, "")
    return out


def _labeler(d: dict) -> str | None:
    v = d.get("labeler")
    if v is None:
        return None
    if not isinstance(v, (str, int)) or isinstance(v, bool) or (isinstance(v, str) and not v.strip()):
        raise DataError(
            f"expected a non-empty labeler id (string), got {_tname(v)}", field="labeler", reason="wrong_type"
        )
    return str(v)


def _weight(d: dict) -> float | None:
    v = d.get("weight")
    if v is None:
        return None
    w = _number(v, "weight")
    if w < 0:
        raise DataError(f"expected a weight >= 0, got {w:g}", field="weight", reason="invalid_value")
    return w


OPTIONAL_FIELDS = ("labeler", "weight")  # written only when set


class _Record:
    kind: ClassVar[str] = ""

    def to_dict(self) -> dict:
        d = asdict(self)  # type: ignore[call-overload]
        for k in OPTIONAL_FIELDS:
            if k in d and d[k] is None:
                del d[k]
        return d


# ----------------------------------------------------------------------------- records
@dataclass
class PromptRecord(_Record):
    """A prompt for generation (RL rollouts). ``{"prompt": str}``, non-empty."""

    prompt: str
    kind: ClassVar[str] = "prompts"

    @classmethod
    def from_dict(cls, d: dict) -> "PromptRecord":
        _check_mapping(d)
        return cls(prompt=_text(_get(d, "prompt"), "prompt"))


@dataclass
class CompletionRecord(_Record):
    """A demonstration ``{"prompt", "completion"}``; ``prompt`` may be "" (plain language modelling)."""

    prompt: str
    completion: str
    labeler: str | None = None
    weight: float | None = None
    kind: ClassVar[str] = "sft"

    @classmethod
    def from_dict(cls, d: dict) -> "CompletionRecord":
        _check_mapping(d)
        return cls(
            prompt=_text(_get(d, "prompt"), "prompt", allow_empty=True),
            completion=_text(_get(d, "completion"), "completion"),
            labeler=_labeler(d),
            weight=_weight(d),
        )


@dataclass
class ConversationRecord(_Record):
    """A chat ``{"messages": [{"role", "content"}, ...]}``; roles system/user/assistant; at least
    one assistant turn (the turns trained on)."""

    messages: list[dict]
    labeler: str | None = None
    weight: float | None = None
    kind: ClassVar[str] = "conversations"

    @classmethod
    def from_dict(cls, d: dict) -> "ConversationRecord":
        _check_mapping(d)
        msgs = _list(_get(d, "messages"), "messages")
        out = []
        for i, m in enumerate(msgs):
            name = f"messages[{i}]"
            if not isinstance(m, dict):
                raise DataError(
                    f"expected an object with role and content, got {_tname(m)}", field=name, reason="wrong_type"
                )
            role = _text(_get_sub(m, "role", name), f"{name}.role")
            if role not in ROLES:
                raise DataError(
                    f"expected one of {', '.join(ROLES)}, got {role!r}", field=f"{name}.role", reason="invalid_value"
                )
            content = _text(_get_sub(m, "content", name), f"{name}.content")
            out.append({"role": role, "content": content})
        if not any(m["role"] == "assistant" for m in out):
            raise DataError("expected at least one assistant turn", field="messages", reason="invalid_value")
        return cls(messages=out, labeler=_labeler(d), weight=_weight(d))

    def to_dict(self) -> dict:
        d = {"messages": [{"role": m["role"], "content": m["content"]} for m in self.messages]}
        return {**d, **{k: getattr(self, k) for k in OPTIONAL_FIELDS if getattr(self, k) is not None}}


def _get_sub(m: dict, key: str, parent: str) -> Any:
    if key not in m:
        raise DataError("missing required field", field=f"{parent}.{key}", reason="missing_field")
    return m[key]


@dataclass
class PreferencePair(_Record):
    """``{"prompt", "chosen", "rejected"}`` plus optional ``margin`` (strength of preference, e.g.
    a rating difference), ``tie`` (the two are equally good; chosen/rejected order is then
    arbitrary) and ``subset`` (source name, for per-subset evaluation)."""

    prompt: str
    chosen: str
    rejected: str
    margin: float | None = None
    tie: bool = False
    subset: str | None = None
    labeler: str | None = None
    weight: float | None = None
    kind: ClassVar[str] = "pairs"

    @classmethod
    def from_dict(cls, d: dict) -> "PreferencePair":
        _check_mapping(d)
        margin = d.get("margin")
        subset = d.get("subset")
        tie = d.get("tie", False)
        return cls(
            prompt=_text(_get(d, "prompt"), "prompt", allow_empty=True),
            chosen=_text(_get(d, "chosen"), "chosen"),
            rejected=_text(_get(d, "rejected"), "rejected"),
            margin=None if margin is None else _number(margin, "margin"),
            tie=False if tie is None else _bool(tie, "tie"),
            subset=None if subset is None else _text(subset, "subset", allow_empty=True),
            labeler=_labeler(d),
            weight=_weight(d),
        )


@dataclass
class RankingRecord(_Record):
    """``{"prompt", "responses": [str, ...], "ranks": [int, ...]}``: rank 0 is best, equal ranks
    are ties; at least two responses."""

    prompt: str
    responses: list[str]
    ranks: list[int]
    labeler: str | None = None
    weight: float | None = None
    kind: ClassVar[str] = "rankings"

    @classmethod
    def from_dict(cls, d: dict) -> "RankingRecord":
        _check_mapping(d)
        prompt = _text(_get(d, "prompt"), "prompt", allow_empty=True)
        responses = _list(_get(d, "responses"), "responses")
        responses = [_text(r, f"responses[{i}]") for i, r in enumerate(responses)]
        ranks = _list(_get(d, "ranks"), "ranks")
        for i, r in enumerate(ranks):
            if isinstance(r, bool) or not isinstance(r, int):
                raise DataError(f"expected an integer rank, got {_tname(r)}", field=f"ranks[{i}]", reason="wrong_type")
            if r < 0:
                raise DataError(f"expected a rank >= 0, got {r}", field=f"ranks[{i}]", reason="invalid_value")
        if len(responses) < 2:
            raise DataError(
                f"expected at least 2 responses, got {len(responses)}", field="responses", reason="invalid_value"
            )
        if len(ranks) != len(responses):
            raise DataError(
                f"expected {len(responses)} ranks (one per response), got {len(ranks)}",
                field="ranks",
                reason="invalid_value",
            )
        return cls(
            prompt=prompt, responses=responses, ranks=[int(r) for r in ranks], labeler=_labeler(d), weight=_weight(d)
        )

    def to_pairs(self, subset: str | None = None) -> list[PreferencePair]:
        """Every pair of responses with different ranks, better one as ``chosen`` (ties skipped).
        ``margin`` is left None (rank gaps are ordinal, not a strength); each pair keeps the
        ranking's ``labeler`` and ``weight``. Order: by the better response's position, then the
        worse one's."""
        pairs = []
        n = len(self.responses)
        for i in range(n):
            for j in range(i + 1, n):
                if self.ranks[i] == self.ranks[j]:
                    continue
                a, b = (i, j) if self.ranks[i] < self.ranks[j] else (j, i)
                pairs.append(
                    PreferencePair(
                        self.prompt,
                        self.responses[a],
                        self.responses[b],
                        subset=subset,
                        labeler=self.labeler,
                        weight=self.weight,
                    )
                )
        return pairs


@dataclass
class RatingRecord(_Record):
    """An absolute rating ``{"prompt", "completion", "rating"}`` on ``[scale_min, scale_max]``
    (default a 1-7 Likert scale) with optional ``flags`` (e.g. "toxic", "off-topic")."""

    prompt: str
    completion: str
    rating: float
    scale_min: float = 1
    scale_max: float = 7
    flags: list[str] = field(default_factory=list)
    labeler: str | None = None
    weight: float | None = None
    kind: ClassVar[str] = "ratings"

    @classmethod
    def from_dict(cls, d: dict) -> "RatingRecord":
        _check_mapping(d)
        prompt = _text(_get(d, "prompt"), "prompt", allow_empty=True)
        completion = _text(_get(d, "completion"), "completion")
        rating = _number(_get(d, "rating"), "rating")
        lo = _number(d.get("scale_min", 1), "scale_min")
        hi = _number(d.get("scale_max", 7), "scale_max")
        if not lo < hi:
            raise DataError(
                f"expected scale_min < scale_max, got {lo:g} >= {hi:g}", field="scale_max", reason="invalid_value"
            )
        if not lo <= rating <= hi:
            raise DataError(
                f"expected a rating in [{lo:g}, {hi:g}], got {rating:g}", field="rating", reason="invalid_value"
            )
        flags = d.get("flags")
        flags = [] if flags is None else _list(flags, "flags")
        flags = [_text(f, f"flags[{i}]") for i, f in enumerate(flags)]
        return cls(prompt, completion, rating, lo, hi, flags, labeler=_labeler(d), weight=_weight(d))

    def normalised(self) -> float:
        """The rating mapped to [0, 1]."""
        return (self.rating - self.scale_min) / (self.scale_max - self.scale_min)


@dataclass
class ThumbsRecord(_Record):
    """Unpaired binary feedback in the TRL/KTO format ``{"prompt", "completion", "label": bool}``
    (True = thumbs up / desirable)."""

    prompt: str
    completion: str
    label: bool
    labeler: str | None = None
    weight: float | None = None
    kind: ClassVar[str] = "thumbs"

    @classmethod
    def from_dict(cls, d: dict) -> "ThumbsRecord":
        _check_mapping(d)
        return cls(
            prompt=_text(_get(d, "prompt"), "prompt", allow_empty=True),
            completion=_text(_get(d, "completion"), "completion"),
            label=_bool(_get(d, "label"), "label"),
            labeler=_labeler(d),
            weight=_weight(d),
        )


@dataclass
class RewriteRecord(_Record):
    """A human correction ``{"prompt", "original", "rewrite"}`` of a model answer."""

    prompt: str
    original: str
    rewrite: str
    labeler: str | None = None
    weight: float | None = None
    kind: ClassVar[str] = "rewrites"

    @classmethod
    def from_dict(cls, d: dict) -> "RewriteRecord":
        _check_mapping(d)
        return cls(
            prompt=_text(_get(d, "prompt"), "prompt", allow_empty=True),
            original=_text(_get(d, "original"), "original"),
            rewrite=_text(_get(d, "rewrite"), "rewrite"),
            labeler=_labeler(d),
            weight=_weight(d),
        )

    def to_demonstration(self) -> CompletionRecord:
        """The rewrite as a supervised demonstration."""
        return CompletionRecord(self.prompt, self.rewrite, labeler=self.labeler, weight=self.weight)

    def to_pair(self, subset: str | None = None) -> PreferencePair:
        """The rewrite preferred over the original (a common use of corrections)."""
        return PreferencePair(
            self.prompt, self.rewrite, self.original, subset=subset, labeler=self.labeler, weight=self.weight
        )
