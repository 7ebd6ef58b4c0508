"""A chat model: messages -> chat template -> sampler -> the assistant's reply (or ``n`` of them).

Generation goes through ``rollout.make_sampler`` (the same sampling code the RL recipes use, so a
served model samples exactly as it was trained to). The tokenizer's chat template renders the
conversation with the generation prompt; a tokenizer without one gets a plain ``User: ...\\n\\n
Assistant:`` transcript. Requests from many threads (the HTTP server's handlers) are generated
together in batches by one generation thread (``batcher.py``); ``swap`` puts another version of
the policy in place between two batches.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from rlhfkit.models.policy_line import load, resolve
from rlhfkit.rollout import SamplingConfig, make_sampler, step_seed
from rlhfkit.rollout.native import NativeLlamaGenerator, supports
from rlhfkit.core.precision import PRECISIONS

from .batcher import Batcher, Job, ServerStopping, left_pad

# the request side and the streaming side, importable from here as before the split
from .messages import ContextLengthError, PromptError, render_messages, validate_messages  # noqa: F401
from .streaming import CompletionStream, cut_at_stop, held_for_stop  # noqa: F401

__all__ = ["ChatModel", "Completion", "CompletionStream", "PromptError", "ContextLengthError", "render_messages"]


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) or "length" (max_tokens reached)
    prompt_tokens: int
    completion_tokens: int  # tokens drawn, the EOS included
    version: str | None = None  # the policy version that generated it


class ChatModel:
    """A causal LM and its tokenizer behind ``complete(messages, ...)``, ``stream`` and ``submit``.

    ``version`` names the policy version loaded (stored with every completion); ``swap`` replaces
    model, tokenizer and version between two batches. ``max_batch`` (rows) and ``batch_wait_ms``
    configure the batcher (``batcher.py``); ``max_batch=1`` generates one request at a time."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        name: str = "rlhfkit",
        max_new_tokens: int = 128,
        temperature: float = 0.7,
        top_p: float = 1.0,
        top_k: int = 0,
        max_prompt_length: int = 1024,
        version: str | None = None,
        max_batch: int = 8,
        batch_wait_ms: float = 5.0,
    ):
        self.name = name
        self.defaults = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k)
        self.max_prompt_length = int(max_prompt_length)
        self._current = (model.eval(), tokenizer, version if version is not None else name)
        # prompt + reply must fit the positions the model was trained on (None: no known limit)
        self.context_length = _context_length(model)
        self.batcher = Batcher(self._run_batch, self._compatible, max_batch=max_batch, batch_wait_ms=batch_wait_ms)

    # the version answering now (the three change together, in ``swap``)
    @property
    def model(self) -> torch.nn.Module:
        return self._current[0]

    @property
    def tokenizer(self) -> Any:
        return self._current[1]

    @property
    def version(self) -> str:
        return self._current[2]

    @classmethod
    def load(cls, spec: str, name: str | None = None, precision: str = "fp32", **kwargs: Any) -> "ChatModel":
        """``spec``: a model, a loop folder or a learner folder (``models.policy_line``): its
        current version, named by it. ``precision`` ``bf16`` loads the weights in bfloat16
        (inference only: half the memory, faster matrix products where the hardware has them;
        the logits are bfloat16 too)."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
        line = resolve(spec)
        model, tokenizer = load(line, dtype=_dtype(precision))  # left padding, pad != eos
        if name is None:
            name = default_model_name(spec)
        # a model's version is the name it is served under (its spec may be a path of this host)
        return cls(model, tokenizer, name=name, version=None if line.kind == "model" else line.version, **kwargs)

    def swap(self, model: torch.nn.Module, tokenizer: Any, version: str) -> None:
        """Answer with ``model`` from the next batch on (waits for the batch in flight)."""
        with self.batcher.lock:
            self._current = (model.eval(), tokenizer, version)
            self.context_length = _context_length(model)

    def close(self) -> None:
        """Answer what is queued, then stop the generation thread."""
        self.batcher.close()

    def drain(self, grace_s: float) -> None:
        """Stop taking requests; answer the queued ones for ``grace_s`` seconds at most, then fail
        the rest with ``ServerStopping`` (``batcher.Batcher.drain``). Returns at once."""
        self.batcher.drain(grace_s)

    def stats(self) -> dict:
        """Generation counters: sampler calls (``batches``), ``requests``, ``rows`` and
        ``largest_batch`` (rows); ``queued``: requests waiting now."""
        return self.batcher.stats.as_dict(queued=self.batcher.queued())

    # ------------------------------------------------------------------ requests
    def complete(
        self,
        messages: Sequence[dict],
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
    ) -> Completion:
        """The reply; ``stop``: strings that end it (not included), as OpenAI's ``stop``."""
        return self.submit(messages, 1, max_tokens, temperature, top_p, seed, stop).result()[0]

    def stream(
        self,
        messages: Sequence[dict],
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
        n: int = 1,
    ) -> "CompletionStream":
        """The reply as it is generated: iterate for text pieces (``events()`` for ``(index,
        piece)`` of ``n`` replies); ``.result`` (``.results``) is then the ``Completion`` that
        ``complete`` returns for the same arguments (same seed, same text). A conversation the
        model cannot answer raises ``PromptError`` here, before any piece."""
        return CompletionStream(self, messages, n, max_tokens, temperature, top_p, seed, stop)

    def submit(
        self,
        messages: Sequence[dict],
        n: int = 1,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
        on_token: Callable[[int, int], None] | None = None,
        on_done: Callable[[], None] | None = None,
    ):
        """Queue ``n`` replies (``batcher.Job``; ``job.result()`` waits for their ``Completion``s).
        Reply ``i`` draws from seed ``seed`` for i = 0 and ``choice_seed(seed, i)`` after (``seed``
        None: random seeds). Raises ``PromptError`` at once for a conversation the model cannot
        answer."""
        if n < 1:
            raise ValueError("n must be >= 1")
        options = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=tuple(stop))
        prepared = self._prepare(messages, self._current, **options)
        seeds = choice_seeds(seed, n)
        return self.batcher.submit(Job(list(messages), options, prepared, seeds, seed is not None, on_token, on_done))

    def _prepare(self, messages, current, max_tokens, temperature, top_p, stop) -> "_Prepared":
        _, tokenizer, version = current
        sampling = replace(self.defaults)
        if temperature is not None:
            sampling.temperature = float(temperature)
        if top_p is not None:
            sampling.top_p = float(top_p)
        ids = render_messages(messages, tokenizer)
        sampling.max_new_tokens = self._reply_budget(len(ids), max_tokens)
        return _Prepared(ids, sampling, version, tuple(stop), tokenizer)

    # ------------------------------------------------------------------ the generation thread
    def _compatible(self, first, job) -> bool:
        """Whether ``job`` may share ``first``'s batch (see batcher.py)."""
        if first is job or supports(self.model)[0]:
            return True  # the native sampler takes a seed and settings per row
        a, b = first.prepared.sampling, job.prepared.sampling
        same = (a.temperature, a.top_p, a.top_k) == (b.temperature, b.top_p, b.top_k)
        own_seed = a.temperature > 0 and (first.explicit_seed or job.explicit_seed)
        return same and not own_seed

    @torch.no_grad()
    def _run_batch(self, jobs: list) -> None:
        """Generate every row of ``jobs`` in one sampler call; each job gets its completions."""
        model, tok, version = self._current
        ready = []
        for job in jobs:
            if job.prepared.version != version:  # queued before a swap: rendered for this version
                try:
                    job.prepared = self._prepare(job.messages, self._current, **job.options)
                except Exception as e:  # noqa: BLE001 - told to that caller only
                    job.finish(error=e)
                    continue
            ready.append(job)
        if not ready:
            return
        rows = [(job, i) for job in ready for i in range(job.n)]
        ids, mask = left_pad([job.prepared.ids for job, _ in rows], tok.pad_token_id, next(model.parameters()).device)
        settings = [job.prepared.sampling for job, _ in rows]
        limits = [s.max_new_tokens for s in settings]
        first = settings[0]
        sampling = SamplingConfig(
            max_new_tokens=max(limits), temperature=first.temperature, top_p=first.top_p, top_k=first.top_k
        )
        gen = make_sampler(model, sampling, tok.eos_token_id, tok.pad_token_id)
        state = [_Row(job.prepared.stop, limit) for (job, _), limit in zip(rows, limits)]

        halted = self.batcher.halted  # a stopping server's grace is over: end the batch now

        def each_step(tokens: torch.Tensor):
            if halted():
                return True
            ended = torch.zeros(len(rows), dtype=torch.bool)
            for r, ((job, i), row) in enumerate(zip(rows, state)):
                if row.finished:
                    continue
                token = int(tokens[r])
                if row.take(token, tok) and job.on_token is not None:
                    job.on_token(i, token)
                ended[r] = row.finished and row.reason != "eos"  # EOS ends a row in the sampler itself
            return True if all(row.finished for row in state) else ended

        # the per-step callback costs a little per token: needed only to stream, to watch for stop
        # strings or to end rows of shorter limits; otherwise the rows are read from the output
        # (and only the stop's check, which reads no token, runs at each step)
        watch = any(job.on_token is not None or job.prepared.stop for job in ready) or len(set(limits)) > 1
        step = each_step if watch else (lambda _tokens: halted())
        if isinstance(gen, NativeLlamaGenerator):
            same = all(
                (s.temperature, s.top_p, s.top_k) == (first.temperature, first.top_p, first.top_k) for s in settings
            )
            raw = gen.generate(
                model,
                ids,
                mask,
                0,
                on_token=step,
                row_seeds=[job.seeds[i] for job, i in rows],
                row_sampling=None if same else settings,
            )
        else:  # one setting and one random stream for the batch (compatible() made it so)
            raw = gen.generate(model, ids, mask, ready[0].seeds[0], on_token=step)
        if not watch:  # one limit, no stop strings: each row up to its EOS or the limit
            for r, row in enumerate(state):
                for token in raw[r].tolist():
                    if row.finished:
                        break
                    row.take(token, tok)
        done: dict[int, list] = {id(job): [] for job in ready}
        cut = set()  # jobs a stop's halt ended before all their rows did: answered 503, not half a reply
        for (job, _i), row in zip(rows, state):
            done[id(job)].append(row.completion(tok, len(job.prepared.ids), version))
            if not row.finished:
                cut.add(id(job))
        for job in ready:
            if id(job) in cut:
                job.finish(error=ServerStopping())
            else:
                job.finish(done[id(job)])

    def _reply_budget(self, n_prompt: int, max_tokens: int | None) -> int:
        """Tokens the reply may take; ``ContextLengthError`` when the conversation is too long, or
        when the ``max_tokens`` asked for does not fit after it (the default length is shortened
        to what fits, as OpenAI's servers do when ``max_tokens`` is left out)."""
        if self.max_prompt_length and n_prompt > self.max_prompt_length:
            raise ContextLengthError(
                f"the conversation has {n_prompt} tokens; this server takes at most {self.max_prompt_length}"
            )
        want = self.defaults.max_new_tokens if max_tokens is None else int(max_tokens)
        if not self.context_length:
            return want
        room = int(self.context_length) - n_prompt
        if room < 1 or (max_tokens is not None and want > room):
            raise ContextLengthError(
                f"this model's context is {self.context_length} tokens; the conversation "
                f"has {n_prompt} and the reply asks for {want}"
            )
        return min(want, room)


