"""The native Llama-family sampler reproduces Hugging Face's forward and sampling rules."""

from dataclasses import replace

import pytest
import torch

from rlhfkit.models import apply_lora, tiny_causal_lm, tiny_tokenizer
from rlhfkit.models.reward import position_ids_from_mask
from rlhfkit.rollout import HFGenerator, SamplingConfig, make_sampler, rollout, tokenize_prompts
from rlhfkit.rollout.native import NativeLlamaGenerator, filter_logits, supports

PROMPTS = ["The cat", "A small dog likes the red ball", "Hi", "The cat"]


@pytest.fixture(scope="module")
def tok():
    t = tiny_tokenizer(vocab_size=300)
    t.padding_side = "left"
    return t


def llama_gqa(tok, tied: bool):
    """4 query heads sharing 2 key/value heads, RoPE theta 1e5 (SmolLM2's), optionally tied."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=1e5,
        tie_word_embeddings=tied,
        rms_norm_eps=1e-5,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(1)
    return LlamaForCausalLM(cfg).eval()


def qwen2(tok):
    """Qwen2: the Llama block with q/k/v biases."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(2)
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # fresh biases are zero: make them matter
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    return model


def models(tok):
    return {
        "llama": tiny_causal_lm(tok, hidden_size=32, num_layers=2, num_heads=2, seed=0),
        "llama-gqa-tied": llama_gqa(tok, tied=True),
        "llama-gqa": llama_gqa(tok, tied=False),
        "qwen2-bias": qwen2(tok),
    }


@pytest.mark.parametrize("name", ["llama", "llama-gqa-tied", "llama-gqa", "qwen2-bias"])
def test_native_logits_equal_hf_at_prefill_and_every_decoding_step(tok, name):
    model = models(tok)[name]
    assert supports(model) == (True, "")
    ids, mask = tokenize_prompts(PROMPTS, tok)
    B, P = ids.shape
    steps = 6
    # a fixed continuation appended to every row; HF scores it teacher-forced in one pass
    cont = torch.randint(5, len(tok) - 5, (B, steps), generator=torch.Generator().manual_seed(0))
    full_ids = torch.cat([ids, cont], 1)
    full_mask = torch.cat([mask, torch.ones_like(cont)], 1)
    with torch.no_grad():
        hf = model(input_ids=full_ids, attention_mask=full_mask, position_ids=position_ids_from_mask(full_mask)).logits
    g = NativeLlamaGenerator(SamplingConfig(max_new_tokens=steps), tok.eos_token_id, tok.pad_token_id)
    kv, hd = model.config.num_key_value_heads, model.config.hidden_size // model.config.num_attention_heads
    keys = [torch.zeros(B, kv, P + steps, hd) for _ in model.model.layers]
    values = [torch.zeros_like(k) for k in keys]
    real = mask.bool()
    prefill = (torch.ones(P, P, dtype=torch.bool).tril()[None] & real[:, None, :]) | torch.eye(P, dtype=torch.bool)[
        None
    ]
    with torch.no_grad():
        got = g.forward(model, ids, position_ids_from_mask(mask), 0, keys, values, prefill[:, None])
        torch.testing.assert_close(got, hf[:, P - 1], atol=2e-5, rtol=1e-5)
        pos = position_ids_from_mask(mask)[:, -1:] + 1
        visible = torch.cat([real, torch.ones(B, steps, dtype=torch.bool)], 1)
        for t in range(steps - 1):
            got = g.forward(
                model, cont[:, t : t + 1], pos + t, P + t, keys, values, visible[:, None, None, : P + t + 1]
            )
            torch.testing.assert_close(got, hf[:, P + t], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["llama", "llama-gqa-tied", "qwen2-bias"])
def test_greedy_native_generation_equals_hf_generate(tok, name):
    model = models(tok)[name]
    s = SamplingConfig(max_new_tokens=10, temperature=0)
    ids, mask = tokenize_prompts(PROMPTS, tok)
    a = HFGenerator(s, tok.eos_token_id, tok.pad_token_id).generate(model, ids, mask, seed=0)
    b = NativeLlamaGenerator(s, tok.eos_token_id, tok.pad_token_id).generate(model, ids, mask, seed=0)
    # HF keeps generating pads after EOS for the longest row; compare up to the shorter width
    n = min(a.shape[1], b.shape[1])
    assert n > 0 and torch.equal(a[:, :n], b[:, :n])


@pytest.mark.parametrize("sampling", [dict(temperature=1.0), dict(temperature=0.7, top_k=20, top_p=0.9)])
def test_same_seed_same_samples_as_hf_generate(tok, sampling):
    """``torch.multinomial`` draws one sample with the same exponential race, so with the same
    seed the two engines return the same tokens."""
    model = models(tok)["llama-gqa-tied"]
    s = SamplingConfig(max_new_tokens=12, **sampling)
    ids, mask = tokenize_prompts(PROMPTS * 3, tok)
    for seed in (0, 7):
        a = HFGenerator(s, tok.eos_token_id, tok.pad_token_id).generate(model, ids, mask, seed=seed)
        b = NativeLlamaGenerator(s, tok.eos_token_id, tok.pad_token_id).generate(model, ids, mask, seed=seed)
        n = min(a.shape[1], b.shape[1])
        assert n > 0 and torch.equal(a[:, :n], b[:, :n]), seed


