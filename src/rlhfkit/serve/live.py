"""Live generation for the feedback app: new items answered by a policy, or by whichever policy an
``rlhfkit loop`` holds as current, so that people always judge the newest policy's outputs.

``PolicyGenerator(spec)`` is the app's generator hook (``feedback.generation``):
``generator(prompts, n) -> [[{"text", "model"}] * n] * len(prompts)``. ``spec`` is a model (a
folder, a ``.gguf`` file, a Hugging Face name or the ``smollm2-135m`` alias) or the output folder
of a loop; for a loop the policy is looked up at every call (the last finished round's
``round-N/policy/model``, the initial policy before that) and reloaded when the loop has moved
on; while the loop is still in its setup a call raises ``NoPolicyYet`` (the app answers 503). Sampling goes through ``rollout.make_sampler``, as in training; calls are serialised by a
lock (the app's handlers run in threads) and each call draws from its own seed.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

__all__ = ["PolicyGenerator", "NoPolicyYet", "current_policy", "loop_policy"]


class NoPolicyYet(LookupError):
    """The loop has not finished its setup: there is no policy to generate with yet."""


def current_policy(spec: str) -> str:
    """The model ``spec`` names: itself, or for a loop folder (it holds ``loop_state.json``) the
    policy of its last finished round, else its initial policy."""
    return loop_policy(spec)[0]


def loop_policy(spec: str) -> tuple[str, int | None]:
    """``(model, round)``: for a loop folder the policy ``current_policy`` names and the round
    that made it (0: the initial policy); for anything else ``(spec, None)``. The round is the
    newest one up to ``rounds_done`` whose policy stage is finished: a resumed loop with other
    settings redoes its rounds while ``loop_state.json`` still counts the earlier run's, so the
    newest round's policy may be half written (its ``stage.json`` says running) or gone."""
    folder = Path(spec)
    state_file = folder / "loop_state.json"
    if not state_file.is_file():
        return spec, None
    done = rounds_done(spec)
    # the folder is found from the loop's own layout, not from the recorded path, which is
    # relative to wherever the loop was started
    for r in range(done, 0, -1):
        if _finished(folder / f"round-{r}" / "policy"):
            return str(folder / f"round-{r}" / "policy" / "model"), r
    setup = folder / "setup"
    if _finished(setup):  # a tiny initial model built by the loop
        return str(setup / "model"), 0
    record = _stage_record(setup)
    if record is not None and record.get("status") == "done":
        try:
            return str(record["outputs"]["model"]), 0
        except (KeyError, TypeError):
            pass
    raise NoPolicyYet(f"{folder}: the loop has no policy yet (its setup has not finished)")


def rounds_done(spec: str) -> int:
    """The rounds a loop folder's ``loop_state.json`` counts as finished (0 without one)."""
    state_file = Path(spec) / "loop_state.json"
    if not state_file.is_file():
        return 0
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{state_file}: not JSON ({e})") from None
    try:
        return int(state.get("rounds_done") or 0) if isinstance(state, dict) else 0
    except (TypeError, ValueError):
        raise ValueError(f"{state_file}: rounds_done is not a number ({state.get('rounds_done')!r})") from None


def _stage_record(stage_dir: Path) -> dict | None:
    try:
        record = json.loads((stage_dir / "stage.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _finished(stage_dir: Path) -> bool:
    """Whether the stage folder holds a whole model: ``model/config.json``, and its ``stage.json``
    (the loop writes one saying running before the stage writes anything) says done or is not
    there (a folder put together by hand)."""
    if not (stage_dir / "model" / "config.json").is_file():
        return False
    if not (stage_dir / "stage.json").exists():
        return True
    record = _stage_record(stage_dir)
    return record is not None and record.get("status") == "done"


class PolicyGenerator:
    """``generator(prompts, n)`` for ``feedback.app.create_app(..., generator=...)``."""

    def __init__(self, spec: str, max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 1.0,
                 max_prompt_length: int = 512, seed: int = 0):
        from rlhfkit.rollout import SamplingConfig

        self.spec = spec
        self.sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        self.max_prompt_length = max_prompt_length
        self.seed = seed
        self.calls = 0
        self.loaded: str | None = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._sampler: Any = None
        self._lock = threading.Lock()
        try:
            self._load(current_policy(spec))  # a model that does not load fails at start-up
        except NoPolicyYet:
            pass  # a loop still in its setup: the first request after it loads the policy

    def _load(self, path: str) -> None:
        from rlhfkit.models import load_policy
        from rlhfkit.rollout import make_sampler

        model, tok = load_policy(path)
        self._model, self._tokenizer = model.eval(), tok
        self._sampler = make_sampler(model, self.sampling, tok.eos_token_id, tok.pad_token_id)
        self.loaded = path

    def __call__(self, prompts: list[str], n: int) -> list[list[dict]]:
        import torch

        from rlhfkit.rollout import rollout, step_seed

        with self._lock:
            path = current_policy(self.spec)
            if path != self.loaded:
                self._load(path)
            self.calls += 1
            with torch.no_grad():
                ro = rollout(self._sampler, self._model, self._tokenizer, [p for p in prompts for _ in range(n)],
                             seed=step_seed(self.seed, self.calls, salt=41), max_prompt_length=self.max_prompt_length,
                             behaviour_logprobs=False)
            texts = list(ro.responses)
            return [[{"text": t, "model": self.loaded} for t in texts[i * n:(i + 1) * n]] for i in range(len(prompts))]
