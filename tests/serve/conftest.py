"""A tiny chat model (byte-level BPE with a chat template + a 2-layer Llama) saved as a folder."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_chat_dir(tmp_path_factory) -> Path:
    from rlhfkit.models import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    out = tmp_path_factory.mktemp("chat_model")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_chat(tiny_chat_dir):
    from rlhfkit.serve.engine import ChatModel

    return ChatModel.load(str(tiny_chat_dir), name="tiny-chat", max_new_tokens=8, temperature=1.0)


@pytest.fixture(scope="session")
def learner_dir(tmp_path_factory, tiny_chat_dir) -> Path:
    """A learner folder over the tiny chat model: v0 (the base, promoted) and v1 (a LoRA adapter
    that changes its greedy replies)."""
    from ..models.test_versions import make_learner

    return make_learner(tmp_path_factory.mktemp("learner"), tiny_chat_dir)
