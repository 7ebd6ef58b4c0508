"""Rollout engine: left padding, EOS truncation, behaviour log-probs, determinism."""

import pytest
import torch

from rlhfkit.models import tiny_causal_lm, tiny_tokenizer
from rlhfkit.rollout import (
    Generator,
    HFGenerator,
    SamplingConfig,
    finish_rollout,
    response_logprobs,
    rollout,
    step_seed,
    tokenize_prompts,
)

PROMPTS = ["The cat", "A small dog likes the red", "Hi"]


@pytest.fixture(scope="module")
def tok():
    t = tiny_tokenizer(vocab_size=300)
    t.padding_side = "left"
    return t


@pytest.fixture(scope="module")
def model(tok):
    return tiny_causal_lm(tok, hidden_size=32, num_layers=2, num_heads=2, seed=0)


def gen(tok, **kw):
    s = SamplingConfig(**{"max_new_tokens": 8, "temperature": 0.7, **kw})
    return HFGenerator(s, tok.eos_token_id, tok.pad_token_id)


def test_tokenize_prompts_left_pads_and_truncates_from_the_left(tok):
    ids, mask = tokenize_prompts(PROMPTS, tok)
    lens = [len(tok(p)["input_ids"]) for p in PROMPTS]
    assert ids.shape == (3, max(lens))
    for i, n in enumerate(lens):
        assert mask[i].tolist() == [0] * (ids.shape[1] - n) + [1] * n
        assert ids[i, -n:].tolist() == tok(PROMPTS[i])["input_ids"]
        assert (ids[i, : ids.shape[1] - n] == tok.pad_token_id).all()
    ids2, _ = tokenize_prompts(PROMPTS, tok, max_prompt_length=2)
    assert ids2.shape[1] == 2 and ids2[1].tolist() == tok(PROMPTS[1])["input_ids"][-2:]
    chat, _ = tokenize_prompts(["hello"], tok, chat_template=True)
    text = tok.decode(chat[0])
    assert text.startswith("<|bos|><|user|>\nhello<|eos|>") and text.endswith("<|assistant|>\n")


def test_generator_protocol_and_seeded_sampling(tok, model):
    g = gen(tok)
    assert isinstance(g, Generator)
    before = torch.get_rng_state()
    a = rollout(g, model, tok, PROMPTS * 2, seed=step_seed(0, 5))
    b = rollout(g, model, tok, PROMPTS * 2, seed=step_seed(0, 5))
    c = rollout(g, model, tok, PROMPTS * 2, seed=step_seed(0, 6))
    assert torch.equal(before, torch.get_rng_state())  # the global RNG is untouched
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.response_ids, c.response_ids)
    assert a.response_ids.shape[1] <= 8 and len(a) == 6


