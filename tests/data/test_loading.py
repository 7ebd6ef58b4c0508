"""``rlhfkit.data.loading``: the one reader of the JSONL rows rlhfkit writes between stages, and
the one prompt loader."""

import json

import pytest

from rlhfkit.data import write_jsonl
from rlhfkit.data.loading import load_prompts, read_jsonl, tokenizer_corpus


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
    path.write_text(
        json.dumps({"step": 1}) + "\n\n" + json.dumps({"step": 2}) + "\n" + '{"step": 3, "lo', encoding="utf-8"
    )
    with pytest.raises(json.JSONDecodeError):
        read_jsonl(path)
    assert read_jsonl(path, tolerant=True) == [{"step": 1}, {"step": 2}]
    with pytest.raises(FileNotFoundError):
        read_jsonl(tmp_path / "absent.jsonl")
    assert read_jsonl(tmp_path / "absent.jsonl", tolerant=True) == []


def test_prompts_of_a_file_keep_their_repeats_unless_asked_once_each(tmp_path):
    """A prompt file gives its prompts in file order, repeats kept, the first ``limit`` with a
    limit; ``unique`` keeps each prompt once as held-out splits compare them (case and spacing
    aside), the first spelling, in file order."""
    path = tmp_path / "prompts.jsonl"
    write_jsonl(path, [{"prompt": p} for p in ["Hello there", "b", "hello  THERE ", "c", "b"]])
    assert load_prompts(str(path)) == ["Hello there", "b", "hello  THERE ", "c", "b"]
    assert load_prompts(str(path), limit=3) == ["Hello there", "b", "hello  THERE "]
    assert load_prompts(str(path), unique=True) == ["Hello there", "b", "c"]


def test_the_movie_review_pool_draws_its_limit_by_seed_in_file_order(shared_data):
    """``movie-reviews``: the first ``prompt_words`` words of each review; a limit draws that many
    reviews with the seed (the same draw for the same seed), kept in file order."""
    everything = load_prompts("movie-reviews", prompt_words=5)
    drawn = load_prompts("movie-reviews", prompt_words=5, limit=10, seed=3)
    assert len(drawn) == 10 and all(len(p.split()) == 5 for p in drawn)
    assert drawn == load_prompts("movie-reviews", prompt_words=5, limit=10, seed=3)
    positions = [everything.index(p) for p in drawn]
    assert positions == sorted(positions)
    assert drawn != load_prompts("movie-reviews", prompt_words=5, limit=10, seed=4)


def test_the_tiny_tokenizer_corpus_is_a_whole_prompt_file_each_prompt_once(tmp_path):
    """The pipeline's and the loop's tiny tokenizer read every prompt of a prompt file (no limit
    of 600 as for the reviews), each once."""
    path = tmp_path / "prompts.jsonl"
    write_jsonl(path, [{"prompt": f"prompt {i % 700}"} for i in range(1400)])
    corpus = tokenizer_corpus(str(path))
    assert corpus == [f"prompt {i}" for i in range(700)]


def test_the_prompt_pool_holds_each_prompt_once_whatever_its_case_or_spacing(tmp_path):
    """Two spellings of one prompt are one prompt of the pool (the first kept), so the seeded
    split of the pool (the pipeline's, the loop's) cannot put one spelling among the held-out
    prompts and one in training."""
    rows = [{"prompt": p} for p in ["The film was", "the film  was ", "A story", "THE FILM WAS", "a\tstory", "Other"]]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pool = load_prompts(str(tmp_path / "prompts.jsonl"), prompt_words=8, unique=True)
    assert pool == ["The film was", "A story", "Other"]


def test_a_named_pool_gives_the_tiny_tokenizer_600_prompts_drawn_with_seed_0(shared_data):
    """From a named pool the tiny tokenizer's corpus is 600 prompts drawn with seed 0 (of the
    reviews, their first 40 words), each once, in pool order."""
    from rlhfkit.data.shared_sets import load_named_prompts

    chat = tokenizer_corpus("chat-first-turns")
    assert chat == [r.prompt for r in load_named_prompts("chat-first-turns", limit=600, seed=0)]
    reviews = tokenizer_corpus("movie-reviews")
    assert 0 < len(reviews) <= 600 and all(len(p.split()) == 40 for p in reviews)
    assert reviews == load_prompts("movie-reviews", prompt_words=40, limit=600, seed=0, unique=True)
