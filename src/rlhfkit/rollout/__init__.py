"""Generation behind one small interface.

A recipe only ever calls ``rollout(generator, model, tokenizer, prompts, seed=...)`` (or
``generator.generate`` then ``finish_rollout``); ``HFGenerator`` wraps Hugging Face ``generate``
with the KV cache, ``NativeLlamaGenerator`` (rollout/native.py) runs Llama-family decoders
without ``generate``'s per-step overhead, and ``make_sampler`` picks one; any other engine only
has to implement the ``Generator`` protocol.
"""

from .engine import (
    Generator,
    ENGINES,
    HFGenerator,
    Rollout,
    make_sampler,
    SamplingConfig,
    finish_rollout,
    repeat_each,
    response_logprobs,
    rollout,
    rollout_logprobs,
    response_values,
    step_seed,
    prompt_token_ids,
    tokenize_prompts,
)

__all__ = [
    "Generator",
    "ENGINES",
    "HFGenerator",
    "Rollout",
    "make_sampler",
    "SamplingConfig",
    "finish_rollout",
    "response_logprobs",
    "rollout_logprobs",
    "response_values",
    "repeat_each",
    "rollout",
    "step_seed",
    "prompt_token_ids",
    "tokenize_prompts",
]