def test_behaviour_logprobs_match_generate_scores(tok, model):
    """The teacher-forced log-probs equal log_softmax(logits / T) of the incremental KV-cached pass."""
    g = gen(tok, temperature=0.7)
    ids, mask = tokenize_prompts(PROMPTS, tok)
    cfg = g.generation_config()
    cfg.output_scores, cfg.return_dict_in_generate = True, True
    torch.manual_seed(0)
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
    raw = out.sequences[:, ids.shape[1] :]
    r = finish_rollout(model, tok, ids, mask, raw, temperature=0.7)
    scores = torch.stack(out.scores, dim=1).log_softmax(-1)  # processed = logits / T
    expect = scores.gather(-1, raw.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(r.logprobs[r.response_mask], expect[r.response_mask], atol=1e-4, rtol=1e-4)
    assert (r.logprobs[~r.response_mask] == 0).all()


def test_logprobs_are_padding_invariant(tok, model):
    g = gen(tok)
    r = rollout(g, model, tok, PROMPTS, seed=1)
    for i, p in enumerate(PROMPTS):
        ids, mask = tokenize_prompts([p], tok)
        n = int(r.response_mask[i].sum())
        lp = response_logprobs(model, ids, mask, r.response_ids[i : i + 1, :n], r.response_mask[i : i + 1, :n], 0.7)
        torch.testing.assert_close(lp[0], r.logprobs[i, :n], atol=1e-5, rtol=1e-5)


def test_truncation_after_eos_and_decoding(tok, model):
    eos, pad = tok.eos_token_id, tok.pad_token_id
    ids, mask = tokenize_prompts(["The cat", "Hi"], tok)
    a, b = tok(" sat on")["input_ids"], tok(" the mat")["input_ids"]
    raw = torch.tensor([a + [eos] + b, b + a + [b[0]]])
    r = finish_rollout(model, tok, ids, mask, raw, temperature=1.0)
    n = len(a) + 1
    assert r.response_mask[0].tolist() == [True] * n + [False] * len(b)
    assert r.response_ids[0, n:].tolist() == [pad] * len(b)
    assert r.has_eos.tolist() == [True, False] and r.response_mask[1].all()
    assert r.responses == [" sat on", " the mat sat on" + tok.decode([b[0]])]
    assert r.prompts == ["The cat", "Hi"]
    sub = r.select([1])
    assert sub.responses == r.responses[1:] and torch.equal(sub.response_ids, r.response_ids[1:])
    assert sub.input_ids.shape == (1, ids.shape[1] + raw.shape[1])


def test_greedy_and_top_k(tok, model):
    g = gen(tok, temperature=0.0)
    a = rollout(g, model, tok, PROMPTS, seed=1)
    b = rollout(g, model, tok, PROMPTS, seed=2)
    assert torch.equal(a.response_ids, b.response_ids)
    g1 = gen(tok, top_k=1)  # top-1 sampling = greedy
    c = rollout(g1, model, tok, PROMPTS, seed=3)
    assert torch.equal(a.response_ids, c.response_ids)


def test_update_pass_can_supply_the_behaviour_logprobs(tok, model):
    """One update per rollout: skipping the behaviour pass (its log-probs taken from the update's
    own forward pass, as TRL's GRPO with num_iterations=1) makes the same update and returns the
    same behaviour log-probs as computing them in a separate pass first; the rollouts are not
    written to."""
    import copy

    from rlhfkit.recipes.grpo import GRPOConfig
    from rlhfkit.recipes.online_driver import optimizer_and_scheduler
    from rlhfkit.recipes.policy_gradient import policy_gradient_update

    config = GRPOConfig(
        batch_size=6,
        micro_batch_size=2,
        max_new_tokens=8,
        temperature=0.7,
        learning_rate=1e-2,
        max_steps=1,
        warmup_ratio=0.0,
    )
    prompts = PROMPTS * 2
    with_pass = rollout(gen(tok), model, tok, prompts, seed=3)
    without = rollout(gen(tok), model, tok, prompts, seed=3, behaviour_logprobs=False)
    assert torch.equal(with_pass.response_ids, without.response_ids)
    assert not without.logprobs.any()
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0])
    updated, behaviour = {}, {}
    for name, ro, given in (("pass", with_pass, with_pass.logprobs), ("fill", without, None)):
        policy = copy.deepcopy(model)
        optimizer, scheduler = optimizer_and_scheduler(policy.parameters(), config)
        behaviour[name] = policy_gradient_update(
            policy, ro, advantages, given, config, optimizer, scheduler, 0, "sequence", params=list(policy.parameters())
        ).behaviour_logprobs
        updated[name] = policy
    torch.testing.assert_close(behaviour["fill"], with_pass.logprobs, rtol=1e-5, atol=1e-5)
    assert behaviour["pass"] is with_pass.logprobs and not without.logprobs.any()  # the rollouts are left as they were
    for (n, a), (_, b) in zip(updated["pass"].named_parameters(), updated["fill"].named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=n)
    assert not torch.equal(next(updated["fill"].parameters()), next(model.parameters()))
    config.ppo_epochs = 2
    with pytest.raises(ValueError, match="one epoch and one minibatch"):
        policy_gradient_update(
            copy.deepcopy(model),
            without,
            advantages,
            None,
            config,
            optimizer,
            scheduler,
            0,
            "sequence",
            params=list(model.parameters()),
        )


def test_rollout_logprobs_any_chunking_any_mode_and_the_adapter_switched_off(tok, model):
    """The no-grad pass over a rollout: the behaviour log-probs again, in any chunking, in eval mode
    whatever mode the model was in (which it is left in); with ``adapter_disabled`` a LoRA policy
    scores as its base model."""
    import copy

    from rlhfkit.models import apply_lora
    from rlhfkit.rollout import rollout_logprobs

    ro = rollout(gen(tok), model, tok, PROMPTS * 2, seed=4)
    torch.testing.assert_close(rollout_logprobs(model, ro, 0.7), ro.logprobs, rtol=0, atol=1e-6)
    torch.testing.assert_close(rollout_logprobs(model, ro, 0.7, batch_size=4), ro.logprobs, rtol=0, atol=1e-6)
    lora = apply_lora(copy.deepcopy(model), r=4, alpha=8, dropout=0.5, target_modules="all-linear")
    with torch.no_grad():  # an adapter that changes the outputs
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    lora.train()
    on = rollout_logprobs(lora, ro, 0.7, batch_size=3)
    off = rollout_logprobs(lora, ro, 0.7, batch_size=3, adapter_disabled=True)
    assert lora.training and all(m.training for m in lora.modules())
    assert (on - ro.logprobs).abs().max() > 1e-3
    torch.testing.assert_close(off, ro.logprobs, rtol=0, atol=1e-6)
    torch.testing.assert_close(rollout_logprobs(lora, ro, 0.7), on, rtol=0, atol=1e-6)  # dropout 0.5 is off
