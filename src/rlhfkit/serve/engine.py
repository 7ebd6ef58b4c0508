"""A chat model: messages -> chat template -> ``generate`` -> the assistant's reply.

Generation goes through ``rollout.make_sampler`` (the same sampling code the RL recipes use, so a
served model samples exactly as it was trained to) and ``core.masking.truncate_after_eos``. The
tokenizer's chat template renders the conversation with the generation prompt; a tokenizer
without one gets a plain ``User: ...\\n\\nAssistant:`` transcript. Calls are serialised by a lock
(one generation at a time per model; the HTTP server runs handlers in threads).
"""
from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch

__all__ = ["ChatModel", "Completion", "PromptError", "ContextLengthError", "render_messages"]

ROLES = ("system", "user", "assistant")
_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" (EOS) or "length" (max_tokens reached)
    prompt_tokens: int
    completion_tokens: int


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


class ChatModel:
    """A causal LM and its tokenizer behind ``complete(messages, ...)``."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, name: str = "rlhfkit", max_new_tokens: int = 128,
                 temperature: float = 0.7, top_p: float = 1.0, top_k: int = 0, max_prompt_length: int = 1024):
        from rlhfkit.rollout import SamplingConfig

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.defaults = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                       top_k=top_k)
        self.max_prompt_length = int(max_prompt_length)
        # prompt + reply must fit the positions the model was trained on (None: no known limit)
        self.context_length = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, spec: str, name: str | None = None, **kwargs: Any) -> "ChatModel":
        from pathlib import Path

        from rlhfkit.models import load_policy

        model, tokenizer = load_policy(spec)  # left padding, pad != eos
        if name is None:
            p = Path(str(spec).rstrip("/"))
            name = p.name if p.name not in ("model", "final") else f"{p.parent.name}/{p.name}"
        return cls(model, tokenizer, name=name, **kwargs)

    @torch.no_grad()
    def complete(self, messages: Sequence[dict], max_tokens: int | None = None, temperature: float | None = None,
                 top_p: float | None = None, seed: int | None = None) -> Completion:
        from rlhfkit.core.masking import truncate_after_eos
        from rlhfkit.rollout import make_sampler

        tok = self.tokenizer
        sampling = replace(self.defaults)
        if temperature is not None:
            sampling.temperature = float(temperature)
        if top_p is not None:
            sampling.top_p = float(top_p)
        ids = render_messages(messages, tok)
        sampling.max_new_tokens = self._reply_budget(len(ids), max_tokens)
        device = next(self.model.parameters()).device
        prompt_ids = torch.tensor([ids], dtype=torch.long, device=device)
        prompt_mask = torch.ones_like(prompt_ids)
        gen = make_sampler(self.model, sampling, tok.eos_token_id, tok.pad_token_id)
        seed = secrets.randbits(62) if seed is None else int(seed)
        with self._lock:
            raw = gen.generate(self.model, prompt_ids, prompt_mask, seed)
        resp, mask, has_eos = truncate_after_eos(raw, tok.eos_token_id, tok.pad_token_id)
        n = int(mask[0].sum())
        body = [t for t in resp[0, :n].tolist() if t != tok.eos_token_id]
        text = tok.decode(body, skip_special_tokens=True)
        return Completion(text=text, finish_reason="stop" if bool(has_eos[0]) else "length",
                          prompt_tokens=len(ids), completion_tokens=n)

    def _reply_budget(self, n_prompt: int, max_tokens: int | None) -> int:
        """Tokens the reply may take; ``ContextLengthError`` when the conversation is too long, or
        when the ``max_tokens`` asked for does not fit after it (the default length is shortened
        to what fits, as OpenAI's servers do when ``max_tokens`` is left out)."""
        if self.max_prompt_length and n_prompt > self.max_prompt_length:
            raise ContextLengthError(f"the conversation has {n_prompt} tokens; this server takes at most "
                                     f"{self.max_prompt_length}")
        want = self.defaults.max_new_tokens if max_tokens is None else int(max_tokens)
        if not self.context_length:
            return want
        room = int(self.context_length) - n_prompt
        if room < 1 or (max_tokens is not None and want > room):
            raise ContextLengthError(f"this model's context is {self.context_length} tokens; the conversation "
                                     f"has {n_prompt} and the reply asks for {want}")
        return min(want, room)


def new_completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)
