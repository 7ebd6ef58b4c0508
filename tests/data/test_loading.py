"""``rlhfkit.data.loading``: the one reader of the JSONL rows rlhfkit writes between stages."""
import json

import pytest

from rlhfkit.data import write_jsonl
from rlhfkit.data.loading import read_jsonl


def test_rows_with_unicode_line_separators_in_a_text_read_back(tmp_path):
    """Sampled text can hold U+2028, U+0085 or U+001C; JSON written with ensure_ascii=False keeps
    the first two as they are, and str.splitlines would cut the row there (a crash seen in a
    SmolLM2 loop); rows are split on newlines only."""
    rows = [{"prompt": "p", "response": "a\u2028b\x85c\x1cd\u2029e"}, {"prompt": "q", "response": "plain"}]
    path = tmp_path / "c.jsonl"
    write_jsonl(path, rows)
    assert "\u2028" in path.read_text(encoding="utf-8")  # written as it is, not escaped
    assert read_jsonl(path) == rows
    assert read_jsonl(path, tolerant=True) == rows


def test_a_row_cut_by_a_kill_stops_a_stage_but_not_a_report(tmp_path):
    """A stage's inputs must be whole: a line that is not JSON is an error. A report of a run that
    may be running or was killed passes over such a line and reads a missing file as no rows.
    Blank lines are no rows either way."""
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1}) + "\n\n" + json.dumps({"step": 2}) + "\n" + '{"step": 3, "lo',
                    encoding="utf-8")
    with pytest.raises(json.JSONDecodeError):
        read_jsonl(path)
    assert read_jsonl(path, tolerant=True) == [{"step": 1}, {"step": 2}]
    with pytest.raises(FileNotFoundError):
        read_jsonl(tmp_path / "absent.jsonl")
    assert read_jsonl(tmp_path / "absent.jsonl", tolerant=True) == []

