"""Step-end callbacks: functions a training process calls once a step is done.

``fit`` (sft, reward, dpo, kto) and the online driver (ppo, grpo, rloo, reinforce) call every
registered callback with the number of the step just finished, after the step's logging,
evaluation and checkpoint (when one is due: it is on disk and every rank has passed its barrier),
in every process of a run. For code that runs rlhfkit's commands in its own process and wants to
act at that point: report progress to a scheduler, take a snapshot of the output folder, or stop
the process there. The resume tests use it to SIGKILL a run right after a chosen step
(``tests/kill_after_step.py``), a hard kill at a known point.

A plain list of functions, as ``atexit`` keeps them: nothing to subclass, and a callback sees the
step number only (it cannot change the run).
"""

from __future__ import annotations

from typing import Callable

__all__ = ["StepEndCallback", "add_step_end_callback", "step_ended"]

StepEndCallback = Callable[[int], None]

_callbacks: list[StepEndCallback] = []


def add_step_end_callback(callback: StepEndCallback) -> Callable[[], None]:
    """Call ``callback(step)`` after every training step of this process from now on; returns a
    function that removes it again."""
    _callbacks.append(callback)

    def remove() -> None:
        if callback in _callbacks:
            _callbacks.remove(callback)

    return remove


def step_ended(step: int) -> None:
    """Tell every registered callback that ``step`` is done (the training loops call this)."""
    for callback in list(_callbacks):
        callback(step)
