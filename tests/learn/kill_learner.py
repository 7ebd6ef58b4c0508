"""Run ``rlhfkit learn ...`` in a process that SIGKILLs itself at a chosen point: after training
step N (``step:N``, the first training loop to reach it: the reward model's, or GRPO's once the
reward stage is cached) or after a round's stage (``stage:NAME``: inputs, defence, reward,
policy, gate, version), through the public callbacks (``training.callbacks``,
``learn.round.add_stage_end_callback``): the hard kills the learner's resume test recovers from.

    python tests/learn/kill_learner.py step:2 learn run LEARN_DIR --store ...
"""

from __future__ import annotations

import os
import signal
import sys

SCRIPT = os.path.abspath(__file__)


def _kill(_=None) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    # run as a script, this file's folder comes first on sys.path: take it off (tests/learn must
    # not stand in for the package rlhfkit.learn imports)
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(SCRIPT):
        sys.path.pop(0)
    from rlhfkit.cli import main
    from rlhfkit.learn.round import add_stage_end_callback
    from rlhfkit.training.callbacks import add_step_end_callback

    point, *rest = sys.argv[1:]
    kind, _, at = point.partition(":")
    if kind == "step":
        add_step_end_callback(lambda done: _kill() if done == int(at) else None)
    elif kind == "stage":
        add_stage_end_callback(lambda name: _kill() if name == at else None)
    else:
        sys.exit(f"{SCRIPT}: the first argument is step:N or stage:NAME, not {point!r}")
    sys.exit(main(rest))
