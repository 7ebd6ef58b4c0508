"""Run an ``rlhfkit`` command whose process SIGKILLs itself right after a given training step:
the hard kill the resume tests recover from, at a point they know.

    python tests/kill_after_step.py STEP sft --data ... --output_dir ...
    python -m torch.distributed.run --nproc_per_node 2 tests/kill_after_step.py STEP sft ...

The kill comes from the public step-end callback (``rlhfkit.training.callbacks``): it runs once
step STEP is done and its checkpoint, when one is due, is on disk, in every process; the first
training loop of the command to reach that step is the one killed (``pipeline`` and ``loop``
run several).
"""

from __future__ import annotations

import os
import signal
import sys

SCRIPT = os.path.abspath(__file__)


def kill_after(step: int):
    """A step-end callback that SIGKILLs this process once ``step`` is done."""

    def callback(done: int) -> None:
        if done == step:
            os.kill(os.getpid(), signal.SIGKILL)

    return callback


def command(step: int, args: list[str], python: str = sys.executable) -> list[str]:
    """The command line that runs ``rlhfkit *args`` killed after ``step``."""
    return [python, SCRIPT, str(step), *args]


if __name__ == "__main__":
    # run as a script, this file's folder (tests/) comes first on sys.path: take it off, so that
    # tests/data, tests/models ... cannot stand in for a package of the same name
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)
    from rlhfkit.cli import main
    from rlhfkit.training.callbacks import add_step_end_callback

    step, *rest = sys.argv[1:]
    add_step_end_callback(kill_after(int(step)))
    sys.exit(main(rest))
