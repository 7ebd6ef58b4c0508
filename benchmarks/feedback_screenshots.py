"""Screenshots of the feedback app for the docs: the pairwise labelling page (a multi-turn
conversation), the ranking page and the admin dashboard of a project labelled by simulated
labelers. Headless Debian Chromium through Python Playwright (no browser download).

    python benchmarks/feedback_screenshots.py --out docs/img
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def seed(store) -> dict:
    from sqlalchemy import insert

    from rlhfkit.feedback import db
    from rlhfkit.feedback.auth import create_user
    from rlhfkit.feedback.queue import add_items, next_task, submit_label
    from rlhfkit.feedback.tasks import parse_items

    rng = random.Random(0)
    store.write(lambda c: create_user(c, "admin", "admin-password", "admin"))
    labelers = [
        store.write(lambda c, n=n: create_user(c, n, "labeler-password")) for n in ("ana", "ben", "chloe", "dev")
    ]
    conv = [
        {"role": "user", "content": "I want to bake bread at home but I have never done it. Where do I start?"},
        {
            "role": "assistant",
            "content": "A simple no-knead loaf is a good first bread: flour, water, salt and a "
            "little yeast, left to rise overnight.",
        },
        {"role": "user", "content": "How much yeast, and how long should it rise?"},
    ]
    chat_items = [
        {
            "messages": conv,
            "responses": [
                "For 500 g of flour use about 1/4 teaspoon (1 g) of instant yeast. Let the dough rise 12-18 hours at "
                "room temperature, until it is bubbly and has doubled, then shape it and give it 1-2 more hours.",
                "Use a packet of yeast and let it rise for about 20 minutes. Then bake it.",
            ],
            "models": ["policy", "sft"],
        }
    ]
    pair_items = []
    for i in range(40):  # the better summary is the first or the second response, at random
        pair = [f"A faithful one-sentence summary of article {i}.", f"A vague summary of article {i}."]
        pair_items.append(
            {
                "prompt": f"Summarise article {i} in one sentence.",
                "responses": pair if rng.random() < 0.5 else pair[::-1],
            }
        )
    pair_items += [
        {
            "prompt": f"Gold question {i}: is the sky blue on a clear day?",
            "responses": ["Yes.", "No, it is green."],
            "gold": "first",
        }
        for i in range(4)
    ]

    def project(name, ttype, items, overlap, gold_rate, instructions):
        def job(c):
            pid = c.execute(
                insert(db.projects).values(
                    name=name,
                    task_type=ttype,
                    instructions=instructions,
                    overlap=overlap,
                    gold_rate=gold_rate,
                    scale_min=1,
                    scale_max=7,
                    active=True,
                    n_items=0,
                    n_labels=0,
                    created_at=time.time(),
                )
            ).inserted_primary_key[0]
            add_items(c, pid, parse_items(items, ttype))
            return pid

        return store.write(job)

    p_pair = project(
        "helpfulness-v1",
        "pairwise",
        pair_items,
        3,
        0.15,
        "Which response is more helpful, honest and harmless?\nJudge the content, not the length. "
        "Use 'tie' when they are equally good and 'both bad' when neither is acceptable.",
    )
    p_chat = project("chat-demo", "pairwise", chat_items, 1, 0.0, "Which reply continues the conversation better?")
    p_rank = project(
        "poems-ranking",
        "ranking",
        [
            {
                "prompt": "Write a two-line poem about autumn.",
                "responses": [
                    "Leaves let go of summer's hand,\nand gold comes drifting to the land.",
                    "Autumn is a season. It is after summer.",
                    "The trees undress in amber light;\nthe year exhales, and leans toward night.",
                ],
            }
        ],
        1,
        0.0,
        "Rank the poems from best to worst.",
    )
    # simulated labelers: ana is careful, the others noisier; leave the conversation item open
    skill = {labelers[0]: 0.95, labelers[1]: 0.8, labelers[2]: 0.7, labelers[3]: 0.6}
    for uid in labelers:
        for _ in range(25):
            t = store.write(lambda c: next_task(c, uid, p_pair))
            if t is None:
                break
            good = next(r["key"] for r in t["responses"] if not r["text"].startswith(("A vague", "No,", "Use a")))
            bad = "B" if good == "A" else "A"
            choice = good if rng.random() < skill[uid] else rng.choice([bad, "tie"])
            store.write(lambda c: submit_label(c, uid, t["task_id"], {"choice": choice}))
    return {"pair": p_pair, "rank": p_rank, "chat": p_chat}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="docs/img")
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is absent", file=sys.stderr)
        return 1
    import uvicorn
    from playwright.sync_api import sync_playwright

    from rlhfkit.feedback.app import create_app

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        app = create_app(str(Path(d) / "shots.db"))
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=8791, log_level="warning", lifespan="off"))
        th = threading.Thread(target=server.run, daemon=True)
        th.start()
        while not server.started:
            time.sleep(0.05)
        ids = seed(app.state.store)
        base = "http://127.0.0.1:8791"
        with sync_playwright() as pw:
            b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)

            def login(user, pw_):
                page = b.new_context(viewport={"width": 1280, "height": 800}).new_page()
                page.goto(f"{base}/login")
                page.fill("#username", user)
                page.fill("#password", pw_)
                page.click("button[type=submit]")
                page.wait_for_url(f"{base}/")
                return page

            lab = login("ana", "labeler-password")
            lab.goto(f"{base}/label/{ids['chat']}")
            lab.wait_for_selector(".pair .response")
            lab.keyboard.press("w")
            lab.screenshot(path=str(out / "feedback_label_pairwise.png"), full_page=True)
            lab.goto(f"{base}/label/{ids['rank']}")
            lab.wait_for_selector(".ranking .response")
            lab.keyboard.press("c")
            lab.keyboard.press("a")
            lab.screenshot(path=str(out / "feedback_label_ranking.png"), full_page=True)
            adm = login("admin", "admin-password")
            adm.goto(f"{base}/admin/projects/{ids['pair']}")
            adm.screenshot(path=str(out / "feedback_dashboard.png"), full_page=True)
            adm.goto(f"{base}/admin")
            adm.screenshot(path=str(out / "feedback_admin.png"), full_page=True)
            b.close()
        server.should_exit = True
        th.join(timeout=10)
    print("wrote", ", ".join(str(p) for p in sorted(out.glob("feedback_*.png"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
