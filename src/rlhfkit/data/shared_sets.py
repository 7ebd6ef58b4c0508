"""Converters for the real public data in ``../shared/data`` (read-only; never copied into the repo).

Counts on the files shipped there (measured, and checked by tests/data/test_shared_sets.py):

- HH-RLHF harmless-base test: 2,312 lines -> 2,308 pairs by default; the 4 pairs whose chosen
  reply is empty (the assistant said nothing) are dropped, ``keep_empty=True`` keeps all 2,312.
  Every pair in that file shares its dialogue up to the last ``Assistant:`` turn.
- FineGrainedRLHF qa-feedback dev: 500 questions x 6 preferences = 3,000 comparisons, of which
  384 are ties -> 2,616 pairs (``ties="drop"``) or 3,000 (``ties="keep"``, ties marked
  ``tie=True``); 487 non-empty corrected answers -> demonstrations.
- OASST 100 trees: 212 ranked reply groups (113 with a multi-turn history) -> 212
  rankings, 754 pairs (no tied ranks in the file), 212 demonstrations and 212 conversations.
- movie_reviews: 2,000 reviews -> 2,000 prompts of ``n_words`` words.
- chat-first-turns (``load_chat_prompts``): the first human turn of the 100 OASST trees and of the
  2,312 HH-RLHF harmless dialogues; at most 25 words and deduplicated: 68 OASST + 2,008 HH =
  2,076 prompts (2,277 without the length limit).
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .errors import DataError
from .records import (
    CompletionRecord,
    ConversationRecord,
    PreferencePair,
    PromptRecord,
    RankingRecord,
)

__all__ = [
    "shared_data_dir",
    "split_hh_dialogue",
    "load_hh_rlhf",
    "FineGrainedData",
    "FINEGRAINED_PAIRS",
    "prompt_format",
    "load_finegrained",
    "OasstData",
    "render_dialogue",
    "load_oasst",
    "load_movie_review_prompts",
    "CHAT_PROMPT_MAX_WORDS",
    "load_chat_prompts",
    "PROMPT_POOLS",
    "load_named_prompts",
]

HH_FILE = "hh-rlhf-harmless-base-test.jsonl.gz"
FINEGRAINED_FILE = "finegrained-qa-feedback-dev.json"
OASST_FILE = "oasst-en-100-trees.jsonl"
MOVIES_FILE = "movie_reviews.zip"
_ASSISTANT = "\n\nAssistant:"


def _repo_root() -> Path | None:
    for p in Path(__file__).resolve().parents:
        if (p / "pyproject.toml").is_file():
            return p
    return None


def shared_data_dir() -> Path:
    """The shared real-data folder: ``$RLHFKIT_SHARED_DATA``, else ``<repo>/../shared/data``, else
    ``/work/shared/data``. Raises FileNotFoundError (saying where it looked) when none exists."""
    env = os.environ.get("RLHFKIT_SHARED_DATA")
    if env:
        p = Path(env).expanduser()
        if p.is_dir():
            return p
        raise FileNotFoundError(f"RLHFKIT_SHARED_DATA={env} is not a folder")
    tried = []
    root = _repo_root()
    if root is not None:
        tried.append(root.parent / "shared" / "data")
    tried.append(Path("/work/shared/data"))
    for p in tried:
        if p.is_dir():
            return p
    raise FileNotFoundError(
        "shared real-data folder not found; looked in "
        + ", ".join(map(str, tried))
        + " (set RLHFKIT_SHARED_DATA to its location)"
    )


def _path(path, name: str) -> Path:
    p = Path(path) if path is not None else shared_data_dir() / name
    if not p.is_file():
        raise FileNotFoundError(f"data file {p} does not exist")
    return p


# ----------------------------------------------------------------------------- HH-RLHF
def split_hh_dialogue(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split two HH dialogues into (prompt, chosen reply, rejected reply).

    The prompt is the longest common prefix cut just after its last ``"\\n\\nAssistant:"``; the
    replies are the remainders with surrounding whitespace stripped. When the two dialogues
    differ before their last assistant turn (none in the shipped test file) the cut is still at
    the last ``Assistant:`` the two share, so the replies may hold several turns. Raises
    ValueError when the two share no ``Assistant:`` turn.
    """
    n = min(len(chosen), len(rejected))
    i = 0
    while i < n and chosen[i] == rejected[i]:
        i += 1
    cut = chosen.rfind(_ASSISTANT, 0, i)  # the whole marker lies inside the common prefix
    if cut < 0:
        raise ValueError("the two dialogues share no 'Assistant:' turn")
    end = cut + len(_ASSISTANT)
    return chosen[:end], chosen[end:].strip(), rejected[end:].strip()


