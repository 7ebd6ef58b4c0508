"""`fit`: keeping the best evaluated weights (also across a crash and resume), and length
grouping of micro-batches, which must not change the update."""
import json

import pytest
import torch

from rlhfkit.training.distributed import DistInfo
from rlhfkit.training.loop import TrainingConfig, example_length, fit, lower_is_better

# 32 examples of a linear regression problem; example i has a token list of length 1 + i % 7 so
# that length grouping really reorders them.
torch.manual_seed(0)
X = torch.randn(32, 4)
Y = X @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(32)
EXAMPLES = [{"x": X[i], "y": Y[i], "ids": list(range(1 + i % 7))} for i in range(32)]


def collate(batch):
    return {"x": torch.stack([e["x"] for e in batch]), "y": torch.stack([e["y"] for e in batch])}


def loss_sum(model, batch):
    return ((model(batch["x"]).squeeze(-1) - batch["y"]) ** 2).sum(), {}


def count(batch):
    return int(batch["y"].numel())


def make_model():
    torch.manual_seed(1)
    return torch.nn.Linear(4, 1)


def config(out, **kw):
    base = dict(output_dir=str(out), epochs=0, max_steps=8, batch_size=8, micro_batch_size=2,
                learning_rate=0.05, lr_schedule="constant", tensorboard=False, seed=3)
    return TrainingConfig(**{**base, **kw})


class ScriptedEval:
    """Evaluation whose values are given in advance (the selection logic is what is tested);
    `crash_at` raises on that call, standing in for a killed process."""

    def __init__(self, values, crash_at=None):
        self.values, self.calls, self.crash_at = list(values), 0, crash_at

    def __call__(self, model):
        self.calls += 1
        if self.calls == self.crash_at:
            raise KeyboardInterrupt("simulated crash")
        return {"val_loss": self.values[self.calls - 1], "val_weight0": float(model.weight[0, 0].detach())}


def test_example_length_reads_the_longest_token_list():
    assert example_length({"chosen": [1, 2, 3], "rejected": [1], "margin": 0.0}) == 3
    assert example_length({"seqs": [[1, 2], [1, 2, 3, 4]], "prompt_len": 1}) == 4
    assert example_length({"input_ids": [5] * 9, "labels": [5] * 9}) == 9
    assert lower_is_better("val_loss") and lower_is_better("eval_ece") and not lower_is_better("val_accuracy")


def test_group_by_length_changes_nothing_but_the_padding(tmp_path):
    weights, micro_lengths = {}, {}
    for grouped in (True, False):
        seen = []

        def recording_collate(batch):
            seen.append([len(e["ids"]) for e in batch])
            return collate(batch)

        model = make_model()
        fit(model, EXAMPLES, recording_collate, loss_sum, count,
            config(tmp_path / str(grouped), group_by_length=grouped), DistInfo())
        weights[grouped] = model.weight.detach().clone()
        micro_lengths[grouped] = seen
    torch.testing.assert_close(weights[True], weights[False], rtol=1e-6, atol=1e-7)
    # grouped: each step's 4 micro-batches hold its 8 examples longest first; ungrouped: data order
    for step in range(8):
        grouped = micro_lengths[True][4 * step:4 * step + 4]
        flat = [n for mb in grouped for n in mb]
        assert flat == sorted(flat, reverse=True)
        assert sorted(flat) == sorted(n for mb in micro_lengths[False][4 * step:4 * step + 4] for n in mb)
    assert micro_lengths[True] != micro_lengths[False]


def test_length_fn_none_keeps_the_data_order(tmp_path):
    seen = []
    fit(make_model(), EXAMPLES, lambda b: (seen.append([len(e["ids"]) for e in b]), collate(b))[1], loss_sum,
        count, config(tmp_path / "order"), DistInfo(), length_fn=None)
    flat = [n for mb in seen[:4] for n in mb]
    assert flat != sorted(flat, reverse=True)  # the step's shuffled order as it came


def test_a_nan_evaluation_never_counts_as_best(tmp_path):
    metrics = fit(make_model(), EXAMPLES, collate, loss_sum, count,
                  config(tmp_path / "nan", eval_every=2, best_metric="val_loss"), DistInfo(),
                  ScriptedEval([float("nan"), 2.0, 1.0, 3.0, 1.0]))
    assert metrics["best_step"] == 6


def test_a_kill_between_the_renames_keeps_the_previous_best(tmp_path):
    from rlhfkit.training.loop import BestWeights

    out = tmp_path / "run"
    (out / "best.old").mkdir(parents=True)
    (out / "best.old" / "best.json").write_text(json.dumps({"step": 4, "value": 1.0, "metric": "val_loss"}))
    best = BestWeights(str(out), "val_loss", DistInfo(), resuming=True)
    assert (best.step, best.value) == (4, 1.0) and (out / "best" / "best.json").exists()


