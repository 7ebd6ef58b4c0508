"""Live generation for the feedback app: new items answered by a policy, or by whichever version a
policy line holds as current (``models.policy_line``: an ``rlhfkit loop`` folder, a learner
folder), so that people always judge the newest policy's outputs.

``PolicyGenerator(spec)`` is the app's generator hook (``feedback.generation``):
``generator(prompts, n) -> [[{"text", "model"}] * n] * len(prompts)``. For a loop or learner
folder the current version is looked up at every call and reloaded when the line has moved on;
while a loop is still in its setup a call raises ``NoPolicyYet`` (the app answers 503). Sampling
goes through ``rollout.make_sampler``, as in training; calls are serialised by a lock (the app's
handlers run in threads) and each call draws from its own seed.
"""

from __future__ import annotations

import threading
from typing import Any

from rlhfkit.models.policy_line import NoPolicyYet, PolicyVersion, current_policy, load, resolve

__all__ = ["PolicyGenerator", "NoPolicyYet", "current_policy"]


class PolicyGenerator:
    """``generator(prompts, n)`` for ``feedback.app.create_app(..., generator=...)``."""

    def __init__(
        self,
        spec: str,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_prompt_length: int = 512,
        seed: int = 0,
    ):
        from rlhfkit.rollout import SamplingConfig

        self.spec = spec
        self.sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        self.max_prompt_length = max_prompt_length
        self.seed = seed
        self.calls = 0
        self.loaded: str | None = None  # the folder (or model spec) of the version loaded
        self.version: PolicyVersion | None = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._sampler: Any = None
        self._lock = threading.Lock()
        try:
            self._load(resolve(spec))  # a model that does not load fails at start-up
        except NoPolicyYet:
            pass  # a loop still in its setup: the first request after it loads the policy

    def _load(self, version: PolicyVersion) -> None:
        from rlhfkit.rollout import make_sampler

        model, tok = load(version)
        self._model, self._tokenizer = model.eval(), tok
        self._sampler = make_sampler(model, self.sampling, tok.eos_token_id, tok.pad_token_id)
        self.loaded, self.version = version.path, version

    def __call__(self, prompts: list[str], n: int) -> list[list[dict]]:
        import torch

        from rlhfkit.rollout import rollout, step_seed

        with self._lock:
            version = resolve(self.spec)
            if version != self.version:
                self._load(version)
            self.calls += 1
            with torch.no_grad():
                ro = rollout(
                    self._sampler,
                    self._model,
                    self._tokenizer,
                    [p for p in prompts for _ in range(n)],
                    seed=step_seed(self.seed, self.calls, salt=41),
                    max_prompt_length=self.max_prompt_length,
                    behaviour_logprobs=False,
                )
            texts = list(ro.responses)
            return [
                [{"text": t, "model": self.loaded} for t in texts[i * n : (i + 1) * n]] for i in range(len(prompts))
            ]
