import pytest

from rlhfkit.data import (
    CompletionRecord,
    ConversationRecord,
    DataError,
    PreferencePair,
    PromptRecord,
    RankingRecord,
    RatingRecord,
    RewriteRecord,
    ThumbsRecord,
)

EXAMPLES = [
    PromptRecord("Write a haiku about rain."),
    CompletionRecord("", "Just text to model."),
    CompletionRecord("Q: 2+2?", " 4"),
    ConversationRecord(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
        ]
    ),
    PreferencePair("p", "good", "bad"),
    PreferencePair("p", "a", "b", margin=2.5, tie=True, subset="hh"),
    RankingRecord("p", ["x", "y", "z"], [1, 0, 1]),
    RatingRecord("p", "c", 5.0, flags=["toxic"]),
    RatingRecord("p", "c", 0.5, scale_min=0, scale_max=1),
    ThumbsRecord("p", "c", False),
    RewriteRecord("p", "wrong answer", "right answer"),
]


@pytest.mark.parametrize("rec", EXAMPLES, ids=lambda r: type(r).__name__)
def test_round_trip(rec):
    d = rec.to_dict()
    assert type(rec).from_dict(d) == rec
    import json

    assert type(rec).from_dict(json.loads(json.dumps(d))) == rec


def test_ranking_to_pairs_skips_ties():
    r = RankingRecord("p", ["a", "b", "c", "d"], [2, 0, 1, 0])
    pairs = r.to_pairs()
    got = {(p.chosen, p.rejected) for p in pairs}
    assert got == {("b", "a"), ("c", "a"), ("d", "a"), ("b", "c"), ("d", "c")}
    assert all(p.prompt == "p" and not p.tie for p in pairs)


def test_rewrite_to_demonstration():
    assert RewriteRecord("p", "o", "r").to_demonstration() == CompletionRecord("p", "r")
    assert RewriteRecord("p", "o", "r").to_pair() == PreferencePair("p", "r", "o")


@pytest.mark.parametrize(
    "cls,d,field",
    [
        (PreferencePair, {"prompt": "p", "chosen": 3, "rejected": "r"}, "chosen"),
        (PreferencePair, {"prompt": "p", "chosen": "c"}, "rejected"),
        (PreferencePair, {"prompt": "p", "chosen": "c", "rejected": "r", "margin": True}, "margin"),
        (PreferencePair, {"prompt": "p", "chosen": "c", "rejected": "r", "tie": 1}, "tie"),
        (PromptRecord, {"prompt": "   "}, "prompt"),
        (CompletionRecord, {"prompt": None, "completion": "c"}, "prompt"),
        (ConversationRecord, {"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role"),
        (ConversationRecord, {"messages": [{"role": "user", "content": "x"}]}, "messages"),
        (ConversationRecord, {"messages": [{"role": "assistant"}]}, "messages[0].content"),
        (RankingRecord, {"prompt": "p", "responses": ["a", "b"], "ranks": [0]}, "ranks"),
        (RankingRecord, {"prompt": "p", "responses": ["a", "b"], "ranks": [0, "1"]}, "ranks[1]"),
        (RankingRecord, {"prompt": "p", "responses": ["a", ""], "ranks": [0, 1]}, "responses[1]"),
        (RatingRecord, {"prompt": "p", "completion": "c", "rating": 9}, "rating"),
        (ThumbsRecord, {"prompt": "p", "completion": "c", "label": "yes"}, "label"),
        (RewriteRecord, {"prompt": "p", "original": "o"}, "rewrite"),
    ],
)
def test_field_errors(cls, d, field):
    with pytest.raises(DataError) as ei:
        cls.from_dict(d)
    assert ei.value.field == field
    assert f"field '{field}'" in str(ei.value)


def test_not_an_object():
    with pytest.raises(DataError, match="JSON object"):
        PreferencePair.from_dict(["p", "c", "r"])


def test_error_format_and_pickle():
    import pickle

    e = DataError(
        "expected a non-empty string, got int", path="data/train.jsonl", line=12, field="chosen", reason="wrong_type"
    )
    assert str(e) == "data/train.jsonl:12: field 'chosen': expected a non-empty string, got int"
    assert isinstance(e, ValueError)
    e2 = pickle.loads(pickle.dumps(e))
    assert str(e2) == str(e) and e2.line == 12 and e2.reason == "wrong_type"
    e3 = DataError("bad", path="x.json", field="f", index=3)
    assert str(e3) == "x.json[3]: field 'f': bad" and e3.line == 3
