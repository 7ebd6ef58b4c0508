"""A Gymnasium environment for language tasks: an episode is one response to one prompt, a step
is one token (the token-level MDP of RL4LMs, Ramamurthy et al. 2022, and of every PPO-for-LMs
implementation: the state is the prompt and the tokens so far, the action the next token).

- **Observation** (fixed shapes, so any policy network or replay buffer takes it): a ``Dict`` of
  ``input_ids`` and ``attention_mask``, int64 ``[max_prompt_length + max_new_tokens]``: the prompt
  (tokenised as the recipes' rollouts do, ``rollout.tokenize_prompts``: its last
  ``max_prompt_length`` tokens, optionally through the chat template) followed by the tokens
  chosen so far, right-padded with the pad id (mask 0).
- **Action**: ``Discrete(vocabulary size)``, the next token id.
- **Reward**: 0 for every token but the last; when the episode ends, the task reward of the
  decoded response, ``reward([prompt], [response])``: any reward spec of the library (``"vader"``,
  ``"rm:outputs/rm/model"``, ``"0.5*vader+0.5*rm:..."``) or a callable of that signature, so the
  environment scores exactly what the recipes' rollouts score. The response is decoded without
  the EOS token and special tokens, as the rollouts decode it.
- **terminated**: the action is the EOS token (the response is complete). **truncated**:
  ``max_new_tokens`` tokens without EOS; the response is scored as it is, minus
  ``missing_eos_penalty`` (the recipes' option of the same name, PPO detail: responses that never
  end are discouraged).
- ``reset(seed=...)`` draws the prompt with the environment's seeded generator (the same seed,
  the same prompt); ``options={"prompt": text}`` asks for a given one.

A KL penalty to a reference model is left to the algorithm (as in RL4LMs): it needs the policy's
own log-probabilities, which the environment does not see.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

try:
    import gymnasium as gym
    from gymnasium import spaces
except ImportError as e:  # an optional extra: the rest of rlhfkit works without it
    raise ImportError("rlhfkit.envs needs gymnasium: pip install 'rlhfkit[envs]' (or gymnasium>=1.0)") from e

__all__ = ["TextGenerationEnv", "run_policy_episode"]


class TextGenerationEnv(gym.Env):
    """Token-by-token generation for ``prompts``, scored by ``reward`` at the end; see the module
    docstring. ``prompts``: texts, or records with a ``prompt`` field (``datasets`` rows);
    ``vocab_size``: the action count when the model's output is wider than the tokenizer (0 = the
    tokenizer's size)."""

    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
        tokenizer: Any,
        prompts: Sequence[str] | Sequence[dict],
        reward: str | Callable,
        max_new_tokens: int = 32,
        max_prompt_length: int = 64,
        chat_template: bool = False,
        missing_eos_penalty: float = 0.0,
        render_mode: str | None = None,
        vocab_size: int = 0,
    ):
        from rlhfkit.rewards import build_reward

        texts = [p["prompt"] if isinstance(p, dict) else p for p in prompts]
        if not texts:
            raise ValueError("prompts: give at least one prompt")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise ValueError(f"prompts[{bad[0]}]: a prompt must be text (or a record with a 'prompt' text)")
        if max_new_tokens < 1 or max_prompt_length < 1:
            raise ValueError("max_new_tokens and max_prompt_length must be >= 1")
        if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs an eos and a pad token (rlhfkit.models.load_tokenizer sets them)")
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.tokenizer, self.prompts = tokenizer, list(texts)
        self.reward_fn = build_reward(reward)
        self.max_new_tokens, self.max_prompt_length = int(max_new_tokens), int(max_prompt_length)
        self.chat_template, self.missing_eos_penalty = chat_template, float(missing_eos_penalty)
        self.render_mode = render_mode
        self.length = self.max_prompt_length + self.max_new_tokens
        # the tokenizer's tokens; a model whose output layer is padded wider (Qwen) may pass its
        # own width, so that every id it can emit is an action
        vocab = int(vocab_size) or len(tokenizer)
        if vocab < len(tokenizer):
            raise ValueError(f"vocab_size {vocab} is below the tokenizer's {len(tokenizer)} tokens")
        self.action_space = spaces.Discrete(vocab)
        ids = spaces.Box(0, vocab - 1, shape=(self.length,), dtype=np.int64)
        self.observation_space = spaces.Dict(
            {"input_ids": ids, "attention_mask": spaces.Box(0, 1, shape=(self.length,), dtype=np.int64)}
        )
        self._prompt: str | None = None
        self._prompt_ids: list[int] = []
        self._response: list[int] = []
        self._done = True

    # ------------------------------------------------------------------ Gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options and "prompt" in options:
            prompt = options["prompt"]
            if not isinstance(prompt, str):
                raise ValueError("options['prompt'] must be text")
        else:
            prompt = self.prompts[int(self.np_random.integers(len(self.prompts)))]
        self._prompt, self._prompt_ids = prompt, self._encode(prompt)
        self._response, self._done = [], False
        return self._observation(), {"prompt": prompt, "prompt_tokens": len(self._prompt_ids)}

    def step(self, action):
        if self._done:
            raise RuntimeError("the episode has ended: call reset() first")
        token = int(action)
        if not self.action_space.contains(token):
            raise ValueError(f"action {action!r} is not a token id in 0..{self.action_space.n - 1}")
        self._response.append(token)
        terminated = token == self.tokenizer.eos_token_id
        truncated = not terminated and len(self._response) >= self.max_new_tokens
        reward, info = 0.0, {}
        if terminated or truncated:
            self._done = True
            text = self.response_text()
            score = float(self.reward_fn([self._prompt], [text])[0])
            reward = score - (self.missing_eos_penalty if truncated else 0.0)
            info = {
                "prompt": self._prompt,
                "response": text,
                "task_reward": score,
                "response_tokens": len(self._response),
            }
        return self._observation(), reward, terminated, truncated, info

    def render(self):
        if self.render_mode == "ansi":
            return f"{self._prompt or ''}{self.response_text()}"
        return None

    # ------------------------------------------------------------------ helpers
    def response_text(self) -> str:
        """The response so far as the rollouts decode it: without the EOS, special tokens skipped."""
        body = [t for t in self._response if t != self.tokenizer.eos_token_id]
        return self.tokenizer.decode(body, skip_special_tokens=True)

    def _encode(self, prompt: str) -> list[int]:
        from rlhfkit.rollout import prompt_token_ids

        return prompt_token_ids(prompt, self.tokenizer, self.max_prompt_length, self.chat_template)

    def _observation(self) -> dict:
        seq = self._prompt_ids + self._response
        ids = np.full(self.length, int(self.tokenizer.pad_token_id), dtype=np.int64)
        mask = np.zeros(self.length, dtype=np.int64)
        ids[: len(seq)], mask[: len(seq)] = seq, 1
        return {"input_ids": ids, "attention_mask": mask}


