"""Screenshot of a pipeline report (headless Chromium through Playwright), to look at it and to
put it in the docs.

    .venv/bin/python benchmarks/report_screenshot.py outputs/pipeline_chat/report.html docs/img/pipeline_report.png

The report is self-contained (its charts inline SVG), so it is opened as a file:// page
with no server. ``--full_page`` (default) captures the whole page, not only the first screen.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("report", help="report.html of a pipeline run")
    p.add_argument("png", help="output image")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--full_page", type=int, default=1, help="1 = the whole page, 0 = the first screen")
    a = p.parse_args(argv)
    report = Path(a.report).resolve()
    if not report.is_file():
        sys.exit(f"no report at {report}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": a.width, "height": 900})
        page.goto(report.as_uri())
        page.wait_for_load_state("load")
        Path(a.png).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=a.png, full_page=bool(a.full_page))
        height = page.evaluate("document.body.scrollHeight")
        browser.close()
    print(f"{a.png}: {a.width} x {height} px page")
    return 0


if __name__ == "__main__":
    sys.exit(main())
