"""``rlhfkit learn run LEARN_DIR --store DB --model BASE``: follow the store, run rounds.

The learner looks at the store every ``poll_seconds``; when at least ``min_feedback`` verdicts
arrived after its watermark (or a round was left unfinished by a kill), it runs a round
(``learn.round``). ``--once``: at most one round, then exit (tests, benchmarks, cron).
``LEARN_DIR/learn.json`` records the base model; a later start with another ``--model`` is
refused (the versions are adapters on that base).
"""

from __future__ import annotations

import time
from pathlib import Path

from rlhfkit.learn.config import LearnConfig
from rlhfkit.learn.inputs import new_verdicts, read_state
from rlhfkit.models import versions


def open_learn_dir(config: LearnConfig) -> Path:
    """``LEARN_DIR`` made (v0 = ``--model``, promoted) or checked (same base); ``ConfigError``."""
    from rlhfkit.training.config import ConfigError

    learn_dir = Path(config.learn_dir)
    if versions.is_learn_dir(learn_dir):
        base = versions.version_info(learn_dir, "v0")["base"]
        if config.model and config.model != base:
            raise ConfigError(
                f"field 'model': {learn_dir} learns on {base!r}, not {config.model!r} "
                "(its versions are adapters on that base); give another LEARN_DIR"
            )
        return learn_dir
    if not config.model:
        raise ConfigError(f"field 'model': {learn_dir} is new; give the base model (--model smollm2-135m)")
    versions.init_learn_dir(learn_dir, config.model)
    versions.atomic_write_json(learn_dir / "learn.json", {"base": config.model, "created": time.time()})
    return learn_dir


def round_pending(learn_dir: Path, state: dict) -> bool:
    """Whether the next round has started (its inputs exist): it resumes whatever the store holds."""
    return (learn_dir / "rounds" / f"round-{int(state['rounds_done']) + 1}" / "inputs" / "stage.json").is_file()


def run(config: LearnConfig) -> list[dict]:
    """Follow the store (module docstring); returns the rounds' outcomes (``round.json``)."""
    from rlhfkit.recipes.common import set_threads

    set_threads(config.threads)
    learn_dir = open_learn_dir(config)
    outcomes: list[dict] = []
    try:
        return _follow(config, learn_dir, outcomes)
    except KeyboardInterrupt:  # Ctrl-C: a round left unfinished resumes at the next start
        print(f"learn: stopped; {len(outcomes)} round(s) run", flush=True)
        return outcomes


def _follow(config: LearnConfig, learn_dir: Path, outcomes: list[dict]) -> list[dict]:
    from rlhfkit.learn.round import run_round

    while True:
        state = read_state(learn_dir)
        waiting = new_verdicts(config.store, config.prefix, int(state["watermark"]), config.min_feedback)
        if round_pending(learn_dir, state) or waiting >= config.min_feedback:
            outcome = run_round(config, learn_dir, state, int(state["rounds_done"]) + 1)
            outcomes.append(outcome)
            print(
                f"learn: round {outcome['round']}: {outcome['outcome']}"
                + (f" {outcome['version']}" if outcome.get("version") else "")
                + f"; serving "
                f"{versions.current_version(learn_dir)}",
                flush=True,
            )
        elif config.once:
            print(
                f"learn: {waiting} new verdicts of {config.min_feedback} needed for a round; nothing to do", flush=True
            )
        if config.once or (config.max_rounds and len(outcomes) >= config.max_rounds):
            return outcomes
        time.sleep(config.poll_seconds)
