"""Step-end callbacks (``rlhfkit.training.callbacks``): what a process embedding rlhfkit sees of
a training run's steps."""

import torch

from rlhfkit.training.callbacks import add_step_end_callback
from rlhfkit.training.distributed import DistInfo
from rlhfkit.training.loop import TrainingConfig, fit

torch.manual_seed(0)
X = torch.randn(16, 3)
EXAMPLES = [{"x": X[i], "y": X[i].sum()} for i in range(16)]


def collate(batch):
    return {"x": torch.stack([e["x"] for e in batch]), "y": torch.stack([e["y"] for e in batch])}


def loss_sum(model, batch):
    return ((model(batch["x"]).squeeze(-1) - batch["y"]) ** 2).sum(), {}


def run(out):
    config = TrainingConfig(
        output_dir=str(out),
        epochs=0,
        max_steps=8,
        batch_size=4,
        micro_batch_size=2,
        save_every=3,
        lr_schedule="constant",
        tensorboard=False,
        seed=0,
    )
    fit(
        torch.nn.Linear(3, 1),
        EXAMPLES,
        collate,
        loss_sum,
        lambda b: int(b["y"].numel()),
        config,
        DistInfo(),
        length_fn=None,
    )


def test_fit_calls_each_callback_once_per_step_after_its_checkpoint(tmp_path):
    """Every registered callback gets steps 1 to 8 in order, each after that step's checkpoint
    (due at 3 and 6) is on disk; a removed callback is called no more."""
    calls = []

    def record(step):
        calls.append((step, (tmp_path / "a" / f"checkpoint-{step}" / "manifest.json").is_file()))

    others = []
    remove = add_step_end_callback(record)
    remove_other = add_step_end_callback(others.append)
    try:
        run(tmp_path / "a")
    finally:
        remove()
    assert calls == [(s, s in (3, 6)) for s in range(1, 9)]
    run(tmp_path / "b")
    remove_other()
    assert len(calls) == 8 and others == [*range(1, 9), *range(1, 9)]
