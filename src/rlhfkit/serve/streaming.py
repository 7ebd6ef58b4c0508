"""A reply's text as it is drawn: pieces that never show a stop string or half a character.

``cut_at_stop`` / ``held_for_stop`` find where stop strings end a reply or may begin;
``PieceDecoder`` turns one reply's tokens into text pieces; ``CompletionStream`` is what
``ChatModel.stream`` returns: the pieces of ``n`` replies while the generation thread draws them.
"""

from __future__ import annotations

import queue
from typing import TYPE_CHECKING, Iterator, Sequence

if TYPE_CHECKING:
    from .engine import ChatModel, Completion


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string (excluded), and whether one occurred."""
    ends = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(ends)], True) if ends else (text, False)


def held_for_stop(text: str, stop: Sequence[str]) -> int:
    """How many characters at the end of ``text`` could begin a stop string: a stream holds
    them back until the next tokens show whether the stop string follows."""
    return max((k for s in stop for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])), default=0)


class PieceDecoder:
    """The text pieces of one reply from its tokens as they are drawn: a piece is the decoded text
    that grew since the last one, held back while it ends in an incomplete UTF-8 character (a
    byte-level token can end mid-character), up to the last token (whose text can change once the
    next token is seen) and while its end could begin a stop string; ``finish`` gives the rest."""

    def __init__(self, tokenizer, stop: Sequence[str]):
        self.tok, self.stop = tokenizer, tuple(stop)
        self.body: list[int] = []
        self.sent = ""

    def push(self, token: int) -> str:
        self.body.append(token)
        text, stopped = cut_at_stop(self.tok.decode(self.body[:-1], skip_special_tokens=True), self.stop)
        if not stopped:
            text = text[: len(text) - held_for_stop(text, self.stop)]
        if len(text) > len(self.sent) and text.startswith(self.sent) and not text.endswith("\ufffd"):
            piece, self.sent = text[len(self.sent) :], text
            return piece
        return ""

    def finish(self, final_text: str) -> str:
        if final_text.startswith(self.sent) and len(final_text) > len(self.sent):
            piece, self.sent = final_text[len(self.sent) :], final_text
            return piece
        return ""


class CompletionStream:
    """The pieces of ``n`` replies while the generation thread draws them. Iterating gives the
    text pieces of reply 0 (``n = 1``); ``events()`` gives ``(index, piece)`` for every reply.
    ``results`` (and ``result``, the first) are set when the iteration ends; each reply's pieces
    join to its ``text``. A conversation the model cannot answer raises ``PromptError`` at
    construction, before any piece."""

    _END = object()

    def __init__(self, chat: ChatModel, messages, n, max_tokens, temperature, top_p, seed, stop):
        self.chat = chat
        self._tokens: queue.Queue = queue.Queue()
        self.job = chat.submit(
            messages,
            n,
            max_tokens,
            temperature,
            top_p,
            seed,
            stop,
            on_token=lambda i, t: self._tokens.put((i, t)),
            on_done=lambda: self._tokens.put(self._END),
        )
        self.prompt_tokens = len(self.job.prepared.ids)
        self.results: list[Completion] | None = None

    @property
    def result(self) -> Completion | None:
        return None if self.results is None else self.results[0]

    @property
    def version(self) -> str:
        return self.job.prepared.version

    def __iter__(self) -> Iterator[str]:
        for _, piece in self.events():
            yield piece

    def events(self) -> Iterator[tuple[int, str]]:
        decoders: dict[int, PieceDecoder] = {}
        while (item := self._tokens.get()) is not self._END:
            i, token = item
            # the tokenizer of the version that draws (a job queued before a swap is rendered
            # again for the new version before its first token)
            dec = decoders.setdefault(i, PieceDecoder(self.job.prepared.tokenizer, self.job.prepared.stop))
            piece = dec.push(token)
            if piece:
                yield i, piece
        self.results = self.job.result()  # raises what generation raised
        for i, c in enumerate(self.results):
            piece = decoders.setdefault(i, PieceDecoder(self.job.prepared.tokenizer, self.job.prepared.stop)).finish(
                c.text
            )
            if piece:
                yield i, piece
