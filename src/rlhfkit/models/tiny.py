"""Tiny, randomly initialised tokenizer and models for tests and quick runs (about a second).

The tokenizer is a real byte-level BPE (any text round-trips) trained on a small built-in
English corpus, with distinct ``<|bos|>``, ``<|eos|>``, ``<|pad|>`` tokens and a chat template.
``tiny_model_folder()`` saves the model every command takes as ``--model tiny`` (see
``TINY_MODEL``) as a Hugging Face folder, built once per cache.
"""

from __future__ import annotations

import functools
import itertools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import torch
from .loading import disable_dropout
from .reward import init_score_head

__all__ = [
    "TINY_SPECIAL_TOKENS",
    "TINY_CHAT_TEMPLATE",
    "default_tiny_corpus",
    "tiny_tokenizer",
    "tiny_causal_lm",
    "tiny_reward_model",
    "tiny_encoder_reward_model",
    "TINY_MODEL",
    "tiny_model_folder",
]

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
TINY_SPECIAL_TOKENS = (PAD, BOS, EOS) + ROLE_TOKENS  # ids 0..5 in this order

# Every turn is "<|role|>\n{content}<|eos|>\n"; the whole conversation starts with <|bos|>.
# Generation prompt: "<|assistant|>\n", so a reply ends with the eos token.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

_SUBJECTS = [
    "The cat",
    "A small dog",
    "My friend",
    "The teacher",
    "Our team",
    "The old man",
    "A young girl",
    "The robot",
    "Every student",
    "The farmer",
    "She",
    "He",
    "They",
]
_VERBS = [
    "likes",
    "found",
    "wrote",
    "painted",
    "carried",
    "opened",
    "cleaned",
    "watched",
    "bought",
    "answered",
    "shared",
    "fixed",
    "explained",
    "visited",
]
_OBJECTS = [
    "the red ball",
    "a long letter",
    "the kitchen door",
    "an old book",
    "the question",
    "a new bicycle",
    "the garden",
    "two apples",
    "the river bank",
    "a simple answer",
    "the broken chair",
    "three small boxes",
    "the city map",
    "a warm coat",
]
_ENDINGS = [
    "yesterday.",
    "in the morning.",
    "after lunch.",
    "with great care.",
    "very quickly.",
    "before the rain.",
    "at the station.",
    "for the first time.",
    "again and again.",
    "without a word.",
]
_EXTRA = [
    "Hello! How are you today?",
    "I am fine, thank you. And you?",
    "What is the capital of France? The capital of France is Paris.",
    "Please write a short poem about the sea.",
    "Thank you for your help.",
    "Can you explain how rain forms? Water vapour cools and condenses into drops.",
    "The answer is 42.",
    "Add 3 and 4 to get 7; 12 minus 5 is 7 too.",
    "Is this response helpful, honest and harmless?",
    "Sorry, I cannot help with that.",
    "Summarise the text in one sentence.",
    "Here is a list: apples, pears, plums, and figs.",
    "Good morning, everyone. Let's begin.",
    "It's a sunny day; we're going to the park.",
    "def add(a, b):\n    return a + b",
    "Step 1: read. Step 2: think. Step 3: answer.",
]


def default_tiny_corpus() -> list[str]:
    """A few hundred deterministic English sentences (and a few dialogue / code lines)."""
    sentences = [
        f"{s} {v} {o} {e}"
        for (s, v, o, e) in itertools.islice(itertools.product(_SUBJECTS, _VERBS, _OBJECTS, _ENDINGS), 0, None, 37)
    ]
    return sentences + _EXTRA * 3


