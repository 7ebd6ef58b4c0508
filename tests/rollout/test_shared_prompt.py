"""Prefix sharing: packed groups give the plain pass's log-probs, entropies and gradients."""

import pytest
import torch

from rlhfkit.core.masking import truncate_after_eos
from rlhfkit.models import apply_lora, reference_context, tiny_causal_lm, tiny_tokenizer
from rlhfkit.rollout import response_logprobs, tokenize_prompts
from rlhfkit.rollout.shared_prompt import packable, packed_inputs, prompt_groups, shared_prompt_logprobs, worth_sharing

# groups of unequal size (3, 2, 1), prompts of different lengths (left padding)
PROMPTS = [
    "The cat sat",
    "The cat sat",
    "A small dog likes the red ball",
    "The cat sat",
    "Hi",
    "A small dog likes the red ball",
]


@pytest.fixture(scope="module")
def tok():
    t = tiny_tokenizer(vocab_size=300)
    t.padding_side = "left"
    return t


def batch(tok, R=7, seed=0):
    ids, mask = tokenize_prompts(PROMPTS, tok)
    raw = torch.randint(6, len(tok), (len(PROMPTS), R), generator=torch.Generator().manual_seed(seed))
    raw[1, 2] = tok.eos_token_id  # an early EOS: the rest of that row is masked out
    raw[4, 5] = tok.eos_token_id
    rid, rmask, _ = truncate_after_eos(raw, tok.eos_token_id, tok.pad_token_id)
    return ids, mask, rid, rmask


def qwen2_eager(tok):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(2)
    return Qwen2ForCausalLM(cfg).eval()


def test_prompt_groups_in_order_of_first_appearance(tok):
    ids, mask, _, _ = batch(tok)
    assert prompt_groups(ids, mask) == [[0, 1, 3], [2, 5], [4]]


def test_packed_mask_sees_the_prompt_and_its_own_response_only(tok):
    ids, mask, rid, rmask = batch(tok)
    groups = prompt_groups(ids, mask)
    P, R = ids.shape[1], rid.shape[1]
    pids, pos, allowed = packed_inputs(ids, mask, rid, rmask, groups, tok.pad_token_id)
    assert pids.shape == (3, P + 3 * R) and allowed.shape == (3, 1, P + 3 * R, P + 3 * R)
    a = allowed[0, 0]
    q = P + R + 1  # second token of response 2 in group 0 (row 1)
    n_pad = int((mask[0] == 0).sum())
    assert a[q, n_pad:P].all() and not a[q, :n_pad].any()  # the real prompt, not its pads
    assert not a[q, P : P + R].any()  # never response 1
    assert a[q, P + R : q + 1].all() and not a[q, q + 1 :].any()  # its own past, not its future
    # position ids continue each row's prompt as in the plain pass
    assert pos[0, P + R : P + 2 * R].tolist() == list(range(int(mask[0].sum()), int(mask[0].sum()) + R))


@pytest.mark.parametrize("kind", ["llama-sdpa", "qwen2-eager", "llama-lora", "lora-reference"])
def test_packed_logprobs_entropies_and_gradients_equal_the_plain_pass(tok, kind):
    model = (
        qwen2_eager(tok)
        if kind == "qwen2-eager"
        else tiny_causal_lm(tok, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    )
    if kind.startswith("lora") or kind.endswith("lora"):
        model = apply_lora(model, r=4, alpha=8)
        with torch.no_grad():  # a non-zero adapter, so that disabling it changes something
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.3)
    assert packable(model)
    ids, mask, rid, rmask = batch(tok)
    groups = prompt_groups(ids, mask)
    model.train()
    model.gradient_checkpointing_enable(
        gradient_checkpointing_kwargs={"use_reentrant": False}
    ) if kind == "llama-sdpa" else None
    params = [p for p in model.parameters() if p.requires_grad]

    def run(shared: bool):
        for p in params:
            p.grad = None
        ctx = reference_context(model) if kind == "lora-reference" else None
        with ctx or torch.enable_grad() as m:
            net = m if ctx is not None else model
            if shared:
                lp, ent = shared_prompt_logprobs(net, ids, mask, rid, rmask, groups, 0.7, True, tok.pad_token_id)
            else:
                lp, ent = response_logprobs(net, ids, mask, rid, rmask, 0.7, with_entropy=True, share_prompts=False)
            weights = torch.linspace(0.5, 1.5, lp.numel()).view_as(lp)
            if lp.requires_grad:
                (lp * weights).sum().backward()
        return lp.detach(), ent, [p.grad.clone() if p.grad is not None else None for p in params]

    lp_a, ent_a, grads_a = run(False)
    lp_b, ent_b, grads_b = run(True)
    assert (lp_a[~rmask] == 0).all() and (lp_b[~rmask] == 0).all()
    torch.testing.assert_close(lp_b, lp_a, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ent_b, ent_a, atol=2e-5, rtol=1e-5)
    if kind != "lora-reference":
        assert any(g is not None and g.abs().sum() > 0 for g in grads_a)
        for ga, gb in zip(grads_a, grads_b):
            if ga is not None:
                torch.testing.assert_close(gb, ga, atol=2e-5, rtol=1e-4)


def test_worth_sharing_follows_the_flop_estimate():
    from transformers import LlamaConfig

    smol = LlamaConfig(
        hidden_size=576,
        intermediate_size=1536,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        num_hidden_layers=30,
        vocab_size=49153,
    )
    tiny = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_hidden_layers=2,
        vocab_size=512,
    )
    four_by_four = [[4 * g + j for j in range(4)] for g in range(4)]
    # SmolLM2, 4 prompts x 4 samples, 10 prompt tokens, 32 response tokens: linear layers dominate
    assert worth_sharing(smol, 16, four_by_four, 10, 32)
    # every row its own prompt: nothing to share
    assert not worth_sharing(smol, 16, [[i] for i in range(16)], 10, 32)
    # a tiny model: the longer packed rows' attention costs more than the prompt tokens saved
    assert not worth_sharing(tiny, 16, four_by_four, 10, 32)
    # long responses to a short prompt: the saving is below 10%
    assert not worth_sharing(smol, 16, four_by_four, 4, 256)


def test_response_logprobs_shares_only_when_worth_it(tok, monkeypatch):
    """With sharing forced on by the estimate, ``response_logprobs`` takes the packed path and
    still returns the plain pass's values."""
    import rlhfkit.rollout.shared_prompt as sp

    model = tiny_causal_lm(tok, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    ids, mask, rid, rmask = batch(tok)
    calls = []
    real = sp.shared_prompt_logprobs
    monkeypatch.setattr(sp, "worth_sharing", lambda *a, **k: True)
    monkeypatch.setattr(sp, "shared_prompt_logprobs", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        shared = response_logprobs(model, ids, mask, rid, rmask, 1.0)
        plain = response_logprobs(model, ids, mask, rid, rmask, 1.0, share_prompts=False)
    assert calls == [1]
    torch.testing.assert_close(shared, plain, atol=2e-5, rtol=1e-5)