def test_filter_logits_matches_hf_warpers():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=g)
    logits[0, :5] = 3.0  # ties at the k-th value
    for k, p in [(0, 0.9), (5, 1.0), (7, 0.5), (3, 0.95), (0, 0.05)]:
        expect = logits.clone()
        if k:
            expect = TopKLogitsWarper(k)(None, expect)
        if p < 1:
            expect = TopPLogitsWarper(p)(None, expect)
        assert torch.equal(filter_logits(logits, k, p), expect), (k, p)


def test_exponential_race_draws_from_the_filtered_distribution(tok):
    """20,000 draws from fixed logits: frequencies within 4 standard errors of softmax(z / T)
    after top-k, and nothing outside the top k."""
    g = NativeLlamaGenerator(SamplingConfig(temperature=0.8, top_k=6), tok.eos_token_id, tok.pad_token_id)
    z = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0])
    n = 20_000
    draws = g._next_tokens(z.expand(n, -1), torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=8).double() / n
    p = torch.softmax(torch.cat([z[:6] / 0.8, torch.full((2,), float("-inf"))]).double(), 0)
    assert freq[6:].sum() == 0
    se = (p * (1 - p) / n).sqrt()
    assert ((freq - p).abs() <= 4 * se + 1e-12).all(), (freq, p)


def test_seeded_sampling_stops_at_eos_and_leaves_the_global_rng_alone(tok):
    model = models(tok)["llama"]
    g = NativeLlamaGenerator(SamplingConfig(max_new_tokens=12, temperature=1.0), tok.eos_token_id, tok.pad_token_id)
    before = torch.get_rng_state()
    a = rollout(g, model, tok, PROMPTS * 4, seed=5)
    b = rollout(g, model, tok, PROMPTS * 4, seed=5)
    c = rollout(g, model, tok, PROMPTS * 4, seed=6)
    assert torch.equal(before, torch.get_rng_state())
    assert torch.equal(a.response_ids, b.response_ids) and not torch.equal(a.response_ids, c.response_ids)
    ids, mask = tokenize_prompts(PROMPTS * 4, tok)
    raw = g.generate(model, ids, mask, seed=5)
    for row in raw:
        hits = (row == tok.eos_token_id).nonzero()
        if len(hits):
            assert (row[int(hits[0]) + 1 :] == tok.pad_token_id).all()


def test_scaled_rope_is_refused_in_either_transformers_layout(tok):
    """transformers 5 keeps RoPE settings in ``rope_parameters``, transformers 4 in
    ``rope_scaling`` (None for plain RoPE): a scaled RoPE (Llama 3, YaRN) in either is refused,
    since the sampler computes plain RoPE."""
    from types import SimpleNamespace

    model = models(tok)["llama"]
    plain = {"model_type": "llama", "hidden_act": "silu", "rope_theta": 10000.0}
    llama3 = {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    for layout, ok in [
        ({"rope_scaling": None}, True),
        ({"rope_parameters": None, "rope_scaling": None}, True),
        ({"rope_scaling": llama3}, False),
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, False),
        ({"rope_parameters": {**llama3, "rope_theta": 5e5}}, False),
    ]:
        model.config = SimpleNamespace(**plain, **layout)
        assert supports(model)[0] is ok, layout


def test_make_sampler_picks_native_only_where_it_applies(tok):
    model = models(tok)["llama"]
    s = SamplingConfig()
    assert isinstance(make_sampler(model, s, tok.eos_token_id, tok.pad_token_id), NativeLlamaGenerator)
    assert isinstance(make_sampler(model, s, tok.eos_token_id, tok.pad_token_id, "hf"), HFGenerator)
    lora = apply_lora(tiny_causal_lm(tok, seed=3), r=4, alpha=8)
    ok, why = supports(lora)
    assert not ok and why
    assert isinstance(make_sampler(lora, s, tok.eos_token_id, tok.pad_token_id), HFGenerator)
    with pytest.raises(ValueError, match="native"):
        make_sampler(lora, s, tok.eos_token_id, tok.pad_token_id, "native")
    with pytest.raises(ValueError, match="engine"):
        make_sampler(model, s, tok.eos_token_id, tok.pad_token_id, "vllm")


