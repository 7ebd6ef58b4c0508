"""Real processes the tests drive on loopback: ``rlhfkit serve`` started as a user starts it
(``serve_process`` / ``launch_serve``), and headless Chromium for the browser tests (the
``browser`` fixture in ``tests/conftest.py``, ``CHROMIUM`` and its flags)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

CHROMIUM = "/usr/bin/chromium"  # Debian's, driven by Python Playwright: no browser download
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SERVE_ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_serve(
    model: str | Path, *flags: str, env: dict[str, str | None] | None = None, start_seconds: float = 60
) -> tuple[subprocess.Popen, str]:
    """``rlhfkit serve --model MODEL --port FREE --threads 1 FLAGS`` in its own process (output
    piped, one thread, offline; ``env`` adds variables, a None value removes one), returned once
    ``/health`` answers 200: ``(process, base URL)``. A process that exits, or does not answer
    within ``start_seconds``, fails the test with its output. Stop it with ``stop_serve``."""
    import httpx

    port = free_port()
    environ = {**os.environ, **SERVE_ENV}
    for name, value in (env or {}).items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    argv = [sys.executable, "-m", "rlhfkit.cli", "serve", "--model", str(model), "--port", str(port)]
    proc = subprocess.Popen(
        [*argv, "--threads", "1", *flags], env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_seconds
        while True:
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    return proc, base
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, f"rlhfkit serve did not answer /health in {start_seconds} s"
            time.sleep(0.1)
    except BaseException:
        stop_serve(proc)
        raise


def stop_serve(proc: subprocess.Popen) -> str:
    """Stop the server if it still runs (terminate, then kill after 30 s) and return its output."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
    log = proc.stdout.read()
    proc.stdout.close()
    return log


@contextlib.contextmanager
def serve_process(model: str | Path, *flags: str, env: dict[str, str | None] | None = None) -> Iterator[tuple]:
    """``launch_serve`` for the length of a ``with`` block: ``(process, base URL)``, stopped after."""
    proc, base = launch_serve(model, *flags, env=env)
    try:
        yield proc, base
    finally:
        stop_serve(proc)
