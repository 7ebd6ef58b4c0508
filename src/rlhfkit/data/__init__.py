"""rlhfkit.data: record types, validated readers, converters for the shared real data, loading
training records and prompts (``loading``), held-out splits (``splits``), and tokenisation.
Errors about user data are :class:`DataError` and name file, line and field."""

from .errors import DataError
from .records import (
    ROLES,
    CompletionRecord,
    ConversationRecord,
    PreferencePair,
    PromptRecord,
    RankingRecord,
    RatingRecord,
    RewriteRecord,
    ThumbsRecord,
)
from .readers import KINDS, ReadResult, parse_record, read_records, write_jsonl
from .loading import load_prompts, load_training_records, named_set, read_jsonl
from .splits import draw_in_order, first_n, prompt_key, split_by_prompt, split_holdout
from .shared_sets import (
    FineGrainedData,
    OasstData,
    load_finegrained,
    load_hh_rlhf,
    load_movie_review_prompts,
    load_oasst,
    prompt_format,
    render_dialogue,
    shared_data_dir,
    split_hh_dialogue,
)
from .tokenize import IGNORE_INDEX, pad_sequences, special_layout, tokenize_pair, tokenize_sft

__all__ = [
    "DataError",
    "ROLES",
    "PromptRecord",
    "CompletionRecord",
    "ConversationRecord",
    "PreferencePair",
    "RankingRecord",
    "RatingRecord",
    "ThumbsRecord",
    "RewriteRecord",
    "KINDS",
    "ReadResult",
    "parse_record",
    "read_records",
    "write_jsonl",
    "read_jsonl",
    "named_set",
    "load_training_records",
    "load_prompts",
    "prompt_key",
    "split_holdout",
    "split_by_prompt",
    "draw_in_order",
    "first_n",
    "shared_data_dir",
    "split_hh_dialogue",
    "load_hh_rlhf",
    "FineGrainedData",
    "prompt_format",
    "load_finegrained",
    "OasstData",
    "render_dialogue",
    "load_oasst",
    "load_movie_review_prompts",
    "IGNORE_INDEX",
    "tokenize_sft",
    "tokenize_pair",
    "pad_sequences",
    "special_layout",
]
