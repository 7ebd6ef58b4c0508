import json

import torch

from rlhfkit.training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from rlhfkit.training.distributed import DistInfo
from rlhfkit.training.logging import MetricsLogger
from rlhfkit.training.loop import TrainingConfig, epoch_order, plan_steps, rank_slice
from rlhfkit.training.optimizer import build_scheduler


def test_epoch_order_is_deterministic_and_differs_by_epoch():
    a, b = epoch_order(50, seed=3, epoch=0), epoch_order(50, seed=3, epoch=0)
    assert a == b and sorted(a) == list(range(50))
    assert epoch_order(50, seed=3, epoch=1) != a


def test_rank_slice_partitions_the_global_batch():
    batch = [7, 3, 9, 1, 4, 6]
    parts = [rank_slice(batch, DistInfo(rank=r, world_size=3)) for r in range(3)]
    assert parts == [[7, 3], [9, 1], [4, 6]]


def test_plan_steps_and_linear_schedule():
    cfg = TrainingConfig(batch_size=4, epochs=2.0, learning_rate=1.0)
    assert plan_steps(10, cfg) == (2, 4)  # 10 // 4 = 2 full batches per epoch
    cfg.warmup_ratio = 0.25
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, 4, cfg)
    lrs = []
    for _ in range(4):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    # 1 warm-up step (lr 1/1), then linear decay over the 3 remaining: (4-1)/3, (4-2)/3, (4-3)/3
    assert lrs == [1.0, 1.0, 2 / 3, 1 / 3]


def test_checkpoint_roundtrip_and_pruning(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, opt, None, {"epoch": 0}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-3"]
    (tmp_path / "checkpoint-9.tmp").mkdir()  # a write cut by a kill is never picked up
    assert latest_checkpoint(tmp_path).name == "checkpoint-3"
    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    state = load_checkpoint(tmp_path / "checkpoint-3", fresh, fresh_opt)
    assert state == {"step": 3, "epoch": 0}
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    # RNG restored to the state at save time: the draw after resuming is the one after saving
    torch.manual_seed(123)
    save_checkpoint(tmp_path, 4, model)
    after_save = torch.rand(3)
    torch.rand(100)
    load_checkpoint(tmp_path / "checkpoint-4", fresh)
    assert torch.equal(torch.rand(3), after_save)


def test_metrics_logger_drops_lines_after_resume_step(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=False)
    for s in (1, 2, 3, 4):
        log.log(s, {"loss": float(s)})
    log.close()
    resumed = MetricsLogger(tmp_path, tensorboard=False, resume_step=2)
    resumed.log(3, {"loss": 30.0})
    resumed.close()
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 30.0)]
