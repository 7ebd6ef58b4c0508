"""Batched sampling from a causal LM and the tensors an online-RL update needs.

Layout of a rollout (docs/PPO_CHECKLIST.md #1 (distinct pad token), #2 (padding-aware positions),
#4 (truncate after EOS)):
- prompts are LEFT padded (``prompt_ids`` / ``prompt_mask`` ``[B, P]``), so that every row's
  first generated token sits at column ``P``;
- responses are RIGHT padded (``response_ids`` / ``response_mask`` ``[B, R]``), cut after the
  first EOS (``core.masking.truncate_after_eos``): the EOS is kept and masked in, everything
  after it is the pad token and masked out;
- the behaviour log-probs are recomputed in ONE teacher-forced forward pass over
  ``prompt ⊕ response`` with ``position_ids`` from the mask and the logits divided by the
  sampling temperature (docs/PPO_CHECKLIST.md #3 (temperature in log-probs)), i.e. exactly the
  computation the training step does, so the first PPO ratio is 1 up to float noise (the scores
  ``generate`` returns come from the KV-cached incremental pass and would differ by more). As in
  TRL, top-k / top-p are not applied to these log-probs: they are log-probs of the tempered full
  distribution.

Reproducibility: ``generate`` samples from a private RNG stream seeded with ``seed`` (the
recipes pass ``step_seed(config.seed, step)``), so a resumed run draws the same samples as an
uninterrupted one and the global RNG is untouched.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch

from rlhfkit.core.logprobs import entropy_from_logits, token_logprobs
from rlhfkit.core.masking import truncate_after_eos
from rlhfkit.core.precision import autocast
from rlhfkit.models.lora import reference_context
from rlhfkit.models.reward import position_ids_from_mask
from rlhfkit.models.value import token_values
from rlhfkit.rollout import native, shared_prompt

__all__ = [
    "SamplingConfig",
    "Generator",
    "HFGenerator",
    "ENGINES",
    "make_sampler",
    "Rollout",
    "tokenize_prompts",
    "response_logprobs",
    "finish_rollout",
    "rollout_logprobs",
    "response_values",
    "repeat_each",
    "rollout",
    "step_seed",
]


def step_seed(seed: int, step: int, salt: int = 0) -> int:
    """A deterministic 63-bit seed for (run seed, step, salt): the same after every resume."""
    x = (int(seed) * 1_000_003 + int(step)) * 7_919 + int(salt) * 104_729 + 12_345
    return x % (2**63 - 1)


@dataclass
class SamplingConfig:
    max_new_tokens: int = 32
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off


@runtime_checkable
class Generator(Protocol):
    """Anything that samples responses. ``generate`` returns raw response ids ``[B, R]``
    (``R <= max_new_tokens``; whatever follows an EOS is ignored) for LEFT-padded prompts,
    drawing its randomness only from ``seed``. A faster engine (vLLM, a custom CUDA loop)
    implements this and nothing in the recipes changes."""

    sampling: SamplingConfig

    def generate(
        self, model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, seed: int
    ) -> torch.Tensor: ...


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class HFGenerator:
    """Hugging Face ``model.generate`` with the KV cache, sampling with temperature / top-p /
    top-k (greedy when ``temperature == 0``), stopping at EOS. The model's own
    ``generation_config`` defaults (repetition penalty, a default top-k ...) are NOT used: every
    sampling knob comes from ``sampling`` so the behaviour policy is the one the log-probs
    describe."""

    def __init__(self, sampling: SamplingConfig, eos_token_id: int, pad_token_id: int):
        if pad_token_id == eos_token_id:
            raise ValueError("pad and EOS must be distinct tokens: docs/PPO_CHECKLIST.md #1 (distinct pad token)")
        self.sampling = sampling
        self.eos_token_id = int(eos_token_id)
        self.pad_token_id = int(pad_token_id)

    def generation_config(self):
        from transformers import GenerationConfig

        s = self.sampling
        greedy = s.temperature == 0
        return GenerationConfig(
            do_sample=not greedy,
            temperature=None if greedy else float(s.temperature),
            # explicit "off" values: left as None, transformers would fill in its default top_k=50
            top_p=None if greedy else float(min(s.top_p, 1.0)),
            top_k=None if greedy else int(s.top_k),
            max_new_tokens=int(s.max_new_tokens),
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            use_cache=True,
            repetition_penalty=None,
        )

    @torch.no_grad()
    def generate(
        self, model, prompt_ids, prompt_mask, seed: int, on_token: Callable[[torch.Tensor], bool | None] | None = None
    ) -> torch.Tensor:
        """``on_token(tokens [B])``: called with each step's tokens as they are drawn; a true
        return ends the generation after that step, a bool tensor ``[B]`` ends those rows (their
        later tokens are pad, as after an EOS)."""
        from transformers import StoppingCriteriaList

        was_training = model.training
        model.eval()
        try:
            # a model set to run in bf16 (core.precision.autocast_forward) enters autocast at
            # every step's forward; one region around the whole generation keeps autocast's cache
            # of bf16 weight copies across the steps (as the native sampler does)
            with (
                _seeded(seed, prompt_ids.device),
                autocast(getattr(model, "_rlhfkit_autocast", None) or "fp32", prompt_ids.device),
            ):
                out = model.generate(
                    input_ids=prompt_ids,
                    attention_mask=prompt_mask,
                    generation_config=self.generation_config(),
                    stopping_criteria=None if on_token is None else StoppingCriteriaList([_token_callback(on_token)]),
                )
        finally:
            model.train(was_training)
        return out[:, prompt_ids.shape[1] :]


def _token_callback(on_token: Callable[[torch.Tensor], bool | None]):
    """``on_token`` as a stopping criterion of ``model.generate``: called after each step with the
    sequences so far (the newest tokens last; pad for rows already finished, as the native
    sampler), it can end the generation, or some rows of it (``generate`` pads a row once a
    criterion says it is done), which a streamer cannot."""
    from transformers import StoppingCriteria

    class TokenCallback(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
            told = on_token(input_ids[:, -1])
            if isinstance(told, torch.Tensor):
                return told.to(input_ids.device, torch.bool).clone()
            return torch.full((input_ids.shape[0],), bool(told), dtype=torch.bool, device=input_ids.device)

    return TokenCallback()


ENGINES = ("auto", "native", "hf")


def make_sampler(
    model, sampling: SamplingConfig, eos_token_id: int, pad_token_id: int, engine: str = "auto"
) -> Generator:
    """The ``Generator`` for ``model``: ``native`` (rollout/native.py, plain Llama-family models
    only: same logits as HF, without ``generate``'s per-step overhead), ``hf`` (``model.generate``)
    or ``auto`` (native where it applies, else hf)."""
    if engine not in ENGINES:
        raise ValueError(f"generation engine must be one of {list(ENGINES)}, got {engine!r}")
    if engine == "hf":
        return HFGenerator(sampling, eos_token_id, pad_token_id)
    ok, why = native.supports(model)
    if engine == "native" and not ok:
        raise ValueError(f"generation_engine native: not supported for this model ({why}); use auto or hf")
    cls = native.NativeLlamaGenerator if ok else HFGenerator
    return cls(sampling, eos_token_id, pad_token_id)


@dataclass
class Rollout:
    """One batch of sampled responses. Shapes: ``B`` rows, ``P`` prompt, ``R`` response columns.

    prompt_ids, prompt_mask: ``[B, P]`` LEFT padded (mask long 0/1);
    response_ids: ``[B, R]`` RIGHT padded, pad after the first EOS; response_mask: bool ``[B, R]``
    (true up to and including the EOS); has_eos: bool ``[B]``; logprobs: ``[B, R]`` behaviour
    log-probs (0 outside the mask); prompts / responses: the texts (responses decoded without
    special tokens and without the EOS).
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    has_eos: torch.Tensor
    logprobs: torch.Tensor
    prompts: list
    responses: list

    def __len__(self) -> int:
        return int(self.prompt_ids.shape[0])

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask.long(), self.response_mask.long()], dim=1)

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(dim=1)

    def select(self, index: Sequence[int] | torch.Tensor) -> "Rollout":
        """The rows ``index`` (same column widths, so padding does not change)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v[idx] if isinstance(v, torch.Tensor) else [v[i] for i in idx.tolist()]
        return Rollout(**out)


def prompt_token_ids(prompt: str, tokenizer: Any, max_prompt_length: int = 0, chat_template: bool = False) -> list[int]:
    """One prompt's token ids as ``tokenize_prompts`` makes them (without the padding): through
    the chat template as one user turn or as is, its last ``max_prompt_length`` tokens (> 0),
    the BOS token when it is empty."""
    if chat_template:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(prompt)["input_ids"]
    if max_prompt_length and len(ids) > max_prompt_length:
        ids = ids[-max_prompt_length:]
    if not ids:
        ids = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
    return ids


def tokenize_prompts(
    prompts: Sequence[str], tokenizer: Any, max_prompt_length: int = 0, chat_template: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """LEFT-padded ``(prompt_ids, prompt_mask)`` ``[B, P]`` (long). With ``chat_template`` each
    prompt becomes one user turn rendered with the tokenizer's template and the generation
    prompt; otherwise the text is tokenised as is. Prompts longer than ``max_prompt_length``
    (> 0) keep their LAST tokens (the part the response continues). An empty prompt becomes
    the BOS token (generation needs at least one token)."""
    rows = [prompt_token_ids(p, tokenizer, max_prompt_length, chat_template) for p in prompts]
    P = max(len(r) for r in rows)
    ids = torch.full((len(rows), P), int(tokenizer.pad_token_id), dtype=torch.long)
    mask = torch.zeros((len(rows), P), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, P - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, P - len(r) :] = 1
    return ids, mask


def response_logprobs(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    share_prompts: bool = True,
):
    """Teacher-forced log-probs of the response tokens: ``[B, R]`` (0 outside ``response_mask``),
    and with ``with_entropy`` also the per-token entropy ``[B, R]`` of the tempered
    distribution. One forward pass over ``prompt ⊕ response`` with ``position_ids =
    cumsum(mask) - 1`` (left-padded prompt, right-padded response: docs/PPO_CHECKLIST.md #2
    (padding-aware positions)) and logits divided by ``temperature`` (docs/PPO_CHECKLIST.md #3
    (temperature in log-probs); ``temperature == 0``, greedy, is treated as 1). Only the
    ``R + 1`` last positions' logits are computed where the model supports ``logits_to_keep``.
    Gradients flow (wrap in ``torch.no_grad()`` for the behaviour / reference pass).

    ``share_prompts``: where several rows share a prompt (GRPO / RLOO groups) and the model
    supports it, compute each distinct prompt once (rollout/shared_prompt.py: same log-probs and
    gradients to float rounding) when that saves at least 10% of the FLOPs."""
    R = response_ids.shape[1]
    if share_prompts and R > 1 and prompt_ids.shape[0] > 1 and shared_prompt.packable(model):
        groups = shared_prompt.prompt_groups(prompt_ids, prompt_mask)
        config = shared_prompt._base(model).config
        if shared_prompt.worth_sharing(config, prompt_ids.shape[0], groups, prompt_ids.shape[1], R):
            pad = getattr(config, "pad_token_id", None)
            return shared_prompt.shared_prompt_logprobs(
                model,
                prompt_ids,
                prompt_mask,
                response_ids,
                response_mask,
                groups,
                temperature if temperature > 0 else 1.0,
                with_entropy,
                int(pad) if pad is not None else 0,
            )
    ids = torch.cat([prompt_ids, response_ids], dim=1)
    mask = torch.cat([prompt_mask.long(), response_mask.long()], dim=1)
    kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False)
    try:
        logits = model(**kwargs, logits_to_keep=R + 1).logits
    except TypeError:  # a model without logits_to_keep
        logits = model(**kwargs).logits
    logits = logits[:, -(R + 1) : -1]  # position t predicts token t + 1
    labels = torch.where(response_mask.bool(), response_ids, torch.full_like(response_ids, -100))
    t = temperature if temperature > 0 else 1.0
    lp = token_logprobs(logits, labels, temperature=t)
    if not with_entropy:
        return lp
    with torch.no_grad():  # a diagnostic: no graph through the [B, R, V] softmax
        ent = entropy_from_logits(logits.detach(), temperature=t)
    return lp, torch.where(response_mask.bool(), ent, torch.zeros_like(ent))


def finish_rollout(
    model,
    tokenizer,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    raw_response_ids: torch.Tensor,
    temperature: float,
    prompts: Sequence[str] | None = None,
    logprob_batch_size: int = 0,
    behaviour_logprobs: bool = True,
) -> Rollout:
    """Truncate raw generations after the first EOS, recompute behaviour log-probs
    (``rollout_logprobs`` in chunks of ``logprob_batch_size`` rows, 0 = all at once) and decode.

    ``behaviour_logprobs=False`` skips that forward pass and leaves ``logprobs`` zero, for a
    caller that makes exactly one update on the rollout and takes them from its own forward pass
    (the log-probs before that update are the behaviour ones; TRL's GRPO with num_iterations=1)."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    response_ids, response_mask, has_eos = truncate_after_eos(raw_response_ids, eos, pad)
    text_ids = torch.where(response_mask & (response_ids != eos), response_ids, torch.full_like(response_ids, pad))
    responses = tokenizer.batch_decode(text_ids, skip_special_tokens=True)
    if prompts is None:
        prompts = tokenizer.batch_decode(prompt_ids, skip_special_tokens=True)
    ro = Rollout(
        prompt_ids,
        prompt_mask,
        response_ids,
        response_mask,
        has_eos,
        torch.zeros_like(response_ids, dtype=torch.float),
        list(prompts),
        list(responses),
    )
    if not behaviour_logprobs:
        return ro
    return replace(ro, logprobs=rollout_logprobs(model, ro, temperature, logprob_batch_size))


@torch.no_grad()
def rollout_logprobs(
    model, ro: Rollout, temperature: float, batch_size: int = 0, adapter_disabled: bool = False
) -> torch.Tensor:
    """Teacher-forced log-probs ``[B, R]`` of the rollout's response tokens under ``model``
    (``response_logprobs`` without gradients, in chunks of ``batch_size`` rows, 0 = all at once),
    on ``model``'s device: the behaviour pass of the policy that sampled them, or the pass of a
    KL reference. ``adapter_disabled``: ``model`` with its LoRA adapter switched off
    (``models.reference_context``), the reference of a LoRA policy. The model runs in eval mode
    and is left in the mode it was in."""
    device = next(model.parameters()).device
    chunk = batch_size or len(ro)
    was_training = model.training
    model.eval()
    with reference_context(model) if adapter_disabled else contextlib.nullcontext(model) as m:
        lps = [
            response_logprobs(
                m,
                ro.prompt_ids[i : i + chunk].to(device),
                ro.prompt_mask[i : i + chunk].to(device),
                ro.response_ids[i : i + chunk].to(device),
                ro.response_mask[i : i + chunk].to(device),
                temperature,
            )
            for i in range(0, len(ro), chunk)
        ]
    model.train(was_training)
    return torch.cat(lps)


def response_values(value_model, ro: Rollout, rows) -> torch.Tensor:
    """Values ``[b, R]`` of the rollout's ``rows``: ``values[:, t]`` is V of the state that predicts
    response token t (the hidden state of the token before it), as TRL's
    ``values[:, context_length - 1:-1]``; gradients flow."""
    P = ro.prompt_ids.shape[1]
    ids = torch.cat([ro.prompt_ids[rows], ro.response_ids[rows]], 1)
    mask = torch.cat([ro.prompt_mask[rows].long(), ro.response_mask[rows].long()], 1)
    return token_values(value_model, ids, mask)[:, P - 1 : -1]


def repeat_each(items: list, k: int) -> list:
    """``[a, b] -> [a, a, b, b]`` for k = 2: the k samples of a prompt are adjacent rows (the layout
    of GRPO / RLOO groups and of ``shared_prompt``'s packing)."""
    return [x for x in items for _ in range(k)]


def rollout(
    generator: Generator,
    model,
    tokenizer,
    prompts: Sequence[str],
    seed: int,
    max_prompt_length: int = 0,
    chat_template: bool = False,
    logprob_batch_size: int = 0,
    behaviour_logprobs: bool = True,
) -> Rollout:
    """Tokenise ``prompts`` (left padded), sample one response each with ``generator`` from
    ``seed``, and return the finished ``Rollout``. Repeat prompts for k samples per prompt."""
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = tokenize_prompts(prompts, tokenizer, max_prompt_length, chat_template)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    raw = generator.generate(model, prompt_ids, prompt_mask, seed)
    return finish_rollout(
        model,
        tokenizer,
        prompt_ids,
        prompt_mask,
        raw,
        generator.sampling.temperature,
        prompts,
        logprob_batch_size,
        behaviour_logprobs,
    )
