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
