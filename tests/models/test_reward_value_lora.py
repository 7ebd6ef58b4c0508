"""Reward scores and token values are padding invariant; head init; save/load; LoRA reference."""

import math

import pytest
import torch

from rlhfkit.models import (
    apply_lora,
    init_score_head,
    is_encoder,
    last_real_index,
    load_reward_model,
    make_value_model,
    position_ids_from_mask,
    reference_context,
    reward_scores,
    score_head,
    tiny_causal_lm,
    tiny_reward_model,
    tiny_tokenizer,
    token_values,
)

TEXTS = [
    "a short one",
    "a much longer sentence that needs a lot more tokens than the others do",
    "medium length text here",
]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _pad(seqs, pad_id, side):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        ids[i, sl] = torch.tensor(s)
        mask[i, sl] = 1
    return ids, mask


def _alone_scores(model, seqs, fn=reward_scores):
    out = []
    for s in seqs:
        ids = torch.tensor([s])
        out.append(fn(model, ids, torch.ones_like(ids))[0])
    return out


def test_mask_helpers():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0], [0, 0, 0, 0]])
    assert last_real_index(mask).tolist() == [3, 2, 0]
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1], [0, 1, 2, 2], [0, 0, 0, 0]]


@pytest.mark.parametrize("kind", ["causal", "encoder"])
@torch.no_grad()
def test_reward_scores_padding_invariant(tok, kind):
    model = tiny_reward_model(tok, kind=kind)
    assert is_encoder(model) == (kind == "encoder")
    seqs = [tok(t).input_ids for t in TEXTS]
    alone = torch.stack(_alone_scores(model, seqs))
    for side in ("right", "left"):
        ids, mask = _pad(seqs, tok.pad_token_id, side)
        scores = reward_scores(model, ids, mask)
        assert scores.shape == (3,) and scores.dtype == torch.float32
        torch.testing.assert_close(scores, alone, rtol=0, atol=1e-5)
    # the last real token is found from the mask, not from pad ids: pad id == a real token id
    ids, mask = _pad(seqs, seqs[0][-1], "right")
    torch.testing.assert_close(reward_scores(model, ids, mask), alone, rtol=0, atol=1e-5)


@torch.no_grad()
def test_causal_reward_refuses_a_sequence_ending_in_the_pad_id(tok):
    """The HF head pools the last non-pad id: a real last token equal to the pad id would be
    scored one token early without a word, so it is an error; the pad id earlier is fine."""
    model = tiny_reward_model(tok, kind="causal")
    s = tok(TEXTS[0]).input_ids
    inside = torch.tensor([s[:1] + [tok.pad_token_id] + s[1:]])
    assert torch.isfinite(reward_scores(model, inside, torch.ones_like(inside))).all()
    ends = torch.tensor([s + [tok.pad_token_id]])
    with pytest.raises(ValueError, match="ends in the pad token"):
        reward_scores(model, ends, torch.ones_like(ends))


@torch.no_grad()
def test_reward_scores_distinguish_sequences(tok):
    model = tiny_reward_model(tok)
    ids, mask = _pad([tok(t).input_ids for t in TEXTS], tok.pad_token_id, "right")
    scores = reward_scores(model, ids, mask)
    assert scores.unique().numel() == 3


@pytest.mark.parametrize("kind", ["causal", "encoder"])
@torch.no_grad()
def test_token_values_padding_invariant(tok, kind):
    model = tiny_reward_model(tok, kind=kind)
    seqs = [tok(t).input_ids for t in TEXTS]
    alone = _alone_scores(model, seqs, fn=token_values)
    for side in ("right", "left"):
        ids, mask = _pad(seqs, tok.pad_token_id, side)
        values = token_values(model, ids, mask)
        assert values.shape == ids.shape and values.dtype == torch.float32
        for i in range(len(seqs)):
            torch.testing.assert_close(values[i][mask[i].bool()], alone[i], rtol=0, atol=1e-5)
    # for a causal model, the value at the last token is the reward score
    if kind == "causal":
        ids, mask = _pad(seqs, tok.pad_token_id, "left")
        torch.testing.assert_close(
            token_values(model, ids, mask)[:, -1], reward_scores(model, ids, mask), rtol=0, atol=1e-5
        )


@pytest.mark.parametrize("kind", ["causal", "encoder"])
def test_head_init_small(tok, kind):
    model = tiny_reward_model(tok, kind=kind, hidden_size=64)
    head = score_head(model)
    assert head.weight.shape == (1, 64)
    if head.bias is not None:
        assert torch.count_nonzero(head.bias) == 0


def test_head_init_std_statistic(tok):
    model = tiny_reward_model(tok, hidden_size=1024, num_layers=1, num_heads=8)
    w = score_head(model).weight
    assert w.shape == (1, 1024)
    expected = 1 / math.sqrt(1025)
    assert abs(w.std().item() - expected) / expected < 0.10
    assert abs(w.mean().item()) < 3 * expected / math.sqrt(1024) + 1e-6
    head = torch.nn.Linear(2048, 1)
    init_score_head(head, 2048)
    assert abs(head.weight.std().item() - 1 / math.sqrt(2049)) / (1 / math.sqrt(2049)) < 0.10
    assert torch.count_nonzero(head.bias) == 0
    init_score_head(head, 2048, zero=True)
    assert torch.count_nonzero(head.weight) == 0