@functools.lru_cache(maxsize=8)
def _trained_tokenizer_json(texts: tuple[str, ...], vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(TINY_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok.to_str()


def tiny_tokenizer(texts: Iterable[str] | None = None, vocab_size: int = 512):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts`` (default: the built-in
    corpus). Special tokens ``<|pad|>`` (id 0), ``<|bos|>`` (1), ``<|eos|>`` (2) and role tags;
    pads on the right; has a chat template (see ``TINY_CHAT_TEMPLATE``). Deterministic."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    corpus = tuple(default_tiny_corpus() if texts is None else texts)
    min_size = 256 + len(TINY_SPECIAL_TOKENS)
    if vocab_size < min_size:
        raise ValueError(f"vocab_size must be at least {min_size} (bytes + special tokens)")
    backend = Tokenizer.from_str(_trained_tokenizer_json(corpus, int(vocab_size)))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="right",
        model_max_length=2048,
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def _token_ids(tokenizer) -> dict:
    return dict(
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def _llama_config(tokenizer, hidden_size: int, num_layers: int, num_heads: int, **extra):
    from transformers import LlamaConfig

    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=2048,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        **_token_ids(tokenizer),
        **extra,
    )


def tiny_causal_lm(tokenizer, hidden_size: int = 32, num_layers: int = 2, num_heads: int = 2, seed: int = 0):
    """A randomly initialised ``LlamaForCausalLM`` sized to ``tokenizer`` (dropout 0, pad id set,
    eval mode). Uses its own RNG stream (``seed``); the global torch RNG is untouched."""
    from transformers import LlamaForCausalLM

    config = _llama_config(tokenizer, hidden_size, num_layers, num_heads)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    disable_dropout(model)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model.eval()


def tiny_reward_model(
    tokenizer, kind: str = "causal", hidden_size: int = 32, num_layers: int = 2, seed: int = 0, num_heads: int = 2
):
    """A randomly initialised scalar reward model (``num_labels=1``): ``kind="causal"`` gives a
    ``LlamaForSequenceClassification`` (scores the last real token), ``kind="encoder"`` a
    ``BertForSequenceClassification`` (scores the pooled first token). Head std
    1/sqrt(hidden+1), bias 0; dropout 0; ``config.pad_token_id`` set; eval mode."""
    from transformers import BertConfig, BertForSequenceClassification, LlamaForSequenceClassification

    if kind == "causal":
        config = _llama_config(tokenizer, hidden_size, num_layers, num_heads, num_labels=1)
        cls = LlamaForSequenceClassification
    elif kind == "encoder":
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            intermediate_size=2 * hidden_size,
            max_position_embeddings=2048,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            num_labels=1,
            **_token_ids(tokenizer),
        )
        cls = BertForSequenceClassification
    else:
        raise ValueError(f"kind must be 'causal' or 'encoder', got {kind!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
        head = model.score if kind == "causal" else model.classifier
        init_score_head(head, hidden_size)
    disable_dropout(model)
    return model.eval()


def tiny_encoder_reward_model(tokenizer, hidden_size: int = 32, num_layers: int = 2, seed: int = 0, num_heads: int = 2):
    """``tiny_reward_model(tokenizer, kind="encoder", ...)``."""
    return tiny_reward_model(
        tokenizer, kind="encoder", hidden_size=hidden_size, num_layers=num_layers, seed=seed, num_heads=num_heads
    )


# The model ``--model tiny`` names (``models.loading.TINY_ALIAS``): the tests' tiny chat model, the
# default tokenizer (built-in corpus, 512 tokens, chat template) and a 2-layer Llama of width 32
# from seed 0. Randomly initialised: it runs every command in seconds and says nothing readable.
TINY_MODEL = {"vocab_size": 512, "hidden_size": 32, "num_layers": 2, "num_heads": 2, "seed": 0}


def _cache_root() -> Path:
    """``$RLHFKIT_CACHE``, else ``$XDG_CACHE_HOME/rlhfkit``, else ``~/.cache/rlhfkit``."""
    if os.environ.get("RLHFKIT_CACHE"):
        return Path(os.environ["RLHFKIT_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rlhfkit"


def tiny_model_folder() -> Path:
    """The folder of ``TINY_MODEL`` (tokenizer + ``LlamaForCausalLM``), built on first use (about
    a second) in the cache (``$RLHFKIT_CACHE``, else ``~/.cache/rlhfkit``). It is a folder like any
    saved model, so every loader, recipe and server takes it unchanged; a causal backbone for a
    reward model too (a fresh scalar head on it). Written to a temporary folder and renamed, so
    processes building it at once never see half of it; the name holds the settings and the
    transformers version that wrote it."""
    import transformers

    spec = TINY_MODEL
    name = (
        f"tiny-llama-v{spec['vocab_size']}-h{spec['hidden_size']}-l{spec['num_layers']}-a{spec['num_heads']}"
        f"-s{spec['seed']}-transformers{transformers.__version__}"
    )
    root = _cache_root()
    folder = root / name
    if (folder / "config.json").is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        tok = tiny_tokenizer(vocab_size=spec["vocab_size"])
        model = tiny_causal_lm(
            tok,
            hidden_size=spec["hidden_size"],
            num_layers=spec["num_layers"],
            num_heads=spec["num_heads"],
            seed=spec["seed"],
        )
        tok.save_pretrained(tmp)
        model.save_pretrained(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's is owner-only: a shared cache is read by every user
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished first: its folder is the same model
            if not (folder / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
