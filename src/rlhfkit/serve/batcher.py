"""Concurrent requests generate together: one generation thread, waves of requests.

Requests (``Job``: a rendered conversation, its sampling settings, ``n`` rows with their seeds)
wait in a queue. The generation thread takes the first one waiting, and with it every waiting
request that may share its batch, up to ``max_batch`` rows, waiting at most ``batch_wait_ms``
after the first one arrived for others to join; it left-pads the rows and makes ONE sampler call
(``rollout.make_sampler``) for all of them. Each row keeps its own length limit, stop strings and
finish reason (``on_token`` ends a row as soon as it is done), and streams its tokens to its
request as they are drawn.

Which requests may share a batch: with the native Llama-family sampler, any (it takes a seed and
temperature / top-p / top-k per row, and a row's random draws come from its own seed only). With
Hugging Face's ``generate`` (other architectures) the batch has one setting and one random
stream, so only requests with the same settings share one, and a sampled request with its own
seed runs alone (its reply must not depend on who it was batched with).

What a row's reply depends on: its prompt, settings and seed -- and, through float rounding
only, on its batch: a padded batch computes the same logits up to the last bits (matrix
products over other shapes round differently; measured: at most 5e-5 on SmolLM2-135M's logits),
which can flip a sampled or greedy token where two are within that of each other. The tests
check that a batched row equals the row alone on the tiny test model; on a real model treat
"same seed, same reply" as exact for a request served alone and near-certain in a batch.

Swapping the model (a new policy version) happens between batches: ``swap`` waits for the batch
in flight, so no request is ever answered by half of each. Requests rendered for the old
version are rendered again for the new one when their turn comes.

Stopping (``drain(grace_s)``, on the server's SIGTERM): no new job is taken (``submit`` raises
``ServerStopping``); the queued ones keep being generated until ``grace_s`` has passed; then the
batch in flight stops at its next token (``halted``: its jobs whose rows had all ended are
answered, the others fail) and every job still queued fails with ``ServerStopping``, which the
server answers 503. So a stop takes at most the grace plus one sampler step, however long the
queue.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

__all__ = ["Job", "Batcher", "BatchStats", "ServerStopping"]


class ServerStopping(RuntimeError):
    """The server is stopping: this request was not (or not wholly) generated; ask again later."""

    def __init__(self) -> None:
        super().__init__("the server is shutting down; send the request again (to this server once it is back)")


@dataclass
class Job:
    """One request's rows. ``prepared``: ``(ids, sampling, version)`` from the chat model's
    ``_prepare`` (``sampling.max_new_tokens`` is this request's length limit); ``seeds``: one per
    row; ``explicit_seed``: the caller chose the seed; ``on_token(row, token)``: called with every
    drawn text token (streaming), from the generation thread; ``on_done()`` once the job is
    finished (answered or failed)."""

    messages: list
    options: dict  # max_tokens, temperature, top_p, stop: what _prepare renders again after a swap
    prepared: Any
    seeds: list[int]
    explicit_seed: bool
    on_token: Callable[[int, int], None] | None = None
    on_done: Callable[[], None] | None = None
    arrived: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    completions: list | None = None
    error: BaseException | None = None

    def finish(self, completions: list | None = None, error: BaseException | None = None) -> None:
        self.completions, self.error = completions, error
        self.done.set()
        if self.on_done is not None:
            self.on_done()

    @property
    def n(self) -> int:
        return len(self.seeds)

    def result(self, timeout: float | None = None) -> list:
        """The ``Completion`` of every row (waits); raises what generation raised."""
        if not self.done.wait(timeout):
            raise TimeoutError("generation did not finish in time")
        if self.error is not None:
            raise self.error
        return self.completions


@dataclass
class BatchStats:
    batches: int = 0  # sampler calls
    requests: int = 0  # requests taken into them
    rows: int = 0  # replies generated (n per request)
    largest_batch: int = 0  # rows in the largest sampler call

    def as_dict(self, queued: int = 0) -> dict:
        return {
            "batches": self.batches,
            "requests": self.requests,
            "rows": self.rows,
            "largest_batch": self.largest_batch,
            "queued": queued,  # requests waiting for a batch now
        }


class Batcher:
    """The generation thread of one chat model. ``submit(job)`` queues a job; ``job.result()``
    waits for it. ``run_batch(jobs)`` is the chat model's: it generates a list of compatible jobs
    (called in the generation thread, under ``lock``, which ``swap`` takes too)."""

    def __init__(
        self,
        run_batch: Callable[[list[Job]], None],
        compatible: Callable[[Job, Job], bool],
        max_batch: int = 8,
        batch_wait_ms: float = 5.0,
    ):
        if max_batch < 1 or batch_wait_ms < 0:
            raise ValueError("max_batch must be >= 1 and batch_wait_ms >= 0")
        self.run_batch, self.compatible = run_batch, compatible
        self.max_batch, self.batch_wait = int(max_batch), float(batch_wait_ms) / 1000.0
        self.lock = threading.Lock()  # held while a batch generates: a swap waits for it
        self.stats = BatchStats()
        self._queue: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._deadline: float | None = None  # set by drain: generation stops then (time.monotonic)

    def queued(self) -> int:
        return len(self._queue)

    def submit(self, job: Job) -> Job:
        with self._cv:
            if self._deadline is not None:
                raise ServerStopping()
            if self._closed:
                raise RuntimeError("the chat model was closed")
            self._queue.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="rlhfkit-generate", daemon=True)
                self._thread.start()
            self._cv.notify()
        return job

    def drain(self, grace_s: float) -> None:
        """Take no new job; generate the queued ones for ``grace_s`` seconds from now at most,
        then fail what is left with ``ServerStopping`` (see the module's docstring). Returns at
        once (it may run in a signal handler: ``_cv``'s lock is reentrant, so a handler that
        interrupts ``submit`` in the same thread does not wait for itself)."""
        with self._cv:
            if self._deadline is None:
                self._deadline = time.monotonic() + max(0.0, float(grace_s))
            self._cv.notify()

    def halted(self) -> bool:
        """Whether a drain's grace is over: the batch in flight stops at its next token."""
        deadline = self._deadline
        return deadline is not None and time.monotonic() >= deadline

    def close(self) -> None:
        """Stop the thread once the queue is empty (requests already queued are answered)."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=60)

    def _take(self) -> list[Job] | None:
        """The next batch: the oldest job and the compatible ones behind it, up to ``max_batch``
        rows, after waiting until ``batch_wait`` past the oldest job's arrival for others."""
        with self._cv:
            while not self._queue and not self._closed and self._deadline is None:
                self._cv.wait()
            if self.halted():  # the grace is over: what is still queued is answered 503
                left, self._queue = list(self._queue), collections.deque()
                for job in left:
                    job.finish(error=ServerStopping())
                return None
            if not self._queue:
                return None
            first = self._queue[0]
            while not self._closed and self._deadline is None:  # draining: no waiting for others
                rows = sum(j.n for j in self._queue if self.compatible(first, j))
                left = first.arrived + self.batch_wait - time.monotonic()
                if rows >= self.max_batch or left <= 0:
                    break
                self._cv.wait(left)
            batch, rows, kept = [], 0, collections.deque()
            for job in self._queue:
                if not batch or (self.compatible(first, job) and rows + job.n <= self.max_batch):
                    batch.append(job)
                    rows += job.n
                else:
                    kept.append(job)
            self._queue = kept
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            with self.lock:
                rows = sum(j.n for j in batch)  # counted before any caller is answered
                self.stats.batches += 1
                self.stats.requests += len(batch)
                self.stats.rows += rows
                self.stats.largest_batch = max(self.stats.largest_batch, rows)
                try:
                    self.run_batch(batch)
                except BaseException as e:  # noqa: BLE001 - every waiting caller gets the error
                    for job in batch:
                        if not job.done.is_set():
                            job.finish(error=e)


def left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` ``[B, P]``: the rows right-aligned (left padding, as every sampler takes)."""
    P = max(len(r) for r in rows)
    ids = torch.full((len(rows), P), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), P), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, P - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, P - len(r) :] = 1
    return ids.to(device), mask.to(device)
