"""Run by ``test_online_parallel.py`` under torchrun: ``rlhfkit ARGS`` in which every rank, as the
run ends, writes a digest of its weights, its optimiser state and the algorithm's checkpoint
state (KL coefficient, reward statistics, baseline ...) to ``DIR/rank-R.txt``, so a test can check
that the ranks end in the same state. The hook wraps two functions of the online driver; the
library itself knows nothing of it.

    python -m torch.distributed.run --nproc_per_node 2 tests/recipes/rank_digest_cli.py DIR ARGS...
"""

import hashlib
import json
import sys
from pathlib import Path

import torch

from rlhfkit.cli import main
from rlhfkit.recipes import online_driver


def digest(modules: torch.nn.Module, optimizer, state: dict) -> str:
    h = hashlib.sha256()
    for name, t in sorted(modules.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    for group in optimizer.state_dict()["state"].values():
        for k, v in sorted(group.items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes() if torch.is_tensor(v) else repr(v).encode())
    h.update(json.dumps(state, sort_keys=True, default=repr).encode())
    return h.hexdigest()


def install(folder: Path) -> None:
    seen = {}
    checkpoint, finish = online_driver.maybe_checkpoint, online_driver.finish_run

    def remembering_checkpoint(config, step_done, modules, optimizer, scheduler, trainer_state, info=None):
        # called after every step with the run's modules, optimiser and the algorithm's state
        seen.update(modules=modules, optimizer=optimizer, state=trainer_state)
        return checkpoint(config, step_done, modules, optimizer, scheduler, trainer_state, info)

    def digesting_finish(info, line):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"rank-{info.rank}.txt").write_text(
            digest(seen["modules"], seen["optimizer"], seen["state"]), encoding="utf-8"
        )
        return finish(info, line)

    online_driver.maybe_checkpoint, online_driver.finish_run = remembering_checkpoint, digesting_finish


if __name__ == "__main__":
    install(Path(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
