"""Tokenisation and padding with a Hugging Face tokenizer object (no model is loaded here).

Special tokens are discovered, not assumed: the tokenizer is asked to encode a probe text with
and without special tokens, and what it adds before/between/after the texts (``<s>``, ``[CLS]``,
``[SEP]``, ...) is reused around our own, separately tokenised pieces. That keeps label
boundaries exact and encoder tokenizers' ``[CLS] a [SEP] b [SEP]`` layout correct.

- :func:`tokenize_sft`: prompt/completion -> ``[bos?] prompt completion eos`` with labels -100 on
  the prompt (and on the bos); conversations -> the chat template with labels on assistant turns.
- :func:`tokenize_pair`: ``prompt ⊕ response`` for a reward model, truncated from the left of the
  prompt so the end of the response (the token the reward head reads) survives.
- :func:`pad_sequences`: left or right padding to a ``[B, T]`` LongTensor plus attention mask.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .records import CompletionRecord, ConversationRecord

__all__ = ["IGNORE_INDEX", "tokenize_sft", "tokenize_pair", "pad_sequences", "special_layout", "FALLBACK_ROLE_NAMES"]

IGNORE_INDEX = -100
FALLBACK_ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}
_PROBE_A, _PROBE_B = "hello", "world"


def _encode(tokenizer, text: str) -> list[int]:
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _locate(seq: list[int], sub: list[int], start: int = 0) -> int:
    n = len(sub)
    for k in range(start, len(seq) - n + 1):
        if seq[k : k + n] == sub:
            return k
    raise ValueError("cannot locate the probe text in the tokenizer's special-token layout")


def special_layout(tokenizer, pair: bool = False) -> tuple[list[int], ...]:
    """The special tokens the tokenizer adds around one text, ``(prefix, suffix)``, or around a
    pair of texts, ``(prefix, middle, suffix)`` (e.g. BERT: ``([CLS],), ([SEP],), ([SEP],)``)."""
    a = _encode(tokenizer, _PROBE_A)
    if not pair:
        full = list(tokenizer(_PROBE_A)["input_ids"])
        i = _locate(full, a)
        return full[:i], full[i + len(a) :]
    b = _encode(tokenizer, _PROBE_B)
    full = list(tokenizer(_PROBE_A, _PROBE_B)["input_ids"])
    i = _locate(full, a)
    j = _locate(full, b, i + len(a))
    return full[:i], full[i + len(a) : j], full[j + len(b) :]


def _is_encoder(tokenizer) -> bool:
    return getattr(tokenizer, "cls_token_id", None) is not None and getattr(tokenizer, "sep_token_id", None) is not None


# ----------------------------------------------------------------------------- SFT
def tokenize_sft(record, tokenizer, max_length: int) -> dict[str, list[int]]:
    """Tokenise a demonstration for supervised fine-tuning.

    Returns ``{"input_ids": [...], "labels": [...]}`` (same length, at most ``max_length``;
    truncated from the right).

    - :class:`CompletionRecord`: ``prefix + tok(prompt) + tok(completion) + [eos]`` where
      ``prefix`` is whatever the tokenizer itself puts in front of a text (BOS for Llama-style
      tokenizers, nothing for GPT-2). Prompt and completion are tokenised separately so the label
      boundary is exact. Labels are -100 on prefix and prompt, the ids on completion and EOS.
    - :class:`ConversationRecord` with a ``tokenizer.chat_template``: the whole conversation is
      rendered once with ``apply_chat_template(tokenize=False)`` and tokenised with offsets.
      The character span of assistant turn ``i`` runs from the end of
      ``render(messages[:i], add_generation_prompt=True)`` to the end of
      ``render(messages[:i+1])`` (so it includes the template's end-of-turn marker, which the
      model must learn to emit); tokens starting inside a span are labelled. When the template
      does not render prefixes as prefixes of the whole (e.g. it rewrites earlier turns), the
      span falls back to the assistant content itself, found in order in the rendered text.
    - Without a chat template, a fallback plain format is used:
      ``prefix "User: {u}" "\\n\\nAssistant: " {a} <eos> "\\n\\nUser: " ...`` (roles from
      :data:`FALLBACK_ROLE_NAMES`), labels on each assistant content and its EOS.
    """
    if isinstance(record, dict):
        record = ConversationRecord.from_dict(record) if "messages" in record else CompletionRecord.from_dict(record)
    if max_length < 1:
        raise ValueError("max_length must be >= 1")
    eos = tokenizer.eos_token_id
    if isinstance(record, CompletionRecord):
        prefix, _ = special_layout(tokenizer)
        p = prefix + _encode(tokenizer, record.prompt)
        c = _encode(tokenizer, record.completion) + ([eos] if eos is not None else [])
        ids, labels = p + c, [IGNORE_INDEX] * len(p) + c
    elif isinstance(record, ConversationRecord):
        if getattr(tokenizer, "chat_template", None):
            ids, labels = _chat_template_tokens(record.messages, tokenizer)
        else:
            ids, labels = _fallback_chat_tokens(record.messages, tokenizer)
    else:
        raise TypeError(f"tokenize_sft takes a CompletionRecord or ConversationRecord, got {type(record).__name__}")
    return {"input_ids": ids[:max_length], "labels": labels[:max_length]}


def _render(tokenizer, messages, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def _chat_template_tokens(messages: list[dict], tokenizer) -> tuple[list[int], list[int]]:
    full = _render(tokenizer, messages, False)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        try:
            start_text = _render(tokenizer, messages[:i], True) if i else ""
            end_text = _render(tokenizer, messages[: i + 1], False)
            ok = full.startswith(end_text) and end_text.startswith(start_text) and len(start_text) >= cursor
        except Exception:  # some templates refuse partial conversations
            ok = False
        if ok:
            s, e = len(start_text), len(end_text)
        else:
            s = full.find(m["content"], cursor)
            if s < 0:
                raise ValueError(f"cannot find assistant turn {i} in the rendered chat template")
            e = s + len(m["content"])
        spans.append((s, e))
        cursor = e
    try:
        enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
    except (NotImplementedError, ValueError, TypeError, KeyError):
        offsets = None
    if offsets is not None:
        ids = list(enc["input_ids"])
        labels = [
            tid if any(s <= a < e for s, e in spans) and b > a else IGNORE_INDEX for tid, (a, b) in zip(ids, offsets)
        ]
        return ids, labels
    # slow tokenizer: tokenise the pieces between span boundaries separately
    ids, labels, pos = [], [], 0
    for s, e in spans:
        pre, mid = _encode(tokenizer, full[pos:s]), _encode(tokenizer, full[s:e])
        ids += pre + mid
        labels += [IGNORE_INDEX] * len(pre) + mid
        pos = e
    rest = _encode(tokenizer, full[pos:])
    return ids + rest, labels + [IGNORE_INDEX] * len(rest)


def _fallback_chat_tokens(messages: list[dict], tokenizer) -> tuple[list[int], list[int]]:
    prefix, _ = special_layout(tokenizer)
    eos = tokenizer.eos_token_id
    ids, labels = list(prefix), [IGNORE_INDEX] * len(prefix)
    for i, m in enumerate(messages):
        header = ("\n\n" if i else "") + FALLBACK_ROLE_NAMES[m["role"]] + ": "
        h = _encode(tokenizer, header)
        body = _encode(tokenizer, m["content"])
        if m["role"] == "assistant":
            body += [eos] if eos is not None else []
            ids += h + body
            labels += [IGNORE_INDEX] * len(h) + body
        else:
            ids += h + body
            labels += [IGNORE_INDEX] * (len(h) + len(body))
    return ids, labels


# ----------------------------------------------------------------------------- pairs
def _fit(p: list[int], r: list[int], budget: int, side: str) -> tuple[list[int], list[int]]:
    if len(p) + len(r) <= budget:
        return p, r
    if side == "left":  # drop from the left of the prompt, then of the response
        if len(r) >= budget:
            return [], r[len(r) - budget :] if budget > 0 else []
        return p[len(p) + len(r) - budget :], r
    # right: keep the start
    if len(p) >= budget:
        return p[:budget], []
    return p, r[: budget - len(p)]


def tokenize_pair(
    prompt: str, response: str, tokenizer, max_length: int, truncation_side: str = "left", *, add_eos: bool = True
) -> list[int]:
    """Token ids of ``prompt ⊕ response`` for a reward model, at most ``max_length`` long.

    - Causal tokenizers: ``prefix + tok(prompt) + tok(response) + [eos]`` (``prefix`` = what the
      tokenizer puts before a text, e.g. BOS; EOS when ``add_eos`` and the tokenizer has one), so
      every scored sequence ends on the same token.
    - Encoder tokenizers (with CLS and SEP tokens, e.g. BERT/MiniLM): the tokenizer's own pair
      layout ``[CLS] prompt [SEP] response [SEP]`` (or ``[CLS] response [SEP]`` for an empty
      prompt), with the special tokens kept intact whatever the truncation.

    Truncation (only when too long) works on the text tokens, never on special tokens:
    ``"left"`` drops tokens from the start of the prompt, and only when the response alone does
    not fit, from the start of the response (the response end is always kept); ``"right"`` keeps
    the start (prompt first) and drops from the end.
    """
    if truncation_side not in ("left", "right"):
        raise ValueError(f"truncation_side must be 'left' or 'right', got {truncation_side!r}")
    p, r = _encode(tokenizer, prompt), _encode(tokenizer, response)
    if _is_encoder(tokenizer):
        if p:
            pre, mid, post = special_layout(tokenizer, pair=True)
        else:
            (pre, post), mid = special_layout(tokenizer), []
        budget = max_length - len(pre) - len(mid) - len(post)
        if budget < 1:
            raise ValueError(f"max_length={max_length} leaves no room beside the special tokens")
        p, r = _fit(p, r, budget, truncation_side)
        return pre + p + mid + r + post
    pre, _ = special_layout(tokenizer)
    eos = tokenizer.eos_token_id
    end = [eos] if add_eos and eos is not None else []
    budget = max_length - len(pre) - len(end)
    if budget < 1:
        raise ValueError(f"max_length={max_length} leaves no room beside the special tokens")
    p, r = _fit(p, r, budget, truncation_side)
    return pre + p + r + end


# ----------------------------------------------------------------------------- padding
def pad_sequences(
    seqs: Sequence[Sequence[int] | torch.Tensor], pad_id: int, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad variable-length id lists to ``ids`` LongTensor ``[B, T]`` (T = longest) and a 0/1
    LongTensor ``attention_mask`` ``[B, T]`` (1 on real tokens). ``side="left"`` puts the padding
    first (generation, last-token reward reads). Also pads labels with ``pad_id=-100``."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    rows = [torch.as_tensor(s, dtype=torch.long).reshape(-1) for s in seqs]
    B, T = len(rows), max((len(r) for r in rows), default=0)
    ids = torch.full((B, T), int(pad_id), dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r)
        if n == 0:
            continue
        if side == "right":
            ids[i, :n], mask[i, :n] = r, 1
        else:
            ids[i, T - n :], mask[i, T - n :] = r, 1
    return ids, mask
