"""Simulated labelers over HTTP: a tiny keep-alive HTTP/1.1 client on asyncio streams (cheap enough
that 50 of them in one process leave the CPU to the server being measured) and a labeler loop that
fetches tasks, judges them with a Python function and submits, retrying the same task after a lost
connection (submits are idempotent, so a retry never duplicates a label).

Used by the concurrency test and ``benchmarks/feedback_load.py``; also a template for scripted
labelling (e.g. an LLM judge) against a running server.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["HTTPClient", "LabelerStats", "run_labeler", "HTTPError"]


class HTTPError(RuntimeError):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status, self.body = status, body


class HTTPClient:
    """One keep-alive connection; ``await request(method, path, body) -> (status, json | None)``.
    Connection problems raise ``ConnectionError`` (the caller decides to retry)."""

    def __init__(self, host: str, port: int, token: str | None = None, timeout: float = 30.0) -> None:
        self.host, self.port, self.token, self.timeout = host, port, token, timeout
        self._r: asyncio.StreamReader | None = None
        self._w: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self._w is not None:
            self._w.close()
            try:
                await self._w.wait_closed()
            except Exception:  # noqa: BLE001
                pass
        self._r = self._w = None

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        try:
            return await asyncio.wait_for(self._request(method, path, body), self.timeout)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as e:
            await self.close()
            raise ConnectionError(f"{method} {path}: {type(e).__name__}: {e}") from None

    async def _request(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if self._w is None:
            self._r, self._w = await asyncio.open_connection(self.host, self.port)
        data = b"" if body is None else json.dumps(body).encode()
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(data)}"]
        if body is not None:
            head.append("Content-Type: application/json")
        if self.token:
            head.append(f"Authorization: Bearer {self.token}")
        self._w.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        await self._w.drain()
        status_line = await self._r.readline()
        if not status_line:
            raise asyncio.IncompleteReadError(b"", None)
        status = int(status_line.split()[1])
        length, close = 0, False
        while True:
            line = await self._r.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            k, _, v = line.decode("latin-1").partition(":")
            k = k.strip().lower()
            if k == "content-length":
                length = int(v.strip())
            elif k == "connection" and v.strip().lower() == "close":
                close = True
        payload = await self._r.readexactly(length) if length else b""
        if close:
            await self.close()
        return status, (json.loads(payload) if payload else None)


@dataclass
class LabelerStats:
    acked: list = field(default_factory=list)  # (task_id, label_id, duplicate) of acknowledged labels
    latencies: list = field(default_factory=list)  # seconds per acknowledged submit
    ack_times: list = field(default_factory=list)  # perf_counter() at each acknowledgement
    retries: int = 0
    done: bool = False  # nothing left for this labeler


async def run_labeler(
    host: str,
    port: int,
    token: str,
    judge: Callable[[dict], dict],
    *,
    project_id: int | None = None,
    stop_at: float | None = None,
    max_labels: int | None = None,
    stats: LabelerStats | None = None,
    retry_delay: float = 0.1,
    pace: float | None = None,
    start_offset: float = 0.0,
) -> LabelerStats:
    """Label until nothing is left, ``stop_at`` (``time.perf_counter()``) or ``max_labels``.
    ``judge(task) -> verdict``. Lost connections are retried (same task) until ``stop_at``.

    ``pace``: seconds between the starts of two submissions (a person's think time; open loop:
    a slow reply does not delay the schedule, a late one is sent at once); None = as fast as
    replies come back (closed loop). ``start_offset`` spreads the labelers' schedules."""
    stats = stats or LabelerStats()
    client = HTTPClient(host, port, token)
    q = f"?project_id={project_id}" if project_id is not None else ""
    task = None
    next_at = time.perf_counter() + start_offset
    try:
        while (stop_at is None or time.perf_counter() < stop_at) and (
            max_labels is None or len(stats.acked) < max_labels
        ):
            try:
                if task is None:
                    status, task = await client.request("POST", f"/api/tasks/next{q}")
                    if status == 204:
                        stats.done = True
                        break
                    if status != 200:
                        raise HTTPError(status, task)
                verdict = judge(task)
                if pace is not None:
                    delay = next_at - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    next_at = max(next_at + pace, time.perf_counter() - pace)
                t0 = time.perf_counter()
                status, res = await client.request("POST", f"/api/tasks/{task['task_id']}/label?next=true", verdict)
                if status != 200:
                    raise HTTPError(status, res)
                t1 = time.perf_counter()
                stats.latencies.append(t1 - t0)
                stats.ack_times.append(t1)
                stats.acked.append((task["task_id"], res["label_id"], res["duplicate"]))
                task = res["next"]
                if task is None:
                    stats.done = True
                    break
            except ConnectionError:
                stats.retries += 1
                await asyncio.sleep(retry_delay)
    finally:
        await client.close()
    return stats