@pytest.mark.parametrize("engine", [HFGenerator, NativeLlamaGenerator])
def test_on_token_sees_each_step_as_drawn_and_changes_nothing(tok, engine):
    """A server streams from ``on_token``: it gets every step's tokens [B] in order (the columns
    of what ``generate`` returns), and the draw is the one without it."""
    model = models(tok)["llama"]
    s = SamplingConfig(max_new_tokens=10, temperature=1.0)
    ids, mask = tokenize_prompts(PROMPTS, tok)
    gen = engine(s, tok.eos_token_id, tok.pad_token_id)
    seen = []
    with_hook = gen.generate(model, ids, mask, seed=5, on_token=lambda t: seen.append(t.clone()))
    without = gen.generate(model, ids, mask, seed=5)
    assert torch.equal(with_hook, without)
    assert len(seen) == with_hook.shape[1] and all(t.shape == (len(PROMPTS),) for t in seen)
    assert torch.equal(torch.stack(seen, dim=1), with_hook)
    # a true return (a stop sequence reached) ends the draw after that step, same tokens so far
    steps = []
    cut = gen.generate(model, ids, mask, seed=5, on_token=lambda t: steps.append(t) or len(steps) == 3)
    assert len(steps) == 3 and torch.equal(cut, without[:, :3])


MIXED = [
    SamplingConfig(temperature=1.0),
    SamplingConfig(temperature=0.0),
    SamplingConfig(temperature=0.7, top_k=20),
    SamplingConfig(temperature=1.3, top_p=0.8),
    SamplingConfig(temperature=1.0),
]


def test_row_seeds_and_settings_draw_each_row_as_if_alone(tok):
    """From the same logits, a row of a batch with its own seed and settings draws, step after
    step, exactly the token that row draws alone (a batch of one, ``seed`` = its seed): its
    exponential race comes from its own generator, and rows with the same settings are filtered
    by the same code as alone."""
    g = NativeLlamaGenerator(SamplingConfig(temperature=1.0), tok.eos_token_id, tok.pad_token_id)
    seeds = [11, 12, 13, 14, 11]  # rows 0 and 4: the same seed and settings, the same draws
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    alone = [
        (NativeLlamaGenerator(s, tok.eos_token_id, tok.pad_token_id), torch.Generator().manual_seed(seed))
        for s, seed in zip(MIXED, seeds)
    ]
    logits = torch.randn(6, len(MIXED), 120, generator=torch.Generator().manual_seed(3))
    logits[:, 4] = logits[:, 0]
    for step in logits:
        batched = g._next_tokens(step, gens, MIXED)
        singles = [one._next_tokens(step[i : i + 1], gen)[0] for i, (one, gen) in enumerate(alone)]
        assert batched.tolist() == [int(t) for t in singles]
        assert batched[0] == batched[4]


def test_a_batched_row_is_the_row_alone_on_a_tiny_model(tok):
    """End to end, with the model's own logits: every row of a left-padded batch with per-row
    seeds and settings is the generation of its prompt alone with its seed (on these tiny models
    the padded batch's logits round to the same tokens; a larger model can differ in the last
    float bits and, rarely, flip a near-tied token: serve/batcher.py)."""
    model = models(tok)["llama-gqa"]
    prompts = ["The cat", "A small dog likes the red ball", "Hi", "The weather is", "one two three four five"]
    seeds = [5, 6, 7, 8, 9]
    ids, mask = tokenize_prompts(prompts, tok)
    g = NativeLlamaGenerator(SamplingConfig(max_new_tokens=12), tok.eos_token_id, tok.pad_token_id)
    batched = g.generate(model, ids, mask, seed=0, row_seeds=seeds, row_sampling=MIXED)
    for i, (prompt, seed, s) in enumerate(zip(prompts, seeds, MIXED)):
        one_ids, one_mask = tokenize_prompts([prompt], tok)
        single = NativeLlamaGenerator(replace(s, max_new_tokens=12), tok.eos_token_id, tok.pad_token_id)
        alone = single.generate(model, one_ids, one_mask, seed=seed)[0]
        assert batched[i, : alone.shape[0]].tolist() == alone.tolist(), i
    with pytest.raises(ValueError, match="row_seeds"):
        g.generate(model, ids, mask, seed=0, row_seeds=seeds[:2])


@pytest.mark.parametrize("engine", [HFGenerator, NativeLlamaGenerator])
def test_on_token_can_end_some_rows_only(tok, engine):
    """A bool tensor from ``on_token`` ends those rows (pad after them, as after an EOS); the
    other rows draw what they draw without it."""
    model = models(tok)["llama"]
    s = SamplingConfig(max_new_tokens=10, temperature=0.0)
    ids, mask = tokenize_prompts(PROMPTS, tok)
    gen = engine(s, tok.eos_token_id, tok.pad_token_id)
    without = gen.generate(model, ids, mask, seed=5)
    steps = []

    def end_row_1_at_step_3(tokens):
        steps.append(tokens)
        return torch.tensor([False, len(steps) == 3, False, False])

    cut = gen.generate(model, ids, mask, seed=5, on_token=end_row_1_at_step_3)
    n = min(cut.shape[1], without.shape[1])
    assert torch.equal(cut[[0, 2, 3], :n], without[[0, 2, 3], :n])
    assert torch.equal(cut[1, :3], without[1, :3]) and (cut[1, 3:] == tok.pad_token_id).all()
