"""``BestWeights``: the weights of the best evaluation so far, kept on disk beside a run's
checkpoints, so that ``fit`` with ``best_metric`` ends holding them (and a resumed run still
knows its best)."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

import torch

from .checkpoint import folder_problem, save_manifested, unwrap
from .config import ConfigError
from .distributed import DistInfo, all_reduce_sum, barrier, broadcast_from_main, full_model_state, is_sharded


def lower_is_better(metric: str) -> bool:
    return any(word in metric for word in ("loss", "perplexity", "ece", "kl"))


BEST_FILES = ("model.pt", "best.json")


class BestWeights:
    """The weights with the best value of `metric` so far, kept on disk in `output_dir/best/`
    (replaced through `best.tmp` and `best.old` renames, so a kill at any moment leaves a
    complete best; a resumed run still knows its best, a fresh run starts without). A value that
    is not finite (NaN accuracy of an all-tie set) never counts as best. The decision is rank 0's,
    broadcast, so every rank enters the collective state gathering together.

    `best/` carries a manifest like a checkpoint (training/checkpoint.py), checked by rank 0 when
    a resumed run takes it up and before the weights are restored. A damaged copy cannot be
    recomputed (short of training again), and stopping would throw away a finished run whose
    rerun would stop at the same place; so the run goes on with a one-line warning naming the
    file: on resume it chooses among the evaluations still to come, at the end the model keeps
    the final weights, and `best_step` names the weights it ends with."""

    def __init__(self, output_dir: str, metric: str, info: DistInfo, resuming: bool):
        self.metric, self.info = metric, info
        self.folder = Path(output_dir) / "best"
        self.tmp, self.old = self.folder.with_name("best.tmp"), self.folder.with_name("best.old")
        self.step: int | None = None
        self.value: float | None = None
        saved, warning = None, None
        if info.is_main:
            if not self.folder.exists() and (self.old / "best.json").exists():
                os.replace(self.old, self.folder)  # killed between the two renames: the old one stands
            if resuming and self.folder.exists():
                problem = folder_problem(self.folder, BEST_FILES, "best.json")
                if problem is None:
                    saved = json.loads((self.folder / "best.json").read_text(encoding="utf-8"))
                else:
                    warning = (
                        f"rlhfkit: warning: passing over damaged {self.folder}: {problem}; the best weights "
                        "before this resume are lost (the best is chosen among the evaluations to come; "
                        "train again with --resume false to recover them)"
                    )
        saved = broadcast_from_main(saved, info)  # every rank knows the same best (restore is collective)
        if saved is not None:
            self.step, self.value = saved["step"], saved["value"]
        elif info.is_main:
            if warning:
                print(warning, file=sys.stderr, flush=True)
            for stale in (self.folder, self.tmp, self.old):
                if stale.exists():
                    shutil.rmtree(stale)

    def update(self, step: int, scores: dict, train_model: torch.nn.Module) -> None:
        if self.metric not in scores:
            raise ConfigError(f"field 'best_metric': {self.metric!r} is not among the eval metrics {sorted(scores)}")
        value = float(scores[self.metric])
        better = math.isfinite(value) and (
            self.value is None or (value < self.value if lower_is_better(self.metric) else value > self.value)
        )
        if self.info.enabled:  # rank 0 decides for all
            better = bool(all_reduce_sum(float(better) if self.info.is_main else 0.0, self.info).item())
        if not better:
            return
        self.step, self.value = step, value
        state = full_model_state(train_model)  # collective under FSDP
        if self.info.is_main:
            if self.tmp.exists():
                shutil.rmtree(self.tmp)
            self.tmp.mkdir(parents=True)
            save_manifested(
                self.tmp, {"model.pt": state}, "best.json", {"step": step, "value": value, "metric": self.metric}
            )
            if self.old.exists():
                shutil.rmtree(self.old)
            if self.folder.exists():
                os.replace(self.folder, self.old)
            os.replace(self.tmp, self.folder)
            shutil.rmtree(self.old, ignore_errors=True)
        barrier(self.info)

    def restore(self, train_model: torch.nn.Module, final_step: int, final_scores: dict) -> bool:
        """Load the best weights into the (possibly wrapped / sharded) model; False when the
        copy on disk is damaged: then, with a warning, the model keeps the final weights
        (`final_step`, scored `final_scores`) and they become the best."""
        problem = broadcast_from_main(
            folder_problem(self.folder, BEST_FILES, "best.json") if self.info.is_main else None, self.info
        )
        if problem is not None:
            if self.info.is_main:
                print(
                    f"rlhfkit: warning: damaged {self.folder}: {problem}; the best weights (step {self.step}, "
                    f"{self.metric} {self.value:.6g}) are lost and the model keeps the final weights (step "
                    f"{final_step}); train again with --resume false to recover them",
                    file=sys.stderr,
                    flush=True,
                )
            self.step, self.value = final_step, float(final_scores[self.metric])
            return False
        state = torch.load(self.folder / "model.pt", map_location="cpu", weights_only=True)
        if is_sharded(train_model):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(train_model, state, options=StateDictOptions(full_state_dict=True))
        else:
            unwrap(train_model).load_state_dict(state)
        return True
