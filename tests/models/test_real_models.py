"""The embedded real models: MiniLM (reward backbone, fast) and SmolLM2-135M GGUF (policy, slow)."""

import math

import pytest
import torch

from rlhfkit.models import (
    MINILM_ALIAS,
    SMOLLM2_ALIAS,
    is_encoder,
    load_policy,
    load_reward_model,
    position_ids_from_mask,
    reward_scores,
    score_head,
    token_values,
)

TEXTS = ["Great answer, thanks!", "The reply ignores the question entirely and rambles on about cats.", "Paris."]


def _pad(seqs, pad_id, side):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        ids[i, sl] = torch.tensor(s)
        mask[i, sl] = 1
    return ids, mask


@pytest.fixture(scope="module")
def minilm():
    return load_reward_model(MINILM_ALIAS)


def test_minilm_reward_model_loads(minilm):
    model, tok = minilm
    assert type(model).__name__ == "BertForSequenceClassification"
    assert is_encoder(model) and model.config.num_labels == 1
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    assert tok.padding_side == "right" and model.config.pad_token_id == tok.pad_token_id
    head = score_head(model)
    expected = 1 / math.sqrt(model.config.hidden_size + 1)
    assert abs(head.weight.std().item() - expected) / expected < 0.2  # 384 samples
    assert torch.count_nonzero(head.bias) == 0
    assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert model.config.hidden_dropout_prob == 0 and model.config.attention_probs_dropout_prob == 0


@torch.no_grad()
def test_minilm_padding_invariant(minilm):
    model, tok = minilm
    seqs = [tok(t).input_ids for t in TEXTS]
    alone = torch.stack(
        [reward_scores(model, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))[0] for s in seqs]
    )
    for side in ("right", "left"):
        ids, mask = _pad(seqs, tok.pad_token_id, side)
        torch.testing.assert_close(reward_scores(model, ids, mask), alone, rtol=0, atol=1e-5)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    torch.testing.assert_close(reward_scores(model, batch.input_ids, batch.attention_mask), alone, rtol=0, atol=1e-5)


@torch.no_grad()
def test_minilm_save_round_trip(minilm, tmp_path):
    from transformers import AutoModelForSequenceClassification

    model, tok = minilm
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    torch.testing.assert_close(
        reward_scores(reloaded, batch.input_ids, batch.attention_mask),
        reward_scores(model, batch.input_ids, batch.attention_mask),
        rtol=0,
        atol=1e-6,
    )
    again, _ = load_reward_model(str(tmp_path))  # trained head kept, not re-initialised
    torch.testing.assert_close(score_head(again).weight, score_head(model).weight)


@pytest.mark.slow
@torch.no_grad()
def test_smollm2_gguf_policy_and_reward_model(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model, tok = load_policy(SMOLLM2_ALIAS)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert tok.pad_token == "<|pad|>" and tok.pad_token_id != tok.eos_token_id
    assert len(tok) == 49153 == model.get_input_embeddings().weight.shape[0]
    assert model.config.pad_token_id == tok.pad_token_id
    assert getattr(model.config, "quantization_config", None) is None
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Say hi."}], tokenize=False, add_generation_prompt=True
    )
    batch = tok([prompt, "Hi"], padding=True, return_tensors="pt")
    assert tok.padding_side == "left"
    logits = model(**batch, position_ids=position_ids_from_mask(batch.attention_mask)).logits
    assert logits.shape[:2] == batch.input_ids.shape and torch.isfinite(logits).all()
    alone = model(**tok(["Hi"], return_tensors="pt")).logits[0, -1]
    torch.testing.assert_close(logits[1, -1], alone, rtol=0, atol=1e-4)

    # the same GGUF as a causal reward model: backbone copied, fresh head, saves and reloads
    rm, rm_tok = load_reward_model(SMOLLM2_ALIAS, tokenizer=tok)
    assert type(rm).__name__ == "LlamaForSequenceClassification"
    torch.testing.assert_close(rm.model.norm.weight, model.model.norm.weight)
    scores = reward_scores(rm, batch.input_ids, batch.attention_mask)
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    values = token_values(rm, batch.input_ids, batch.attention_mask)
    torch.testing.assert_close(values[:, -1], scores, rtol=0, atol=1e-4)
    rm.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    torch.testing.assert_close(
        reward_scores(reloaded, batch.input_ids, batch.attention_mask), scores, rtol=0, atol=1e-5
    )
