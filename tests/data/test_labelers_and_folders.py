"""Records carry who judged them (`labeler`) and how much they count (`weight`); a `datasets`
folder reads wherever a file does; a JSON array in a JSON-lines file is named as such."""

import json

import pytest

from rlhfkit.data import (
    ConversationRecord,
    DataError,
    PreferencePair,
    RankingRecord,
    RatingRecord,
    RewriteRecord,
    ThumbsRecord,
    read_records,
    write_jsonl,
)


def test_labeler_and_weight_read_back_and_are_left_out_while_unset(tmp_path):
    recs = [
        PreferencePair("p", "c", "r", labeler="labeler-0a1b", weight=0.75),
        RatingRecord("p", "c", 5.0, labeler="labeler-2c3d"),
        ThumbsRecord("p", "c", True, weight=0.0),
        ConversationRecord(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], labeler="labeler-x", weight=2.0
        ),
    ]
    kinds = ["pairs", "ratings", "thumbs", "conversations"]
    for rec, kind in zip(recs, kinds):
        write_jsonl(tmp_path / f"{kind}.jsonl", [rec])
        assert read_records(tmp_path / f"{kind}.jsonl", kind).records == [rec]
    # a record without them writes exactly as before: no null columns
    assert PreferencePair("p", "c", "r").to_dict() == {
        "prompt": "p",
        "chosen": "c",
        "rejected": "r",
        "margin": None,
        "tie": False,
        "subset": None,
    }
    assert ThumbsRecord("p", "c", True, weight=0.0).to_dict() == {
        "prompt": "p",
        "completion": "c",
        "label": True,
        "weight": 0.0,
    }


@pytest.mark.parametrize(
    "value, message", [(-0.5, "weight >= 0"), ("1", "expected a number"), (float("nan"), "finite")]
)
def test_a_bad_weight_names_file_line_and_field(tmp_path, value, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"})
        + "\n"
        + json.dumps({"prompt": "p", "chosen": "c", "rejected": "r", "weight": value})
        + "\n"
    )
    with pytest.raises(DataError) as e:
        read_records(path, "pairs")
    assert (e.value.line, e.value.field) == (2, "weight") and message in str(e.value)


def test_an_empty_labeler_is_refused():
    with pytest.raises(DataError) as e:
        ThumbsRecord.from_dict({"prompt": "p", "completion": "c", "label": True, "labeler": " "})
    assert e.value.field == "labeler"


def test_derived_records_keep_labeler_and_weight():
    ranking = RankingRecord("p", ["a", "b", "c"], [2, 0, 1], labeler="labeler-1", weight=0.5)
    assert {(p.labeler, p.weight) for p in ranking.to_pairs()} == {("labeler-1", 0.5)}
    rewrite = RewriteRecord("p", "bad", "good", labeler="labeler-2", weight=0.9)
    assert (rewrite.to_demonstration().labeler, rewrite.to_demonstration().weight) == ("labeler-2", 0.9)
    assert (rewrite.to_pair().labeler, rewrite.to_pair().weight) == ("labeler-2", 0.9)


def test_a_json_array_in_a_jsonl_file_is_named_as_such(tmp_path):
    rows = [{"prompt": "p", "chosen": "c", "rejected": "r"}] * 2
    for name, text in (("one_line.jsonl", json.dumps(rows)), ("pretty.jsonl", json.dumps(rows, indent=2))):
        path = tmp_path / name
        path.write_text(text)
        for on_error in ("raise", "skip"):  # a problem of the whole file: never skipped as bad lines
            with pytest.raises(DataError) as e:
                read_records(path, "pairs", on_error=on_error)
            assert str(e.value) == (
                f"{path}:1: this file holds a JSON array; JSON Lines needs one object per line "
                "(rename it .json to read it as a JSON list)"
            )
        renamed = path.rename(path.with_suffix(".json"))
        assert len(read_records(renamed, "pairs")) == 2


def test_a_datasets_folder_reads_like_a_file(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [
        {"prompt": "p1", "chosen": "c", "rejected": "r", "labeler": "labeler-a"},
        {"prompt": "p2", "chosen": "c", "rejected": "r", "labeler": None},
    ]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    recs = read_records(tmp_path / "ds", "pairs").records
    assert [(r.prompt, r.labeler) for r in recs] == [("p1", "labeler-a"), ("p2", None)]
    # a bad row is named by the folder and its index
    datasets.Dataset.from_list([{"prompt": "p", "chosen": "", "rejected": "r"}]).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(DataError, match=r"bad\[0\]: field 'chosen'"):
        read_records(tmp_path / "bad", "pairs")


def test_folders_that_are_not_one_dataset_are_refused_by_name(tmp_path):
    datasets = pytest.importorskip("datasets")
    d = datasets.Dataset.from_list([{"prompt": "p", "chosen": "c", "rejected": "r"}])
    datasets.DatasetDict({"train": d, "test": d}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"DatasetDict with splits \['test', 'train'\]; give one split's folder"):
        read_records(tmp_path / "dd", "pairs")
    assert len(read_records(tmp_path / "dd" / "train", "pairs")) == 1
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="not one written by datasets' save_to_disk"):
        read_records(tmp_path / "plain", "pairs")
