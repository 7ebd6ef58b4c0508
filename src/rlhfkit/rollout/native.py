"""A lean sampler for Llama-family decoders: the same maths as Hugging Face's forward, without
its per-step machinery.

Why: on a CPU, and for small models anywhere, ``model.generate`` spends much of each decoding
step outside the matrix multiplications: the generation loop's bookkeeping, the mask builder
(``create_causal_mask``), output wrappers, a ``DynamicCache`` that concatenates, and
``torch.multinomial`` over the vocabulary. This module runs the decoder layers of an
unmodified ``LlamaForCausalLM`` (or ``Qwen2ForCausalLM``: the same block with q/k/v biases)
directly from its own parameters (nothing is copied, so it always samples from the current
policy), with a preallocated KV cache, the attention mask sliced from one boolean tensor, and
the exponential-race sampler. Measured (benchmarks/rollout_engines.py): 1.65x faster sampling
on a tiny model, where the per-step overhead dominates; the same speed on SmolLM2-135M on a CPU,
where decoding is bound by reading the weights.

Same results as Hugging Face: the forward is the one of ``modeling_llama.py`` (RMSNorm in
float32, rotary embedding ``x cos + rotate_half(x) sin`` with the default RoPE, grouped-query
attention, SiLU-gated MLP, scale ``head_dim ** -0.5``); its logits equal the HF forward's
(``tests/rollout/test_native.py`` checks prefill and every incremental step). Sampling applies
temperature, then top-k, then top-p exactly as HF's ``TopKLogitsWarper`` / ``TopPLogitsWarper``,
and draws ``argmax_i p_i / E_i`` with ``E_i ~ Exp(1)``, which is an exact draw from the
categorical ``p`` (the smallest of independent ``Exp(p_i)`` clocks ``E_i / p_i`` rings at ``i``
with probability ``p_i``; the "exponential race" gpt-fast and vLLM use). The draws come from a
private ``torch.Generator`` seeded with ``seed``: reproducible, the global RNG untouched. This
is also how ``torch.multinomial`` draws a single sample on the CPU (an exponential race on the
generator it is given), so for the same seed the native sampler returns exactly the tokens of
``HFGenerator`` (which seeds the global generator with ``seed``): tested.

Anything else (LoRA / peft wrappers, other architectures, RoPE scaling, sliding windows) is not
supported here: ``supports(model)`` says so and ``make_sampler`` falls back to ``HFGenerator``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from rlhfkit.core.precision import autocast

__all__ = ["NativeLlamaGenerator", "supports", "filter_logits"]

SUPPORTED_TYPES = ("llama", "qwen2")


def supports(model) -> tuple[bool, str]:
    """``(True, "")`` when ``model`` is a plain Llama-family causal LM this sampler reproduces,
    else ``(False, reason)``."""
    config = getattr(model, "config", None)
    if config is None or type(model).__name__ not in ("LlamaForCausalLM", "Qwen2ForCausalLM"):
        return False, f"{type(model).__name__} is not a plain LlamaForCausalLM / Qwen2ForCausalLM"
    if getattr(config, "model_type", None) not in SUPPORTED_TYPES:
        return False, f"model_type {getattr(config, 'model_type', None)!r}"
    # transformers 5 keeps RoPE settings in rope_parameters (rope_scaling is an alias of it);
    # transformers 4 in rope_scaling (None for plain RoPE) beside rope_theta
    rope = (
        getattr(config, "rope_parameters", None)
        or getattr(config, "rope_scaling", None)
        or {"rope_theta": getattr(config, "rope_theta", 10000.0)}
    )
    if rope.get("rope_type", rope.get("type", "default")) != "default" or set(rope) - {"rope_theta", "rope_type"}:
        return False, f"RoPE variant {rope}"
    if getattr(config, "hidden_act", "silu") != "silu" or getattr(config, "pretraining_tp", 1) != 1:
        return False, "activation / tensor-parallel layout"
    if getattr(config, "use_sliding_window", False) or any(
        t != "full_attention" for t in (getattr(config, "layer_types", None) or [])
    ):
        return False, "sliding-window attention"
    layer = model.model.layers[0]
    if not hasattr(layer, "self_attn") or not hasattr(layer.self_attn, "q_proj") or not hasattr(layer, "mlp"):
        return False, "unexpected layer layout"
    if type(layer.self_attn.q_proj) is not torch.nn.Linear:
        return False, "wrapped projections (LoRA or quantised)"
    return True, ""


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """``[B, V] -> [B, V]`` with the filtered-out entries at ``-inf``: top-k then top-p, as HF's
    ``TopKLogitsWarper`` (ties with the k-th value kept) and ``TopPLogitsWarper`` (drop the
    ascending-sorted tokens whose cumulative probability is ``<= 1 - top_p``, keep at least one)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative <= (1 - top_p)
        drop_sorted[..., -1:] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class NativeLlamaGenerator:
    """``Generator`` (rollout/engine.py) for plain Llama-family models; see the module docstring.
    ``generate`` raises ``ValueError`` for a model ``supports`` rejects."""

    def __init__(self, sampling, eos_token_id: int, pad_token_id: int):
        if pad_token_id == eos_token_id:
            raise ValueError("pad and EOS must be distinct tokens: docs/PPO_CHECKLIST.md #1 (distinct pad token)")
        self.sampling = sampling
        self.eos_token_id = int(eos_token_id)
        self.pad_token_id = int(pad_token_id)

    # ------------------------------------------------------------------ the decoder
    @staticmethod
    def _shapes(config) -> tuple[int, int, int]:
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return heads, kv_heads, head_dim

    @staticmethod
    def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        xf = x.float()  # as LlamaRMSNorm: the statistics in float32
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        return weight * xf.to(x.dtype)

    def forward(
        self,
        model,
        ids: torch.Tensor,
        positions: torch.Tensor,
        start: int,
        keys: list,
        values: list,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """Logits ``[B, V]`` of the LAST of ``ids`` ``[B, T]`` at ``positions`` ``[B, T]``; writes the
        layers' keys / values into cache columns ``[start, start + T)``; ``mask`` ``[B, 1, T,
        start + T]`` bool (True = may attend)."""
        config = model.config
        heads, kv_heads, head_dim = self._shapes(config)
        eps = config.rms_norm_eps
        B, T = ids.shape
        end = start + T
        hidden = F.embedding(ids, model.model.embed_tokens.weight)
        theta = config.rope_parameters["rope_theta"] if getattr(config, "rope_parameters", None) else config.rope_theta
        inv_freq = 1.0 / (
            theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=ids.device).float() / head_dim)
        )
        freqs = positions[..., None].float() * inv_freq
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos().to(hidden.dtype)[:, None], emb.sin().to(hidden.dtype)[:, None]
        for i, layer in enumerate(model.model.layers):
            attn, mlp = layer.self_attn, layer.mlp
            x = self._rms(hidden, layer.input_layernorm.weight, eps)
            q = F.linear(x, attn.q_proj.weight, attn.q_proj.bias).view(B, T, heads, head_dim).transpose(1, 2)
            k = F.linear(x, attn.k_proj.weight, attn.k_proj.bias).view(B, T, kv_heads, head_dim).transpose(1, 2)
            v = F.linear(x, attn.v_proj.weight, attn.v_proj.bias).view(B, T, kv_heads, head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            keys[i][:, :, start:end] = k
            values[i][:, :, start:end] = v
            o = F.scaled_dot_product_attention(
                q,
                keys[i][:, :, :end],
                values[i][:, :, :end],
                attn_mask=mask,
                scale=head_dim**-0.5,
                enable_gqa=kv_heads != heads,
            )
            o = o.transpose(1, 2).reshape(B, T, heads * head_dim)
            hidden = hidden + F.linear(o, attn.o_proj.weight, attn.o_proj.bias)
            x = self._rms(hidden, layer.post_attention_layernorm.weight, eps)
            gate = F.linear(x, mlp.gate_proj.weight, mlp.gate_proj.bias)
            up = F.linear(x, mlp.up_proj.weight, mlp.up_proj.bias)
            hidden = hidden + F.linear(F.silu(gate) * up, mlp.down_proj.weight, mlp.down_proj.bias)
        last = self._rms(hidden[:, -1], model.model.norm.weight, eps)
        head = model.lm_head
        # the head in the weights' own dtype, out of autocast: float32 weights give float32
        # logits as core.precision keeps them (bf16 weights, for inference, give bf16 ones)
        with torch.autocast(device_type=last.device.type, enabled=False):
            return F.linear(last.to(head.weight.dtype), head.weight, head.bias)

    # ------------------------------------------------------------------ sampling
    def _next_tokens(self, logits: torch.Tensor, generator, rows: list | None = None) -> torch.Tensor:
        """The next token of every row. ``generator``: one ``torch.Generator`` for the batch, or a
        list with one per row (a row's draw then depends on its own seed alone). ``rows``: each
        row's ``SamplingConfig`` when they differ; rows with the same settings are drawn
        together by the same code as a batch of them alone, so a row's token is the one it would
        get alone from the same logits."""
        if rows is None:
            return self._draw(logits, self.sampling, generator)
        out = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
        groups: dict = {}
        for i, r in enumerate(rows):
            groups.setdefault((float(r.temperature), int(r.top_k), float(r.top_p)), []).append(i)
        for (temperature, top_k, top_p), idx in groups.items():
            settings = type(self.sampling)(
                max_new_tokens=self.sampling.max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k
            )
            gens = [generator[i] for i in idx] if isinstance(generator, list) else generator
            out[idx] = self._draw(logits[idx], settings, gens)
        return out

    @staticmethod
    def _draw(logits: torch.Tensor, s, generator) -> torch.Tensor:
        z = logits.float()
        if s.temperature == 0:
            return z.argmax(dim=-1)
        if s.temperature != 1.0:
            z = z / s.temperature
        z = filter_logits(z, int(s.top_k), float(s.top_p))
        probs = torch.softmax(z, dim=-1)
        race = torch.empty_like(probs)
        if isinstance(generator, list):  # one stream per row: its E_i come from its own seed
            for i, g in enumerate(generator):
                race[i].exponential_(generator=g)
        else:
            race.exponential_(generator=generator)
        return (probs / race).argmax(dim=-1)

    @torch.no_grad()
    def generate(
        self,
        model,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        seed: int,
        on_token: Callable[[torch.Tensor], bool | torch.Tensor | None] | None = None,
        row_seeds: list[int] | None = None,
        row_sampling: list | None = None,
    ) -> torch.Tensor:
        """``on_token(tokens [B])`` is called with each step's tokens as they are drawn (a server
        streams them); it does not change what is drawn. A true return ends the generation after
        that step (a stop sequence was reached); a bool tensor ``[B]`` ends those rows only
        (their later tokens are pad, as after an EOS).

        ``row_seeds``: one seed per row instead of ``seed``, each row drawing from its own
        ``torch.Generator``: a row's tokens then depend on its seed and its logits only, not on
        the rows beside it, and a batch of one row with seed ``s`` draws what ``seed=s`` draws.
        ``row_sampling``: a ``SamplingConfig`` per row (temperature, top-p, top-k; the length
        is this generator's ``max_new_tokens``), for batches of requests with other settings."""
        ok, why = supports(model)
        if not ok:
            raise ValueError(f"the native sampler does not support this model ({why}); use HFGenerator")
        device = prompt_ids.device
        B, P = prompt_ids.shape
        for name, given in (("row_seeds", row_seeds), ("row_sampling", row_sampling)):
            if given is not None and len(given) != B:
                raise ValueError(f"{name} has {len(given)} entries for {B} rows")
        if row_seeds is not None:
            generator = [torch.Generator(device=device).manual_seed(int(s) % (2**63 - 1)) for s in row_seeds]
        else:
            generator = torch.Generator(device=device).manual_seed(int(seed) % (2**63 - 1))
        n_new = int(self.sampling.max_new_tokens)
        _, kv_heads, head_dim = self._shapes(model.config)
        dtype = model.model.embed_tokens.weight.dtype
        layers = len(model.model.layers)
        keys = [torch.empty(B, kv_heads, P + n_new, head_dim, dtype=dtype, device=device) for _ in range(layers)]
        values = [torch.empty_like(k) for k in keys]
        real = prompt_mask.bool()
        # keys a query may see: real prompt tokens at or before it, and always itself (so a pad
        # position's softmax is never empty; pads are never seen by a real token)
        causal = torch.ones(P, P, dtype=torch.bool, device=device).tril()
        eye = torch.eye(P, dtype=torch.bool, device=device)
        prefill_mask = ((causal[None] & real[:, None, :]) | eye[None])[:, None]
        visible = torch.cat([real, torch.ones(B, n_new, dtype=torch.bool, device=device)], dim=1)
        # docs/PPO_CHECKLIST.md #2 (padding-aware positions)
        positions = (prompt_mask.long().cumsum(-1) - 1).clamp(min=0)
        # a model set to run in bf16 (core.precision.autocast_forward) samples in bf16 too; one
        # autocast region for the whole generation, so its cache of bf16 weight copies lives
        # across the steps (a region per step would convert every weight again for every token)
        with autocast(getattr(model, "_rlhfkit_autocast", None) or "fp32", device):
            return self._decode(
                model,
                prompt_ids,
                positions,
                keys,
                values,
                prefill_mask,
                visible,
                generator,
                n_new,
                on_token,
                row_sampling,
            )

    def _decode(
        self,
        model,
        prompt_ids,
        positions,
        keys,
        values,
        prefill_mask,
        visible,
        generator,
        n_new,
        on_token,
        row_sampling=None,
    ) -> torch.Tensor:
        B, P = prompt_ids.shape
        logits = self.forward(model, prompt_ids, positions, 0, keys, values, prefill_mask)
        position = positions[:, -1:] + 1
        done = torch.zeros(B, dtype=torch.bool, device=prompt_ids.device)
        out = []
        for t in range(n_new):
            token = self._next_tokens(logits, generator, row_sampling)
            token = torch.where(done, torch.full_like(token, self.pad_token_id), token)
            out.append(token)
            told = on_token(token) if on_token is not None else None
            if isinstance(told, torch.Tensor):  # these rows are finished (their own stop or length)
                done |= told.to(done.device, torch.bool)
                told = False
            done |= token == self.eos_token_id
            if bool(told) or t == n_new - 1 or bool(done.all()):
                break
            logits = self.forward(
                model, token[:, None], position, P + t, keys, values, visible[:, None, None, : P + t + 1]
            )
            position = position + 1
        return torch.stack(out, dim=1) if out else prompt_ids.new_zeros((B, 0))