def test_best_metric_ends_with_the_weights_of_the_best_evaluation(tmp_path):
    # evaluations at steps 2, 4, 6 and 8 (the last one at the end); the best val_loss is at step 4
    model = make_model()
    metrics = fit(model, EXAMPLES, collate, loss_sum, count,
                  config(tmp_path / "best", eval_every=2, best_metric="val_loss"), DistInfo(),
                  ScriptedEval([3.0, 1.0, 2.0, 4.0, 99.0]))
    # with a constant learning rate the weights after step 4 do not depend on the total steps
    reference = make_model()
    fit(reference, EXAMPLES, collate, loss_sum, count, config(tmp_path / "four", max_steps=4), DistInfo())
    assert torch.equal(model.weight, reference.weight)
    assert metrics["best_step"] == 4 and metrics["best_val_loss"] == 1.0
    # the scores reported at the end are those of the restored weights (the 5th evaluation)
    assert metrics["val_loss"] == 99.0
    assert metrics["val_weight0"] == pytest.approx(float(reference.weight[0, 0]))
    assert json.loads((tmp_path / "best" / "best" / "best.json").read_text())["step"] == 4


def test_best_metric_survives_a_crash_and_resume(tmp_path):
    straight = make_model()
    fit(straight, EXAMPLES, collate, loss_sum, count,
        config(tmp_path / "straight", eval_every=2, save_every=2, best_metric="val_loss"), DistInfo(),
        ScriptedEval([3.0, 1.0, 2.0, 4.0, 99.0]))

    out = tmp_path / "crashed"
    cfg = config(out, eval_every=2, save_every=2, best_metric="val_loss")
    with pytest.raises(KeyboardInterrupt):  # crashes in the evaluation at step 6, after the best (4)
        fit(make_model(), EXAMPLES, collate, loss_sum, count, cfg, DistInfo(), ScriptedEval([3.0, 1.0], crash_at=3))
    assert (out / "checkpoint-4").is_dir() and (out / "best" / "best.json").exists()
    resumed = make_model()
    # the resumed run evaluates at 6 and 8 only: it must remember that step 4 scored 1.0
    metrics = fit(resumed, EXAMPLES, collate, loss_sum, count, cfg, DistInfo(), ScriptedEval([2.0, 4.0, 99.0]))
    assert metrics["best_step"] == 4
    assert torch.equal(resumed.weight, straight.weight) and torch.equal(resumed.bias, straight.bias)


def test_a_fresh_run_forgets_an_old_best(tmp_path):
    out = tmp_path / "run"
    fit(make_model(), EXAMPLES, collate, loss_sum, count, config(out, eval_every=2, best_metric="val_loss"),
        DistInfo(), ScriptedEval([0.5, 1.0, 2.0, 4.0, 0.5]))
    metrics = fit(make_model(), EXAMPLES, collate, loss_sum, count,
                  config(out, eval_every=2, best_metric="val_loss", resume=False), DistInfo(),
                  ScriptedEval([3.0, 2.0, 1.0, 4.0, 1.0]))
    assert metrics["best_step"] == 6


def test_best_metric_needs_an_evaluation_and_a_known_metric(tmp_path):
    from rlhfkit.training.config import ConfigError

    with pytest.raises(ConfigError, match="needs evaluation data"):
        fit(make_model(), EXAMPLES, collate, loss_sum, count, config(tmp_path / "a", best_metric="val_loss"),
            DistInfo())
    with pytest.raises(ConfigError, match="not among the eval metrics"):
        fit(make_model(), EXAMPLES, collate, loss_sum, count, config(tmp_path / "b", best_metric="val_acc"),
            DistInfo(), ScriptedEval([1.0] * 5))


def test_a_best_metric_never_finite_keeps_the_final_weights(tmp_path, capsys):
    """An evaluation that is NaN every time (the AUC of held-out thumbs of one class) chooses
    nothing: the run ends with its final weights, says so, and reports no best step."""
    model, reference = make_model(), make_model()
    metrics = fit(model, EXAMPLES, collate, loss_sum, count,
                  config(tmp_path / "nan", eval_every=2, best_metric="val_loss"), DistInfo(),
                  ScriptedEval([float("nan")] * 5))
    fit(reference, EXAMPLES, collate, loss_sum, count, config(tmp_path / "plain"), DistInfo())
    assert torch.equal(model.weight, reference.weight)
    assert "best_step" not in metrics and metrics["val_loss"] != metrics["val_loss"]  # NaN
    assert "best_metric val_loss was never a finite number" in capsys.readouterr().out


def test_a_run_resumes_only_on_the_examples_it_was_trained_on(tmp_path):
    """A checkpoint stores a digest of the training examples; resuming on other examples (a data
    file edited, a split changed) is refused naming both counts, on the same ones it continues."""
    from rlhfkit.training.config import ConfigError

    out = tmp_path / "run"
    cfg = config(out, eval_every=2, save_every=2)
    with pytest.raises(KeyboardInterrupt):  # killed in the evaluation at step 4, after checkpoint-2
        fit(make_model(), EXAMPLES, collate, loss_sum, count, cfg, DistInfo(), ScriptedEval([1.0], crash_at=2))
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["data"]["examples"] == 32 and len(state["data"]["sha256"]) == 64
    with pytest.raises(ConfigError, match=r"trained on other examples \(32 then, 24 now"):
        fit(make_model(), EXAMPLES[:24], collate, loss_sum, count, cfg, DistInfo(), ScriptedEval([1.0] * 5))
    edited = [{**e, "y": e["y"] + 1} if i == 5 else e for i, e in enumerate(EXAMPLES)]
    with pytest.raises(ConfigError, match=r"trained on other examples \(32 then, 32 now"):
        fit(make_model(), edited, collate, loss_sum, count, cfg, DistInfo(), ScriptedEval([1.0] * 5))
    fit(make_model(), EXAMPLES, collate, loss_sum, count, cfg, DistInfo(), ScriptedEval([1.0] * 5))
