"""A request's conversation: checked, and rendered to the token ids the model answers.

``validate_messages`` accepts OpenAI's ``messages`` (roles system / user / assistant, ``developer``
as system, text content parts joined); ``render_messages`` applies the tokenizer's chat template
(or a plain transcript without one). ``PromptError`` / ``ContextLengthError``: a conversation the
model cannot answer.
"""

from __future__ import annotations

from typing import Any, Sequence

ROLES = ("system", "user", "assistant")
_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


class PromptError(ValueError):
    """Messages the model cannot answer: its chat template refuses them (e.g. a system turn a
    template has no place for), or they are too long (``ContextLengthError``). ``code`` is
    OpenAI's error code."""

    code: str | None = None


class ContextLengthError(PromptError):
    """A conversation (plus the reply asked for) longer than the model takes. Refused rather than
    cut: a cut prompt loses the system turn and the template's start, and the stored conversation
    (the feedback's training data) would not be the one the model answered."""

    code = "context_length_exceeded"


def render_messages(messages: Sequence[dict], tokenizer: Any) -> list[int]:
    """Token ids of the conversation ready for the assistant's turn; ``PromptError`` when the
    tokenizer's chat template refuses the conversation."""
    msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        try:
            text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # noqa: BLE001 - jinja2's TemplateError and templates' raise_exception
            raise PromptError(f"the model's chat template refused these messages: {e}") from None
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        text = "\n\n".join(f"{_NAMES[m['role']]}: {m['content']}" for m in msgs) + "\n\nAssistant:"
        ids = tokenizer(text)["input_ids"]
    if not ids:
        ids = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
    return ids


def validate_messages(messages: Any) -> list[dict]:
    """``[{role, content}]`` with roles system / user / assistant and string contents (OpenAI's
    content-part lists of ``{"type": "text", "text": ...}`` are joined, other parts refused);
    raises ``ValueError``."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {role, content}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"messages[{i}] must have role and content")
        role, content = m["role"], m["content"]
        if role == "developer":  # OpenAI's newer name for the system role
            role = "system"
        if role not in ROLES:
            raise ValueError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
        if isinstance(content, list):
            # an image or audio part dropped silently would be answered as if it had not been sent
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise ValueError(f"messages[{i}].content: only text parts are supported")
            texts = [p.get("text") for p in content]
            if not all(isinstance(t, str) for t in texts):
                raise ValueError(f"messages[{i}].content: every text part needs a string 'text'")
            content = "".join(texts)
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string")
        out.append({"role": role, "content": content})
    return out
