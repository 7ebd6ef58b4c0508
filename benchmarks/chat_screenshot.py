"""A screenshot of the end users' web chat (``rlhfkit serve``'s ``/chat``), for docs/img/chat.png.

    .venv/bin/python benchmarks/chat_screenshot.py --model smollm2-135m --out docs/img/chat.png

A real server on loopback (a fresh store in a temporary folder, every reply a comparison:
``--compare_share 1``), driven by headless Chromium (/usr/bin/chromium, Python Playwright): one
short conversation, then a second one where the first reply's pair is decided, thumbs up with a
reason and a rating are given, and the next message's two replies wait for a choice.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> None:
    import httpx
    from playwright.sync_api import sync_playwright

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--max_new_tokens", type=int, default=80)
    p.add_argument("--out", default=str(ROOT / "docs" / "img" / "chat.png"))
    a = p.parse_args(argv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rlhfkit.cli",
                "serve",
                "--model",
                a.model,
                "--db",
                str(Path(tmp) / "fb.db"),
                "--port",
                str(port),
                "--compare_share",
                "1",
                "--max_new_tokens",
                str(a.max_new_tokens),
                "--temperature",
                "0.3",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(3000):
                try:
                    if httpx.get(base + "/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None:
                    raise RuntimeError(proc.stdout.read())
                time.sleep(0.1)
            with sync_playwright() as pw:
                b = pw.chromium.launch(
                    executable_path="/usr/bin/chromium",
                    headless=True,
                    args=["--headless", "--no-sandbox", "--disable-gpu"],
                )
                page = b.new_context(viewport={"width": 1280, "height": 900}).new_page()
                page.set_default_timeout(600_000)
                page.goto(f"{base}/chat")
                page.wait_for_selector("#conversations li")

                def ask(text: str) -> None:
                    n = page.locator(".turn.assistant").count()
                    page.fill("#prompt", text)
                    page.press("#prompt", "Enter")
                    page.locator(".turn.assistant").nth(n).locator(".choices, .controls").first.wait_for()

                ask("Hi! What can you do?")
                page.click("button[aria-label='Prefer reply 1']")
                page.locator("#status", has_text="you prefer").wait_for()
                page.click("#new-chat")
                ask("What is a good name for a cat?")
                page.click("button[aria-label='Prefer reply 2']")
                page.locator("#status", has_text="you prefer").wait_for()
                page.click("button[aria-label='Thumbs up']")
                page.fill(".reason", "short and friendly")
                page.click("text=Send reason")
                page.locator("#status", has_text="your reason").wait_for()
                page.click("button[aria-label='Rate 4 of 5']")
                page.locator("#status", has_text="rated 4").wait_for()
                ask("Why is that a good name?")
                page.screenshot(path=a.out, full_page=True)
                b.close()
        finally:
            proc.terminate()
            proc.wait(60)
            proc.stdout.close()
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