@pytest.mark.parametrize("kind", ["causal", "encoder"])
@torch.no_grad()
def test_save_pretrained_round_trip(tok, kind, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = tiny_reward_model(tok, kind=kind)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert type(reloaded) is type(model)
    # same weights exactly; scores equal up to float rounding (memory-mapped safetensors are
    # aligned differently, so SIMD kernels may round the last bit differently)
    for (name, p), (name2, q) in zip(model.named_parameters(), reloaded.named_parameters()):
        assert name == name2 and torch.equal(p, q)
    seqs = [tok(t).input_ids for t in TEXTS]
    ids, mask = _pad(seqs, tok.pad_token_id, "right")
    torch.testing.assert_close(reward_scores(reloaded, ids, mask), reward_scores(model, ids, mask), rtol=0, atol=1e-6)
    # and through load_reward_model: the trained head is kept, not re-initialised
    loaded, loaded_tok = load_reward_model(str(tmp_path))
    assert loaded_tok.pad_token_id == tok.pad_token_id and loaded_tok.padding_side == "right"
    assert loaded_tok.chat_template == tok.chat_template
    torch.testing.assert_close(reward_scores(loaded, ids, mask), reward_scores(model, ids, mask), rtol=0, atol=1e-6)
    assert AutoTokenizer.from_pretrained(tmp_path).pad_token == "<|pad|>"


@torch.no_grad()
def test_load_reward_model_from_causal_lm_folder(tok, tmp_path):
    lm = tiny_causal_lm(tok)
    lm.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    rm, rm_tok = load_reward_model(str(tmp_path), kind="auto")
    assert type(rm).__name__ == "LlamaForSequenceClassification"
    # fresh head: std 1/sqrt(hidden+1) scale (not HF's 0.02), backbone = LM's
    assert score_head(rm).weight.abs().max() > 0.05
    torch.testing.assert_close(rm.model.embed_tokens.weight, lm.model.embed_tokens.weight)
    with pytest.raises(ValueError, match="not an encoder"):
        load_reward_model(str(tmp_path), kind="encoder")


def test_make_value_model_from_policy_and_reward(tok):
    policy = tiny_causal_lm(tok)
    value = make_value_model(policy)
    assert type(value).__name__ == "LlamaForSequenceClassification"
    assert torch.count_nonzero(score_head(value).weight) == 0  # docs/PPO_CHECKLIST.md #8 (no dropout, value head init)
    ids = torch.tensor([tok("values start at zero").input_ids])
    assert torch.count_nonzero(token_values(value, ids, torch.ones_like(ids))) == 0
    torch.testing.assert_close(value.model.layers[0].mlp.up_proj.weight, policy.model.layers[0].mlp.up_proj.weight)
    assert value.model.layers[0].mlp.up_proj.weight.data_ptr() != policy.model.layers[0].mlp.up_proj.weight.data_ptr()

    rm = tiny_reward_model(tok, seed=5)
    v2 = make_value_model(rm, zero_init=False)
    assert v2 is not rm
    torch.testing.assert_close(score_head(v2).weight, score_head(rm).weight)
    v3 = make_value_model(rm)
    assert torch.count_nonzero(score_head(v3).weight) == 0
    assert torch.count_nonzero(score_head(rm).weight) > 0  # the RM is untouched


def test_lora_reference_context(tok):
    torch.manual_seed(0)
    lm = tiny_causal_lm(tok)
    ids = torch.tensor([tok("the reference policy shares the weights").input_ids])
    with torch.no_grad():
        base_logits = lm(ids).logits.clone()
    policy = apply_lora(lm, r=4, alpha=8)
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():  # LoRA B starts at zero: same function
        torch.testing.assert_close(policy(ids).logits, base_logits, rtol=0, atol=1e-6)
    opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    policy.train()
    loss = policy(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    policy.eval()
    with torch.no_grad():
        outside = policy(ids).logits
        with reference_context(policy) as ref:
            inside = ref(ids).logits
        again = policy(ids).logits
    torch.testing.assert_close(inside, base_logits, rtol=0, atol=1e-6)
    assert (outside - base_logits).abs().max() > 1e-4
    torch.testing.assert_close(again, outside, rtol=0, atol=0)  # adapter back on
    with pytest.raises(TypeError):
        with reference_context(tiny_causal_lm(tok)):
            pass


def test_lora_on_reward_model_keeps_head_trainable(tok):
    rm = tiny_reward_model(tok)
    ids = torch.tensor([tok("score me").input_ids])
    with torch.no_grad():
        before = reward_scores(rm, ids, torch.ones_like(ids))
    peft_rm = apply_lora(rm, r=2, alpha=4)
    trainable = [n for n, p in peft_rm.named_parameters() if p.requires_grad]
    assert any("score" in n for n in trainable) and any("lora_" in n for n in trainable)
    with torch.no_grad():
        torch.testing.assert_close(reward_scores(peft_rm, ids, torch.ones_like(ids)), before)
        assert token_values(peft_rm, ids, torch.ones_like(ids)).shape == ids.shape


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_lora_keeps_the_models_mode(tok, mode):
    """A model wrapped in an adapter stays in the mode it was in, the adapter's dropout included:
    an eval-mode policy (sampling, no-grad passes) draws no LoRA dropout, so two passes agree."""
    torch.manual_seed(0)
    lm = tiny_causal_lm(tok)
    lm.train(mode == "train")
    policy = apply_lora(lm, r=4, alpha=8, dropout=0.5)
    assert {m.training for m in policy.modules()} == {mode == "train"}
    if mode == "eval":
        with torch.no_grad():  # B moved off zero, so the adapter (and its dropout) changes the output
            for name, p in policy.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
        ids = torch.tensor([tok("dropout stays off in eval mode").input_ids])
        with torch.no_grad():
            torch.testing.assert_close(policy(ids).logits, policy(ids).logits, rtol=0, atol=0)