def load_hh_rlhf(path=None, *, keep_empty: bool = False, subset: str | None = "hh-harmless") -> list[PreferencePair]:
    """Anthropic HH-RLHF (``{"chosen", "rejected"}`` whole dialogues) as PreferencePairs.

    ``prompt`` is the shared dialogue ending with ``"\\n\\nAssistant:"`` (it starts with
    ``"\\n\\nHuman:"``, the original formatting); ``chosen``/``rejected`` are the final replies
    without the leading space. Pairs with an empty reply are dropped unless ``keep_empty`` (records
    require non-empty responses; 4 in the harmless-base test file, all with an empty *chosen*).
    Pairs that share no ``Assistant:`` turn are dropped (none in the shipped file). Bad JSON raises
    :class:`DataError` with the line.
    """
    p = _path(path, HH_FILE)
    opener = gzip.open if p.read_bytes()[:2] == b"\x1f\x8b" else open
    pairs = []
    with opener(p, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                d = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise DataError(
                    f"malformed JSON line ({type(e).__name__})", path=p, line=lineno, reason="malformed_json"
                ) from None
            for k in ("chosen", "rejected"):
                if not isinstance(d.get(k), str):
                    raise DataError("expected a string dialogue", path=p, line=lineno, field=k, reason="wrong_type")
            try:
                prompt, c, r = split_hh_dialogue(d["chosen"], d["rejected"])
            except ValueError:
                continue
            if not keep_empty and (not c or not r):
                continue
            pairs.append(PreferencePair(prompt, c, r, subset=subset))
    return pairs


# ----------------------------------------------------------------------------- FineGrainedRLHF
FINEGRAINED_PAIRS: tuple[tuple[int, int], ...] = ((1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4))


@dataclass
class FineGrainedData:
    pairs: list[PreferencePair]
    demonstrations: list[CompletionRecord]
    n_ties: int = 0  # tie comparisons in the file (dropped or kept, depending on ``ties``)


def prompt_format(question: str, passages: Sequence[Sequence[str]] = ()) -> str:
    """The FineGrained QA prompt: question, then one paragraph per passage, then ``Answer:``::

        Question: When does bloom by troye sivan come out?

        [1] Bloom (Troye Sivan album): Bloom is the second studio album by ... It was preceded ...
        [2] ...

        Answer:

    A passage is ``[title, sentence, ...]``; sentences are joined with single spaces and a first
    sentence that repeats the title (``"title\\n\\ntext"``) loses the repeat. Questions without
    passages give ``"Question: ...\\n\\nAnswer:"``.
    """
    parts = [f"Question: {question.strip()}"]
    lines = []
    for k, passage in enumerate(passages, start=1):
        if not passage:
            continue
        title, sentences = passage[0].strip(), [s.strip() for s in passage[1:]]
        if sentences and title and sentences[0].startswith(title):
            sentences[0] = sentences[0][len(title) :].strip()
        body = " ".join(s for s in (" ".join(x.split()) for x in sentences) if s)
        lines.append(f"[{k}] {title}: {body}" if title else f"[{k}] {body}")
    if lines:
        parts.append("\n".join(lines))
    parts.append("Answer:")
    return "\n\n".join(parts)


def load_finegrained(path=None, ties: str = "drop", subset: str = "finegrained") -> FineGrainedData:
    """FineGrainedRLHF qa-feedback as preference pairs and demonstrations.

    For each question, preference ``k`` compares ``prediction a`` and ``prediction b`` for
    ``(a, b) = FINEGRAINED_PAIRS[k]``: 1 = a better, 2 = b better, 0 = tie. Ties are dropped
    (``ties="drop"``) or kept as ``PreferencePair(prompt, a, b, tie=True)`` (``ties="keep"``).
    Comparisons whose two texts are empty are skipped. Demonstrations are the human
    ``feedback["corrected-prediction"]`` answers that are non-empty. Prompts: :func:`prompt_format`.
    """
    if ties not in ("drop", "keep"):
        raise ValueError(f"ties must be 'drop' or 'keep', got {ties!r}")
    p = _path(path, FINEGRAINED_FILE)
    try:
        data = json.loads(p.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"malformed JSON ({type(e).__name__})", path=p, reason="malformed_json") from None
    if not isinstance(data, list):
        raise DataError("expected a JSON list", path=p, reason="not_object")
    pairs, demos, n_ties = [], [], 0
    for i, item in enumerate(data):
        try:
            prompt = prompt_format(item["question"], item.get("passages") or ())
            prefs = item["preference"]
            preds = {a: item[f"prediction {a}"] for a in range(1, 5)}
        except (KeyError, TypeError, AttributeError) as e:
            raise DataError(f"unexpected record layout ({e!r})", path=p, index=i, reason="missing_field") from None
        if len(prefs) != len(FINEGRAINED_PAIRS):
            raise DataError(
                f"expected {len(FINEGRAINED_PAIRS)} preferences, got {len(prefs)}", path=p, index=i, field="preference"
            )
        for (a, b), pref in zip(FINEGRAINED_PAIRS, prefs):
            ta, tb = preds[a].strip(), preds[b].strip()
            if not ta or not tb:
                continue
            if pref == 0:
                n_ties += 1
                if ties == "keep":
                    pairs.append(PreferencePair(prompt, ta, tb, tie=True, subset=subset))
            elif pref == 1:
                pairs.append(PreferencePair(prompt, ta, tb, subset=subset))
            elif pref == 2:
                pairs.append(PreferencePair(prompt, tb, ta, subset=subset))
            else:
                raise DataError(f"expected 0, 1 or 2, got {pref!r}", path=p, index=i, field="preference")
        fb = item.get("feedback") or {}
        corrected = fb.get("corrected-prediction") if isinstance(fb, dict) else None
        if isinstance(corrected, str) and corrected.strip():
            demos.append(CompletionRecord(prompt, corrected.strip()))
    return FineGrainedData(pairs=pairs, demonstrations=demos, n_ties=n_ties)


# ----------------------------------------------------------------------------- OpenAssistant
@dataclass
class OasstData:
    rankings: list[RankingRecord]
    pairs: list[PreferencePair]
    demonstrations: list[CompletionRecord]
    conversations: list[ConversationRecord] = field(default_factory=list)


def render_dialogue(messages: Sequence[dict]) -> str:
    """A conversation as a plain-text prompt.

    One user turn (the usual case) is returned as its text alone, so chat templates can wrap it.
    Longer histories become ``"User: ...\\n\\nAssistant: ...\\n\\nUser: ..."`` (``System:`` for
    system turns), ending with the last turn's text and no trailing ``Assistant:``.
    """
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    names = {"user": "User", "assistant": "Assistant", "system": "System"}
    return "\n\n".join(f"{names[m['role']]}: {m['content']}" for m in messages)


def _oasst_ok(node: dict) -> bool:
    return (
        not node.get("deleted", False)
        and node.get("review_result", True) is not False
        and isinstance(node.get("text"), str)
        and bool(node["text"].strip())
    )


def load_oasst(path=None, subset: str = "oasst") -> OasstData:
    """OpenAssistant trees (one ``{"prompt": node}`` a line, nodes with nested ``replies``).

    Walks every tree; deleted or review-failed messages (and their subtrees) are skipped. For every
    node whose assistant replies carry ``rank`` (0 = best), one :class:`RankingRecord` of those
    replies (replies without a rank are left out; groups of fewer than 2 ranked replies are
    skipped), ``prompt = render_dialogue(history)``. ``pairs`` expand the rankings
    (:meth:`RankingRecord.to_pairs`). ``demonstrations`` are the rank-0 assistant replies as
    ``CompletionRecord(prompt, reply)``; ``conversations`` are the same as
    ``ConversationRecord(history + [reply])`` for chat-template training.
    """
    p = _path(path, OASST_FILE)
    roles = {"prompter": "user", "assistant": "assistant", "system": "system"}
    out = OasstData([], [], [], [])

    def walk(node: dict, history: list[dict]) -> None:
        msgs = history + [{"role": roles.get(node.get("role"), "user"), "content": node["text"].strip()}]
        replies = [r for r in node.get("replies") or () if isinstance(r, dict) and _oasst_ok(r)]
        ranked = [r for r in replies if r.get("role") == "assistant" and isinstance(r.get("rank"), int)]
        if len(ranked) >= 2 and msgs[-1]["role"] == "user":
            prompt = render_dialogue(msgs)
            rec = RankingRecord(prompt, [r["text"].strip() for r in ranked], [int(r["rank"]) for r in ranked])
            out.rankings.append(rec)
            out.pairs.extend(rec.to_pairs(subset=subset))
            best = min(rec.ranks)
            for text, rank in zip(rec.responses, rec.ranks):
                if rank == best:
                    out.demonstrations.append(CompletionRecord(prompt, text))
                    out.conversations.append(ConversationRecord(msgs + [{"role": "assistant", "content": text}]))
                    break
        for r in replies:
            walk(r, msgs)

    with open(p, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                tree = json.loads(raw.decode("utf-8"))
                root = tree["prompt"]
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(
                    f"malformed OASST tree ({type(e).__name__})",
                    path=p,
                    line=lineno,
                    field="prompt" if isinstance(e, (KeyError, TypeError)) else None,
                    reason="malformed_json",
                ) from None
            if isinstance(root, dict) and _oasst_ok(root):
                walk(root, [])
    return out


# ----------------------------------------------------------------------------- movie reviews
def load_movie_review_prompts(
    path=None, n_words: int = 8, limit: int | None = None, seed: int = 0
) -> list[PromptRecord]:
    """The first ``n_words`` whitespace-separated words of each review in ``movie_reviews.zip``
    (read in place with zipfile; the corpus is lower-cased with punctuation split into separate
    tokens, which count as words). Reviews in sorted file order (neg then pos); with ``limit``, a
    ``random.Random(seed)`` sample of that many, in file order. Reviews shorter than ``n_words``
    are skipped."""
    if n_words < 1:
        raise ValueError("n_words must be >= 1")
    p = _path(path, MOVIES_FILE)
    prompts = []
    with zipfile.ZipFile(p) as z:
        names = sorted(
            n for n in z.namelist() if n.endswith(".txt") and ("/pos/" in n or "/neg/" in n or n.count("/") == 0)
        )
        if limit is not None and limit < len(names):
            keep = set(random.Random(seed).sample(range(len(names)), limit))
            names = [n for i, n in enumerate(names) if i in keep]
        for name in names:
            words = z.read(name).decode("utf-8", errors="replace").split()
            if len(words) >= n_words:
                prompts.append(PromptRecord(" ".join(words[:n_words])))
    return prompts


# ----------------------------------------------------------------------------- chat prompts
CHAT_PROMPT_MAX_WORDS = 25
_FIRST_HUMAN_TURN = re.compile(r"\s*Human:(.*?)\n\nAssistant:", re.S)


def load_chat_prompts(oasst_path=None, hh_path=None, max_words: int = CHAT_PROMPT_MAX_WORDS) -> list[PromptRecord]:
    """What people send a chat assistant: the first human turn of every OpenAssistant tree (its
    root prompter message, when not deleted or review-failed) and of every HH-RLHF harmless
    dialogue (the text between the first ``Human:`` and ``Assistant:``), OASST first, each in
    file order. Kept: turns of at most ``max_words`` whitespace-separated words (short questions,
    so that a reply fits a short token budget and the rendered chat prompt fits 128 tokens),
    each once (the first of those equal up to case and whitespace). The text is stripped, not
    otherwise changed; the pipeline renders it as one user turn with the policy's chat template.
    Most HH turns are red-teaming requests (harmful or rude), most OASST turns ordinary
    questions."""
    if max_words < 1:
        raise ValueError("max_words must be >= 1")
    turns: list[str] = []
    with open(_path(oasst_path, OASST_FILE), "rb") as f:
        for raw in f:
            if raw.strip():
                root = json.loads(raw.decode("utf-8")).get("prompt")
                if isinstance(root, dict) and _oasst_ok(root) and root.get("role", "prompter") == "prompter":
                    turns.append(root["text"].strip())
    for pair in load_hh_rlhf(hh_path, keep_empty=True):
        m = _FIRST_HUMAN_TURN.match(pair.prompt)
        if m and m.group(1).strip():
            turns.append(m.group(1).strip())
    seen: set[str] = set()
    prompts = []
    for text in turns:
        key = " ".join(text.split()).casefold()
        if len(text.split()) <= max_words and key not in seen:
            seen.add(key)
            prompts.append(PromptRecord(text))
    return prompts


PROMPT_POOLS = ("movie-reviews", "chat-first-turns")


def load_named_prompts(name: str, prompt_words: int = 8, limit: int | None = None, seed: int = 0) -> list[PromptRecord]:
    """The named prompt pool ``name`` (``PROMPT_POOLS``): ``movie-reviews`` (the first
    ``prompt_words`` words of each review; ``limit`` / ``seed`` as ``load_movie_review_prompts``)
    or ``chat-first-turns`` (``load_chat_prompts``; ``limit`` draws that many with
    ``random.Random(seed)``, kept in pool order)."""
    if name == "movie-reviews":
        return load_movie_review_prompts(n_words=prompt_words, limit=limit, seed=seed)
    if name == "chat-first-turns":
        prompts = load_chat_prompts()
        if limit is not None and limit < len(prompts):
            keep = set(random.Random(seed).sample(range(len(prompts)), limit))
            prompts = [p for i, p in enumerate(prompts) if i in keep]
        return prompts
    raise ValueError(f"unknown prompt pool {name!r}; named pools: {', '.join(PROMPT_POOLS)}")
