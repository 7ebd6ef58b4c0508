import collections
import gzip
import json

import pytest

from rlhfkit.data import (
    CompletionRecord,
    ConversationRecord,
    DataError,
    PreferencePair,
    RankingRecord,
    read_records,
    write_jsonl,
)

GOOD = {"prompt": "p", "chosen": "c", "rejected": "r"}


def _write_lines(path, lines):
    path.write_bytes(b"\n".join(l if isinstance(l, bytes) else l.encode() for l in lines) + b"\n")
    return path


def test_jsonl_round_trip(tmp_path):
    recs = [PreferencePair("p", "c", "r"), PreferencePair("q", "ç✓", "r", margin=1.0, subset="s")]
    path = tmp_path / "sub" / "pairs.jsonl"
    assert write_jsonl(path, recs) == 2
    res = read_records(path, "pairs")
    assert res.records == recs and not res.skipped and res.path == str(path)


def test_gz_and_json_list(tmp_path):
    recs = [RankingRecord("p", ["a", "b"], [0, 1])] * 3
    write_jsonl(tmp_path / "r.jsonl.gz", recs)
    with gzip.open(tmp_path / "r.jsonl.gz", "rb") as f:
        assert f.read().count(b"\n") == 3
    assert read_records(tmp_path / "r.jsonl.gz", "rankings").records == recs
    (tmp_path / "r.json").write_text(json.dumps([r.to_dict() for r in recs]))
    assert read_records(str(tmp_path / "r.json"), "rankings").records == recs


def test_sft_accepts_both_formats(tmp_path):
    rows = [
        {"prompt": "p", "completion": "c"},
        {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]},
    ]
    res = read_records(rows, "sft")
    assert isinstance(res.records[0], CompletionRecord)
    assert isinstance(res.records[1], ConversationRecord)


def test_hf_dataset_input():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([GOOD, {"prompt": "p", "chosen": "", "rejected": "r"}])
    with pytest.raises(DataError) as ei:
        read_records(ds, "pairs")
    assert ei.value.index == 1 and ei.value.field == "chosen"
    assert "<dataset>[1]" in str(ei.value)
    res = read_records(ds, "pairs", on_error="skip")
    assert len(res) == 1 and res.skipped == {"empty_text": 1}
    with pytest.raises(TypeError, match="one split"):
        read_records(datasets.DatasetDict({"train": ds}), "pairs")


BAD_CASES = [
    # (line content, field or None, reason)
    (b'{"prompt": "p", "chosen": "c", "rejected": ', None, "malformed_json"),
    (b'{"prompt": "p", "chosen": 7, "rejected": "r"}', "chosen", "wrong_type"),
    (b'{"prompt": "p", "rejected": "r"}', "chosen", "missing_field"),
    (b'{"prompt": "p", "chosen": "c", "rejected": "  "}', "rejected", "empty_text"),
    (b'{"prompt": "p", "chosen": "c\xff\xfe", "rejected": "r"}', None, "invalid_utf8"),
    (b'["p", "c", "r"]', None, "not_object"),
    (json.dumps({"prompt": "p", "chosen": "x" * 500, "rejected": "r"}).encode(), "chosen", "too_long"),
]


@pytest.mark.parametrize("bad,field,reason", BAD_CASES, ids=[c[2] for c in BAD_CASES])
def test_bad_input_names_file_line_field(tmp_path, bad, field, reason):
    good = json.dumps(GOOD).encode()
    path = _write_lines(tmp_path / "train.jsonl", [good, b"", good, bad, good])
    with pytest.raises(DataError) as ei:
        read_records(path, "pairs", max_chars=200)
    err = ei.value
    msg = str(err)
    assert "train.jsonl:4:" in msg and err.line == 4 and err.path == str(path)
    assert err.reason == reason
    if field is not None:
        assert err.field == field and f"field '{field}'" in msg
    # no deep chained traceback
    assert err.__cause__ is None and err.__suppress_context__
    res = read_records(path, "pairs", on_error="skip", max_chars=200)
    assert len(res.records) == 3 and res.skipped == collections.Counter({reason: 1})


def test_skip_counts_several_reasons(tmp_path):
    good = json.dumps(GOOD)
    path = _write_lines(
        tmp_path / "mixed.jsonl", [good, "{oops", '{"prompt": 1, "chosen": "c", "rejected": "r"}', "{oops", "3", good]
    )
    res = read_records(path, "pairs", on_error="skip")
    assert len(res) == 2
    assert res.skipped == {"malformed_json": 2, "wrong_type": 1, "not_object": 1}


