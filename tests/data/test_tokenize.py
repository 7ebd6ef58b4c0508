import pytest
import torch

from rlhfkit.data import (
    IGNORE_INDEX,
    CompletionRecord,
    ConversationRecord,
    pad_sequences,
    tokenize_pair,
    tokenize_sft,
)

CONV = ConversationRecord(
    [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "hello world"},
        {"role": "assistant", "content": "the cat sat"},
        {"role": "user", "content": "and the dog?"},
        {"role": "assistant", "content": "on the log"},
    ]
)


def _enc(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_tiny_tokenizer_specials(tiny_tok):
    ids = {tiny_tok.bos_token_id, tiny_tok.eos_token_id, tiny_tok.pad_token_id}
    assert len(ids) == 3 and None not in ids


def test_sft_completion_labels(tiny_tok):
    rec = CompletionRecord("what is the capital of france?", " paris.")
    out = tokenize_sft(rec, tiny_tok, max_length=64)
    p, c = _enc(tiny_tok, rec.prompt), _enc(tiny_tok, rec.completion)
    assert out["input_ids"] == [tiny_tok.bos_token_id] + p + c + [tiny_tok.eos_token_id]
    n_prompt = 1 + len(p)
    assert out["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert out["labels"][n_prompt:] == c + [tiny_tok.eos_token_id]
    short = tokenize_sft(rec, tiny_tok, max_length=5)
    assert short["input_ids"] == out["input_ids"][:5] and short["labels"] == out["labels"][:5]


def test_sft_conversation_chat_template(tiny_tok):
    out = tokenize_sft(CONV, tiny_tok, max_length=256)
    ids, labels = out["input_ids"], out["labels"]
    assert len(ids) == len(labels)
    assert ids == _enc(tiny_tok, tiny_tok.apply_chat_template(CONV.messages, tokenize=False))
    trained = tiny_tok.decode([t for t, l in zip(ids, labels) if l != IGNORE_INDEX])
    assert trained == "the cat sat<eos>on the log<eos>"
    assert all(l in (IGNORE_INDEX, t) for t, l in zip(ids, labels))


def test_sft_conversation_fallback(tiny_tok_plain):
    tok = tiny_tok_plain
    out = tokenize_sft(CONV.to_dict(), tok, max_length=256)
    text = tok.decode(out["input_ids"])
    assert text.startswith("<bos>System: be nice\n\nUser: hello world\n\nAssistant: the cat sat<eos>")
    trained = tok.decode([t for t, l in zip(out["input_ids"], out["labels"]) if l != IGNORE_INDEX])
    assert trained == "the cat sat<eos>on the log<eos>"


def test_pair_causal_left_truncation_keeps_response_end(tiny_tok):
    prompt, resp = "the cat sat on the mat and the dog sat on the log", " what is the capital of france?"
    p, r = _enc(tiny_tok, prompt), _enc(tiny_tok, resp)
    bos, eos = tiny_tok.bos_token_id, tiny_tok.eos_token_id
    full = tokenize_pair(prompt, resp, tiny_tok, max_length=1000)
    assert full == [bos] + p + r + [eos]
    n = len(r) + 5
    cut = tokenize_pair(prompt, resp, tiny_tok, max_length=n)
    assert len(cut) == n and cut[0] == bos and cut[-1] == eos
    assert cut[-1 - len(r) : -1] == r and cut[1:4] == p[-3:]
    tiny = tokenize_pair(prompt, resp, tiny_tok, max_length=6)  # response alone too long
    assert tiny == [bos] + r[-4:] + [eos]
    right = tokenize_pair(prompt, resp, tiny_tok, max_length=n, truncation_side="right")
    assert right == ([bos] + p + r)[: n - 1] + [eos]


def test_pair_encoder_minilm(minilm_tok):
    tok = minilm_tok
    cls, sep = tok.cls_token_id, tok.sep_token_id
    prompt = "the quick brown fox jumps over the lazy dog " * 5
    resp = "a short answer about foxes"
    p, r = _enc(tok, prompt), _enc(tok, resp)
    full = tokenize_pair(prompt, resp, tok, max_length=512)
    assert full == tok(prompt, resp)["input_ids"] == [cls] + p + [sep] + r + [sep]
    cut = tokenize_pair(prompt, resp, tok, max_length=20)
    assert len(cut) == 20 and cut[0] == cls and cut[-1] == sep
    assert cut[-1 - len(r) : -1] == r and cut[-2 - len(r)] == sep
    assert cut[1 : 20 - 3 - len(r) + 1] == p[len(p) - (20 - 3 - len(r)) :]
    only = tokenize_pair("", resp, tok, max_length=64)
    assert only == [cls] + r + [sep]


def test_pad_sequences():
    ids, mask = pad_sequences([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert ids.dtype == torch.long
    ids, mask = pad_sequences([torch.tensor([1, 2, 3]), [4]], pad_id=9, side="left")
    assert ids.tolist() == [[1, 2, 3], [9, 9, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    labels, _ = pad_sequences([[-100, 5], [6]], pad_id=-100)
    assert labels.tolist() == [[-100, 5], [6, -100]]
    with pytest.raises(ValueError):
        pad_sequences([[1]], 0, side="middle")
