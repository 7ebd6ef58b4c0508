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

__all__ = ["ChatModel", "Completion", "CompletionStream", "PromptError", "ContextLengthError", "render_messages"]

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
    def load(cls, spec: str, name: str | None = None, precision: str = "fp32", **kwargs: Any) -> "ChatModel":
        """``precision`` ``bf16`` loads the weights in bfloat16 (inference only: half the memory,
        faster matrix products where the hardware has them; the logits are bfloat16 too)."""
        from rlhfkit.models import load_policy

        from rlhfkit.core.precision import PRECISIONS

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        model, tokenizer = load_policy(spec, dtype=dtype)  # left padding, pad != eos
        if name is None:
            name = default_model_name(spec)
        return cls(model, tokenizer, name=name, **kwargs)

    def complete(self, messages: Sequence[dict], max_tokens: int | None = None, temperature: float | None = None,
                 top_p: float | None = None, seed: int | None = None, stop: Sequence[str] = ()) -> Completion:
        """The reply; ``stop``: strings that end it (not included), as OpenAI's ``stop``."""
        return self._generate(self._prepare(messages, max_tokens, temperature, top_p, seed, stop))

    def stream(self, messages: Sequence[dict], max_tokens: int | None = None, temperature: float | None = None,
               top_p: float | None = None, seed: int | None = None, stop: Sequence[str] = ()) -> "CompletionStream":
        """The reply as it is generated: iterate for text pieces; ``.result`` is then the
        ``Completion`` that ``complete`` returns for the same arguments (same seed, same text).
        A conversation the model cannot answer raises ``PromptError`` here, before any piece."""
        return CompletionStream(self, self._prepare(messages, max_tokens, temperature, top_p, seed, stop))

    def _prepare(self, messages, max_tokens, temperature, top_p, seed, stop) -> "_Request":
        sampling = replace(self.defaults)
        if temperature is not None:
            sampling.temperature = float(temperature)
        if top_p is not None:
            sampling.top_p = float(top_p)
        ids = render_messages(messages, self.tokenizer)
        sampling.max_new_tokens = self._reply_budget(len(ids), max_tokens)
        return _Request(ids, sampling, secrets.randbits(62) if seed is None else int(seed), tuple(stop))

    @torch.no_grad()
    def _generate(self, req: "_Request", on_token=None) -> Completion:
        from rlhfkit.core.masking import truncate_after_eos
        from rlhfkit.rollout import make_sampler

        tok = self.tokenizer
        drawn: list[int] = []

        def each_step(tokens: torch.Tensor) -> bool:
            if on_token is not None:
                on_token(tokens)
            if not req.stop or int(tokens[0]) in (tok.eos_token_id, tok.pad_token_id):
                return False
            drawn.append(int(tokens[0]))  # a stop sequence reached: no token past it is drawn
            return cut_at_stop(tok.decode(drawn, skip_special_tokens=True), req.stop)[1]

        device = next(self.model.parameters()).device
        prompt_ids = torch.tensor([req.ids], dtype=torch.long, device=device)
        prompt_mask = torch.ones_like(prompt_ids)
        gen = make_sampler(self.model, req.sampling, tok.eos_token_id, tok.pad_token_id)
        with self._lock:
            raw = gen.generate(self.model, prompt_ids, prompt_mask, req.seed,
                               on_token=each_step if on_token is not None or req.stop else None)
        resp, mask, has_eos = truncate_after_eos(raw, tok.eos_token_id, tok.pad_token_id)
        n = int(mask[0].sum())
        body = [t for t in resp[0, :n].tolist() if t != tok.eos_token_id]
        text, stopped = cut_at_stop(tok.decode(body, skip_special_tokens=True), req.stop)
        return Completion(text=text, finish_reason="stop" if stopped or bool(has_eos[0]) else "length",
                          prompt_tokens=len(req.ids), completion_tokens=n)

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


def default_model_name(spec: str) -> str:
    """The name a served model goes by when none is given: its folder's name (``runs/dpo/model``
    -> ``dpo/model``, as every recipe saves to a folder named ``model``); a ``config.json`` path
    names its folder; a ``.gguf`` file its own name; an alias or hub name itself."""
    from pathlib import Path

    p = Path(str(spec).rstrip("/"))
    if p.name == "config.json":
        p = p.parent
    if p.name in ("model", "final") and p.parent.name:
        return f"{p.parent.name}/{p.name}"
    return p.name or str(spec)


@dataclass
class _Request:
    ids: list[int]  # the rendered conversation
    sampling: Any  # rollout.SamplingConfig, max_new_tokens within the context
    seed: int
    stop: tuple[str, ...]


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string (excluded), and whether one occurred."""
    ends = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[:min(ends)], True) if ends else (text, False)


def held_for_stop(text: str, stop: Sequence[str]) -> int:
    """How many characters at the end of ``text`` could begin a stop string: a stream holds
    them back until the next tokens show whether the stop string follows."""
    return max((k for s in stop for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])),
               default=0)


class CompletionStream:
    """Iterates over the text pieces of a reply while a worker thread generates it; ``result``
    (the ``Completion``) is set when the iteration ends. The pieces join to ``result.text``.

    A piece is the decoded text that grew since the last one, held back while it ends in an
    incomplete UTF-8 character (a byte-level token can end mid-character), up to the last token
    (whose text can change once the next token is seen) and while its end could begin a stop
    string; the rest comes at the end."""

    _END = object()

    def __init__(self, chat: ChatModel, request: _Request):
        self.chat, self.request = chat, request
        self.prompt_tokens = len(request.ids)
        self.result: Completion | None = None

    def __iter__(self):
        import queue

        tokens: queue.Queue = queue.Queue()
        outcome: dict = {}

        def work() -> None:
            try:
                outcome["completion"] = self.chat._generate(self.request, on_token=lambda t: tokens.put(int(t[0])))
            except BaseException as e:  # noqa: BLE001 - handed to the reader, which raises it
                outcome["error"] = e
            finally:
                tokens.put(self._END)

        threading.Thread(target=work, name="rlhfkit-stream", daemon=True).start()
        tok = self.chat.tokenizer
        body: list[int] = []
        sent = ""
        while (token := tokens.get()) is not self._END:
            if token in (tok.eos_token_id, tok.pad_token_id):
                continue  # the EOS ends the reply; nothing follows it that is shown
            body.append(token)
            text, stopped = cut_at_stop(tok.decode(body[:-1], skip_special_tokens=True), self.request.stop)
            if not stopped:
                text = text[:len(text) - held_for_stop(text, self.request.stop)]
            if len(text) > len(sent) and text.startswith(sent) and not text.endswith("\ufffd"):
                yield text[len(sent):]
                sent = text
        if "error" in outcome:
            raise outcome["error"]
        self.result = outcome["completion"]
        if self.result.text.startswith(sent) and len(self.result.text) > len(sent):
            yield self.result.text[len(sent):]


def new_completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)