def test_json_list_errors(tmp_path):
    p = tmp_path / "data.json"
    p.write_text('[\n{"prompt": "a"},\n{"prompt": ""}\n]')
    with pytest.raises(DataError) as ei:
        read_records(p, "prompts")
    assert "data.json[1]" in str(ei.value) and ei.value.field == "prompt"
    p.write_text('[\n{"prompt": "a"},\n{"prompt": }\n]')
    with pytest.raises(DataError) as ei:
        read_records(p, "prompts")
    assert "data.json:3" in str(ei.value) and ei.value.reason == "malformed_json"
    p.write_bytes(b'[\n{"prompt": "a"},\n{"prompt": "\xff"}\n]')
    with pytest.raises(DataError) as ei:
        read_records(p, "prompts")
    assert "data.json:3" in str(ei.value) and ei.value.reason == "invalid_utf8"


def test_nested_field_and_bom(tmp_path):
    conv = {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": 5}]}
    p = _write_lines(tmp_path / "c.jsonl", [b"\xef\xbb\xbf" + json.dumps(conv).encode()])
    with pytest.raises(DataError, match=r"c\.jsonl:1: field 'messages\[1\]\.content'"):
        read_records(p, "conversations")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown kind"):
        read_records([], "nonsense")
    with pytest.raises(FileNotFoundError):
        read_records(tmp_path / "missing.jsonl", "pairs")


def test_numbers_beyond_any_float_are_bad_records_not_tracebacks(tmp_path):
    """An integer beyond the float range (1 followed by 400 zeros) is a field error; one of more
    digits than Python converts (4300) is malformed JSON with its line, in JSON lines and lists."""
    huge = "1" + "0" * 400
    _write_lines(tmp_path / "a.jsonl", [json.dumps(GOOD)[:-1] + f', "weight": {huge}}}'])
    with pytest.raises(DataError) as e:
        read_records(tmp_path / "a.jsonl", "pairs")
    assert (e.value.line, e.value.field, e.value.reason) == (1, "weight", "invalid_value")
    assert "beyond the float range" in str(e.value)
    longer = "1" + "0" * 5000
    _write_lines(tmp_path / "b.jsonl", [json.dumps(GOOD), json.dumps(GOOD)[:-1] + f', "margin": {longer}}}'])
    res = read_records(tmp_path / "b.jsonl", "pairs", on_error="skip")
    assert len(res.records) == 1 and res.skipped == {"malformed_json": 1}
    with pytest.raises(DataError, match=r"b.jsonl:2: malformed JSON: Exceeds the limit \(4300 digits\)"):
        read_records(tmp_path / "b.jsonl", "pairs")
    (tmp_path / "c.json").write_text(f'[{json.dumps(GOOD)[:-1]}, "margin": {longer}}}]')
    with pytest.raises(DataError, match="c.json: malformed JSON"):
        read_records(tmp_path / "c.json", "pairs")


def test_a_json_file_holding_one_object(tmp_path):
    """A .json file holding one object, pretty-printed or not, is one record; one that wraps the
    records in a field ({"data": [...]}) is refused naming the field, not read as a record
    missing every field; a .json file of JSON lines still reads line by line."""
    (tmp_path / "one.json").write_text(json.dumps(GOOD, indent=2))
    assert read_records(tmp_path / "one.json", "pairs").records == [PreferencePair("p", "c", "r")]
    conv = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    (tmp_path / "conv.json").write_text(json.dumps(conv, indent=1))
    assert read_records(tmp_path / "conv.json", "sft").records == [ConversationRecord(conv["messages"])]
    (tmp_path / "wrapped.json").write_text(json.dumps({"version": 2, "data": [GOOD, GOOD]}, indent=2))
    with pytest.raises(DataError, match="one JSON object with the records in its field 'data'") as e:
        read_records(tmp_path / "wrapped.json", "pairs")
    assert e.value.reason == "not_object"
    _write_lines(tmp_path / "lines.json", [json.dumps(GOOD), json.dumps({**GOOD, "prompt": "q"})])
    assert [r.prompt for r in read_records(tmp_path / "lines.json", "pairs")] == ["p", "q"]


def test_a_line_too_long_for_any_record_is_refused_before_it_is_parsed(tmp_path):
    """A JSON line longer than any record within max_chars could be (6 bytes a character, 16 MB
    for keys and extra columns) is refused by its line and length, unparsed; a shorter line with a
    large extra column reads as before, and with on_error skip the long one is counted."""
    from rlhfkit.data.readers import line_limit

    assert line_limit(100_000) == 16_600_000 and line_limit(None) is None
    giant = json.dumps({**GOOD, "chosen": "x" * 17_000_000})
    extra = json.dumps({**GOOD, "image": "y" * 1_500_000})
    path = _write_lines(tmp_path / "g.jsonl", [json.dumps(GOOD), extra, giant])
    with pytest.raises(DataError) as e:
        read_records(path, "pairs", max_chars=10)
    assert (e.value.line, e.value.reason, e.value.field) == (3, "too_long", None)
    assert f"a line of {len(giant)} bytes" in str(e.value)
    res = read_records(path, "pairs", on_error="skip")
    assert len(res.records) == 2 and res.skipped == {"too_long": 1}