def _dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


def _context_length(model) -> int | None:
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


def choice_seeds(seed: int | None, n: int) -> list[int]:
    """The seed of each of ``n`` replies: ``seed`` itself for the first (so ``n = 1`` is the reply
    of that seed), then seeds derived from it (``rollout.step_seed``); random ones without a seed."""
    if seed is None:
        return [secrets.randbits(62) for _ in range(n)]
    return [int(seed)] + [step_seed(int(seed), i, salt=97) for i in range(1, n)]


class _Row:
    """One reply being drawn: its tokens, and whether (and why) it has ended."""

    def __init__(self, stop: tuple[str, ...], limit: int):
        self.stop, self.limit = stop, limit
        self.tokens: list[int] = []  # drawn text tokens (no EOS)
        self.drawn = 0  # tokens drawn, EOS included
        self.finished, self.reason = False, ""

    def take(self, token: int, tok) -> bool:
        """Take a drawn token; True when it is a text token of the reply."""
        self.drawn += 1
        if token == tok.eos_token_id:
            self.finished, self.reason = True, "eos"
            return False
        self.tokens.append(token)
        if self.stop and cut_at_stop(tok.decode(self.tokens, skip_special_tokens=True), self.stop)[1]:
            self.finished, self.reason = True, "stop"  # a stop string reached: no token past it is drawn
        elif self.drawn >= self.limit:
            self.finished, self.reason = True, "length"
        return True

    def completion(self, tok, prompt_tokens: int, version: str) -> Completion:
        text, stopped = cut_at_stop(tok.decode(self.tokens, skip_special_tokens=True), self.stop)
        return Completion(
            text=text,
            finish_reason="stop" if stopped or self.reason == "eos" else "length",
            prompt_tokens=prompt_tokens,
            completion_tokens=self.drawn,
            version=version,
        )


def default_model_name(spec: str) -> str:
    """The name a served model goes by when none is given: its folder's name (``runs/dpo/model``
    -> ``dpo/model``, as every recipe saves to a folder named ``model``); a ``config.json`` path
    names its folder; a ``.gguf`` file its own name; an alias or hub name itself."""
    p = Path(str(spec).rstrip("/"))
    if p.name == "config.json":
        p = p.parent
    if p.name in ("model", "final") and p.parent.name:
        return f"{p.parent.name}/{p.name}"
    return p.name or str(spec)


@dataclass
class _Prepared:
    ids: list[int]  # the rendered conversation
    sampling: Any  # rollout.SamplingConfig, max_new_tokens within the context
    version: str  # the version it was rendered for
    stop: tuple[str, ...]
    tokenizer: Any  # that version's


def new_completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)
