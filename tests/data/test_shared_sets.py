"""Converters for the real data in ../shared/data (skipped where that folder is absent)."""

import gzip
import json

import pytest

from rlhfkit.data import (
    CompletionRecord,
    PreferencePair,
    RankingRecord,
    load_finegrained,
    load_hh_rlhf,
    load_movie_review_prompts,
    load_oasst,
    prompt_format,
    shared_data_dir,
    split_hh_dialogue,
)


def test_shared_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("RLHFKIT_SHARED_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path
    monkeypatch.setenv("RLHFKIT_SHARED_DATA", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="RLHFKIT_SHARED_DATA"):
        shared_data_dir()


def test_split_hh_dialogue():
    c = "\n\nHuman: hi\n\nAssistant: Hello there\n\nHuman: joke?\n\nAssistant: Sure, one joke."
    r = "\n\nHuman: hi\n\nAssistant: Hello there\n\nHuman: joke?\n\nAssistant: Sure? No."
    prompt, ch, rj = split_hh_dialogue(c, r)
    assert prompt == "\n\nHuman: hi\n\nAssistant: Hello there\n\nHuman: joke?\n\nAssistant:"
    assert (ch, rj) == ("Sure, one joke.", "Sure? No.")
    # prefixes that differ before the last turn: cut at the last shared Assistant:
    prompt, ch, rj = split_hh_dialogue(
        "\n\nHuman: a\n\nAssistant: x\n\nHuman: b\n\nAssistant: y", "\n\nHuman: a\n\nAssistant: z"
    )
    assert prompt == "\n\nHuman: a\n\nAssistant:" and ch.startswith("x\n\nHuman: b") and rj == "z"


def test_hh_rlhf(shared_data):
    path = shared_data / "hh-rlhf-harmless-base-test.jsonl.gz"
    raw = [json.loads(l) for l in gzip.open(path, "rt", encoding="utf-8")]
    assert len(raw) == 2312
    pairs = load_hh_rlhf(path)
    allp = load_hh_rlhf(path, keep_empty=True)
    assert len(allp) == 2312
    n_empty = sum(1 for p in allp if not p.chosen or not p.rejected)
    assert len(pairs) == 2312 - n_empty == 2308
    assert all(isinstance(p, PreferencePair) for p in pairs)
    assert all(p.prompt.endswith("Assistant:") and p.prompt.startswith("\n\nHuman:") for p in pairs)
    assert all(PreferencePair.from_dict(p.to_dict()) == p for p in pairs)  # all valid records
    assert sum(p.chosen != p.rejected for p in pairs) / len(pairs) > 0.95
    # reconstruction: prompt + " " + reply gives back the original dialogue
    for p, d in zip(allp[:200], raw[:200]):
        assert d["chosen"].startswith(p.prompt) and d["chosen"].rstrip().endswith(p.chosen)
        assert not p.chosen.startswith(" ")


def _count_finegrained(path):
    data = json.loads(path.read_text(encoding="utf-8"))
    prefs = [v for item in data for v in item["preference"]]
    demos = sum(1 for item in data if item["feedback"]["corrected-prediction"].strip())
    return len(data), len(prefs), prefs.count(0), demos


def test_finegrained(shared_data):
    path = shared_data / "finegrained-qa-feedback-dev.json"
    n_items, n_prefs, n_ties, n_demos = _count_finegrained(path)
    drop = load_finegrained(path, ties="drop")
    keep = load_finegrained(path, ties="keep")
    assert n_items == 500 and n_prefs == 3000
    assert len(drop.pairs) == n_prefs - n_ties and len(keep.pairs) == n_prefs
    assert drop.n_ties == keep.n_ties == n_ties == 384
    assert sum(p.tie for p in keep.pairs) == n_ties and not any(p.tie for p in drop.pairs)
    assert len(drop.demonstrations) == n_demos == 487
    assert all(isinstance(d, CompletionRecord) and d.completion for d in drop.demonstrations)
    assert all(p.subset == "finegrained" for p in keep.pairs)
    # first question: preference [0, 1, 2, 1, 0, 2] over (1,2),(1,3),(1,4),(2,3),(2,4),(3,4)
    data = json.loads(path.read_text(encoding="utf-8"))
    item = data[0]
    first = [p for p in keep.pairs if p.prompt == drop.pairs[0].prompt][:6]
    pred = {k: item[f"prediction {k}"].strip() for k in range(1, 5)}
    assert [(p.chosen, p.rejected, p.tie) for p in first] == [
        (pred[1], pred[2], True),
        (pred[1], pred[3], False),
        (pred[4], pred[1], False),
        (pred[2], pred[3], False),
        (pred[2], pred[4], True),
        (pred[4], pred[3], False),
    ]
    assert first[0].prompt == prompt_format(item["question"], item["passages"])
    assert first[0].prompt.startswith("Question: " + item["question"]) and first[0].prompt.endswith("\n\nAnswer:")


def test_prompt_format():
    s = prompt_format("Who?", [["T", "T\n\nFirst  one.", "Second."], ["U", "x"]])
    assert s == "Question: Who?\n\n[1] T: First one. Second.\n[2] U: x\n\nAnswer:"
    assert prompt_format("Who?", []) == "Question: Who?\n\nAnswer:"


def test_oasst(shared_data):
    path = shared_data / "oasst-en-100-trees.jsonl"
    data = load_oasst(path)
    # independent count: groups of >=2 ranked assistant replies
    groups, expected_pairs = 0, 0

    def walk(n):
        nonlocal groups, expected_pairs
        ranks = [r["rank"] for r in n.get("replies", []) if r.get("rank") is not None]
        if len(ranks) >= 2:
            groups += 1
            expected_pairs += sum(
                1 for i in range(len(ranks)) for j in range(i + 1, len(ranks)) if ranks[i] != ranks[j]
            )
        for r in n.get("replies", []):
            walk(r)

    for line in path.open(encoding="utf-8"):
        walk(json.loads(line)["prompt"])
    assert len(data.rankings) == groups == 212
    assert len(data.pairs) == expected_pairs == sum(len(r.to_pairs()) for r in data.rankings)
    assert all(isinstance(r, RankingRecord) and len(r.responses) >= 2 for r in data.rankings)
    assert all(RankingRecord.from_dict(r.to_dict()) == r for r in data.rankings)
    assert len(data.demonstrations) == len(data.conversations) == 212
    best = {(r.prompt, r.responses[r.ranks.index(min(r.ranks))]) for r in data.rankings}
    assert {(d.prompt, d.completion) for d in data.demonstrations} == best
    multi = [r for r in data.rankings if r.prompt.startswith("User: ")]
    assert multi and all("\n\nAssistant: " in r.prompt for r in multi)
    assert all(c.messages[-1]["role"] == "assistant" for c in data.conversations)


def test_movie_review_prompts(shared_data):
    path = shared_data / "movie_reviews.zip"
    prompts = load_movie_review_prompts(path, n_words=8)
    assert len(prompts) == 2000
    assert all(len(p.prompt.split()) == 8 for p in prompts)
    some = load_movie_review_prompts(path, n_words=5, limit=10, seed=1)
    assert len(some) == 10 and all(len(p.prompt.split()) == 5 for p in some)
    assert some == load_movie_review_prompts(path, n_words=5, limit=10, seed=1)
    assert some != load_movie_review_prompts(path, n_words=5, limit=10, seed=2)


def _write_chat_sources(tmp_path):
    """Three OASST trees (the second deleted) and four HH dialogues (the third repeats the first
    turn of the first with other case and spacing, the fourth is longer than 6 words)."""
    trees = [
        {"prompt": {"text": "  How do I boil an egg? ", "role": "prompter", "replies": []}},
        {"prompt": {"text": "A deleted question", "role": "prompter", "deleted": True}},
        {"prompt": {"text": "Name a red fruit.", "role": "prompter", "review_result": True}},
    ]
    oasst = tmp_path / "oasst.jsonl"
    oasst.write_text("".join(json.dumps(t) + "\n" for t in trees), encoding="utf-8")
    dialogues = [
        "\n\nHuman: Tell me a joke\n\nAssistant: No.",
        "\n\nHuman: name a red fruit.\n\nAssistant: An apple.\n\nHuman: Another?\n\nAssistant: A cherry.",
        "\n\nHuman: tell me   a JOKE\n\nAssistant: Why not.",
        "\n\nHuman: one two three four five six seven\n\nAssistant: Eight.",
    ]
    hh = tmp_path / "hh.jsonl.gz"
    with gzip.open(hh, "wt", encoding="utf-8") as f:
        for d in dialogues:
            f.write(
                json.dumps({"chosen": d, "rejected": d.rsplit("Assistant:", 1)[0] + "Assistant: Something else."})
                + "\n"
            )
    return oasst, hh


def test_chat_prompts_are_short_unique_first_turns_oasst_first(tmp_path):
    from rlhfkit.data.shared_sets import load_chat_prompts

    oasst, hh = _write_chat_sources(tmp_path)
    got = [p.prompt for p in load_chat_prompts(oasst, hh, max_words=6)]
    # OASST roots (the deleted one skipped, text stripped), then HH first turns; "name a red fruit."
    # and "tell me   a JOKE" repeat earlier turns up to case and spacing; the 7-word turn is too long
    assert got == ["How do I boil an egg?", "Name a red fruit.", "Tell me a joke"]
    assert [p.prompt for p in load_chat_prompts(oasst, hh, max_words=7)][-1] == "one two three four five six seven"
    with pytest.raises(ValueError, match="max_words"):
        load_chat_prompts(oasst, hh, max_words=0)


def test_chat_first_turns_pool_from_the_shared_data(shared_data):
    """The named pool ``chat-first-turns``: the first human turn of each OASST tree and each HH
    dialogue, at most 25 words, each once; counts as documented in data/shared_sets.py."""
    import re

    from rlhfkit.data.shared_sets import PROMPT_POOLS, load_chat_prompts, load_named_prompts

    oasst_roots = [
        json.loads(l)["prompt"]["text"].strip()
        for l in (shared_data / "oasst-en-100-trees.jsonl").open(encoding="utf-8")
    ]
    hh_firsts = []
    for line in gzip.open(shared_data / "hh-rlhf-harmless-base-test.jsonl.gz", "rt", encoding="utf-8"):
        dialogue = json.loads(line)["chosen"]
        hh_firsts.append(re.split(r"\n\nAssistant:", dialogue.split("\n\nHuman:", 1)[1], maxsplit=1)[0].strip())
    pool = [p.prompt for p in load_chat_prompts()]
    assert len(pool) == 2076 and "chat-first-turns" in PROMPT_POOLS
    keys = [" ".join(p.split()).casefold() for p in pool]
    assert len(set(keys)) == len(keys)  # each turn once
    assert all(1 <= len(p.split()) <= 25 for p in pool)
    n_oasst = sum(p in set(oasst_roots) for p in pool)
    assert (n_oasst, len(pool) - n_oasst) == (68, 2008)
    assert pool[:n_oasst] == [p for p in oasst_roots if len(p.split()) <= 25]  # OASST first, in file order
    assert set(pool[n_oasst:]) <= set(hh_firsts)
    # every short HH first turn is in the pool, or an equal one (up to case and spacing) came before
    assert {" ".join(p.split()).casefold() for p in hh_firsts if len(p.split()) <= 25} <= set(keys)
    some = load_named_prompts("chat-first-turns", limit=10, seed=3)
    assert len(some) == 10 and [p.prompt for p in some] == [p for p in pool if p in {s.prompt for s in some}]
    with pytest.raises(ValueError, match="unknown prompt pool"):
        load_named_prompts("chat-first-turn")
