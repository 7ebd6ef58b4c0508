"""Generation behind one small interface.

A recipe only ever calls ``rollout(generator, model, tokenizer, prompts, seed=...)`` (or
``generator.generate`` then ``finish_rollout``); ``HFGenerator`` wraps Hugging Face ``generate``
with the KV cache, and a faster engine only has to implement the ``Generator`` protocol.
"""
from .engine import (
    Generator,
    HFGenerator,
    Rollout,
    SamplingConfig,
    finish_rollout,
    response_logprobs,
    rollout,
    step_seed,
    tokenize_prompts,
)

__all__ = [
    "Generator",
    "HFGenerator",
    "Rollout",
    "SamplingConfig",
    "finish_rollout",
    "response_logprobs",
    "rollout",
    "step_seed",
    "tokenize_prompts",
]
