"""How often the PII redactor (``rlhfkit.privacy``) fires on the real data in ../shared/data,
every hit with its context (to be read by a person: precision), and its speed.

    .venv/bin/python benchmarks/pii_scan.py [--show 0] [--repeats 5]

Texts: HH-RLHF harmless test (chosen and rejected dialogues), the OpenAssistant trees (every
message), FineGrainedRLHF (questions, passages, the four answers, the corrections) and the movie
reviews. Hits are printed as ``KIND | context`` once per distinct context. Speed: characters per
second of ``find_pii`` over all texts, median of ``--repeats`` passes on one thread.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def texts_by_source(data: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    with gzip.open(data / "hh-rlhf-harmless-base-test.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    out["hh-rlhf harmless test"] = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]

    def walk(node: dict, acc: list[str]) -> None:
        acc.append(node.get("text", ""))
        for child in node.get("replies", []):
            walk(child, acc)

    oasst: list[str] = []
    for line in (data / "oasst-en-100-trees.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            walk(json.loads(line)["prompt"], oasst)
    out["oasst 100 trees"] = oasst
    fg = []
    for r in json.loads((data / "finegrained-qa-feedback-dev.json").read_text(encoding="utf-8")):
        fg.append(r["question"])
        fg.extend(p if isinstance(p, str) else json.dumps(p) for p in r.get("passages", []))
        fg.extend(str(r.get(f"prediction {i}", "")) for i in range(1, 5))
        fg.append(str((r.get("feedback") or {}).get("corrected-prediction", "")))
    out["finegrained dev"] = fg
    with zipfile.ZipFile(data / "movie_reviews.zip") as z:
        out["movie reviews"] = [z.read(n).decode("utf-8", "replace") for n in z.namelist() if n.endswith(".txt")]
    return out


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--show", type=int, default=1, help="print every hit with its context (0: counts only)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    import torch  # noqa: F401 - only so that one thread is set as in the tests (the scan is pure Python)

    from rlhfkit.privacy import find_pii

    sources = texts_by_source(Path(args.data))
    total_chars = 0
    for name, texts in sources.items():
        counts, seen = Counter(), []
        for t in texts:
            for s in find_pii(t):
                counts[s.kind] += 1
                ctx = f"{s.kind} | {t[max(0, s.start - 50) : s.end + 20]!r}".replace("\\n", " ")
                if ctx not in seen:
                    seen.append(ctx)
        chars = sum(len(t) for t in texts)
        total_chars += chars
        print(
            f"{name}: {len(texts)} texts, {chars / 1e6:.2f}M characters, {sum(counts.values())} hits "
            f"{dict(sorted(counts.items()))}"
        )
        if args.show:
            for ctx in seen:
                print("    " + ctx)
    every = [t for texts in sources.values() for t in texts]
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for t in every:
            find_pii(t)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(
        f"speed: {total_chars / 1e6:.2f}M characters in {med:.2f} s (median of {args.repeats}), "
        f"{total_chars / med / 1e6:.2f}M characters/s"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