def run_policy_episode(
    env, model, seed: int | None = None, temperature: float = 1.0, options: dict | None = None, use_cache: bool = True
) -> tuple[float, dict]:
    """One episode of ``env`` (a ``TextGenerationEnv``, or it wrapped by ``gymnasium.make``) with
    a Hugging Face causal LM as the policy (each token sampled from its next-token distribution at
    ``temperature``; 0 = greedy). Returns ``(return, final info)``. A reference loop for people
    who bring their own algorithm, observation in and token out. With ``use_cache`` the model's
    KV cache is carried between steps and only the tokens the observation gained are run (the
    whole observation again when it did not just grow: an environment that rewrote it); without,
    the whole sequence runs every step (quadratic in the response length). The two give the same
    episodes in float32; a model in bfloat16 may now and then round a near tie the other way."""
    import torch

    obs, info = env.reset(seed=seed, options=options)
    g = torch.Generator().manual_seed(0 if seed is None else int(seed))
    total, done = 0.0, False
    past, seen = None, None  # the cache and the token ids it holds
    while not done:
        n = int(obs["attention_mask"].sum())
        ids = torch.as_tensor(obs["input_ids"][:n]).unsqueeze(0)
        with torch.no_grad():
            if use_cache and past is not None and n > seen.shape[1] and torch.equal(ids[:, : seen.shape[1]], seen):
                out = model(input_ids=ids[:, seen.shape[1] :], past_key_values=past, use_cache=True)
            else:
                out = model(input_ids=ids, use_cache=use_cache)
            past, seen = (out.past_key_values, ids) if use_cache else (None, None)
            # a model wider than the environment (padded output layer) picks only among its actions
            logits = out.logits[0, -1, : int(env.action_space.n)].float()
        if temperature == 0:
            action = int(logits.argmax())
        else:
            action = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=g))
        obs, reward, terminated, truncated, info = env.step(action)
        total += reward
        done = terminated or truncated
    return total, info
