"""`fit`: keeping the best evaluated weights (also across a crash and resume), and length
grouping of micro-batches, which must not change the update."""

import json

import pytest
import torch

from rlhfkit.training.distributed import DistInfo
from rlhfkit.training.best_weights import lower_is_better
from rlhfkit.training.loop import TrainingConfig, example_length, fit

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
    base = dict(
        output_dir=str(out),
        epochs=0,
        max_steps=8,
        batch_size=8,
        micro_batch_size=2,
        learning_rate=0.05,
        lr_schedule="constant",
        tensorboard=False,
        seed=3,
    )
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
        fit(
            model,
            EXAMPLES,
            recording_collate,
            loss_sum,
            count,
            config(tmp_path / str(grouped), group_by_length=grouped),
            DistInfo(),
        )
        weights[grouped] = model.weight.detach().clone()
        micro_lengths[grouped] = seen
    torch.testing.assert_close(weights[True], weights[False], rtol=1e-6, atol=1e-7)
    # grouped: each step's 4 micro-batches hold its 8 examples longest first; ungrouped: data order
    for step in range(8):
        grouped = micro_lengths[True][4 * step : 4 * step + 4]
        flat = [n for mb in grouped for n in mb]
        assert flat == sorted(flat, reverse=True)
        assert sorted(flat) == sorted(n for mb in micro_lengths[False][4 * step : 4 * step + 4] for n in mb)
    assert micro_lengths[True] != micro_lengths[False]


def test_length_fn_none_keeps_the_data_order(tmp_path):
    seen = []
    fit(
        make_model(),
        EXAMPLES,
        lambda b: (seen.append([len(e["ids"]) for e in b]), collate(b))[1],
        loss_sum,
        count,
        config(tmp_path / "order"),
        DistInfo(),
        length_fn=None,
    )
    flat = [n for mb in seen[:4] for n in mb]
    assert flat != sorted(flat, reverse=True)  # the step's shuffled order as it came


def test_a_nan_evaluation_never_counts_as_best(tmp_path):
    metrics = fit(
        make_model(),
        EXAMPLES,
        collate,
        loss_sum,
        count,
        config(tmp_path / "nan", eval_every=2, best_metric="val_loss"),
        DistInfo(),
        ScriptedEval([float("nan"), 2.0, 1.0, 3.0, 1.0]),
    )
    assert metrics["best_step"] == 6


def test_a_kill_between_the_renames_keeps_the_previous_best(tmp_path):
    from rlhfkit.training.best_weights import BestWeights

    out = tmp_path / "run"
    BestWeights(str(out), "val_loss", DistInfo(), resuming=False).update(4, {"val_loss": 1.0}, make_model())
    (out / "best").rename(out / "best.old")  # killed after the first rename (best -> best.old)
    best = BestWeights(str(out), "val_loss", DistInfo(), resuming=True)
    assert (best.step, best.value) == (4, 1.0) and (out / "best" / "best.json").exists()


def test_no_finite_evaluation_leaves_the_final_weights_with_a_warning(tmp_path, capsys):
    """Every evaluation NaN: none counts as best, so there is nothing to restore; the model keeps
    the final weights, best_step is None, and one warning line says why."""
    out = tmp_path / "nan"
    model = make_model()
    metrics = fit(
        model,
        EXAMPLES,
        collate,
        loss_sum,
        count,
        config(out, eval_every=2, best_metric="val_loss"),
        DistInfo(),
        ScriptedEval([float("nan")] * 4),
    )
    final = make_model()
    fit(final, EXAMPLES, collate, loss_sum, count, config(tmp_path / "final"), DistInfo())
    assert torch.equal(model.weight, final.weight) and torch.equal(model.bias, final.bias)
    assert metrics["best_step"] is None and metrics["best_val_loss"] is None
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rlhfkit: warning")]
    assert warnings == [
        "rlhfkit: warning: best_metric: no evaluation had a finite val_loss; the model keeps the final weights (step 8)"
    ]


def test_best_metric_ends_with_the_weights_of_the_best_evaluation(tmp_path):
    # evaluations at steps 2, 4, 6 and 8 (the last one at the end); the best val_loss is at step 4
    model = make_model()
    metrics = fit(
        model,
        EXAMPLES,
        collate,
        loss_sum,
        count,
        config(tmp_path / "best", eval_every=2, best_metric="val_loss"),
        DistInfo(),
        ScriptedEval([3.0, 1.0, 2.0, 4.0, 99.0]),
    )
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
    fit(
        straight,
        EXAMPLES,
        collate,
        loss_sum,
        count,
        config(tmp_path / "straight", eval_every=2, save_every=2, best_metric="val_loss"),
        DistInfo(),
        ScriptedEval([3.0, 1.0, 2.0, 4.0, 99.0]),
    )

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


class DamagingEval(ScriptedEval):
    """A ScriptedEval that, on its last call, damages the kept best weights with `damage(folder)`
    (the disk, between the evaluation that chose them and the end of the run); `what` is the
    damage as the warning must name it."""

    def __init__(self, values, folder, damage):
        super().__init__(values)
        self.folder, self.damage, self.what = folder, damage, None

    def __call__(self, model):
        if self.calls == len(self.values) - 1:
            self.what = self.damage(self.folder)
        return super().__call__(model)


def truncate_best_model(folder):
    data = (folder / "model.pt").read_bytes()
    (folder / "model.pt").write_bytes(data[: len(data) // 2])
    return f"model.pt is {len(data) // 2} bytes, manifest.json says {len(data)}"


def flip_best_model_bit(folder):
    from ..conftest import flip_tensor_bit

    flip_tensor_bit(folder / "model.pt")
    return "model.pt does not match its sha256 in manifest.json (changed after it was written)"


@pytest.mark.parametrize("damage", [truncate_best_model, flip_best_model_bit])
def test_a_damaged_best_copy_leaves_the_final_weights_with_a_warning(tmp_path, capsys, damage):
    """The best weights (step 4) damaged on disk before the end: they are not loaded; one warning
    line names the file and the damage, the model keeps the final weights (step 8) and the
    metrics name them as the best."""
    out = tmp_path / "run"
    model = make_model()
    evaluate = DamagingEval([3.0, 1.0, 2.0, 4.0], out / "best", damage)
    metrics = fit(
        model,
        EXAMPLES,
        collate,
        loss_sum,
        count,
        config(out, eval_every=2, best_metric="val_loss"),
        DistInfo(),
        evaluate,
    )
    final = make_model()
    fit(final, EXAMPLES, collate, loss_sum, count, config(tmp_path / "final"), DistInfo())
    assert torch.equal(model.weight, final.weight) and torch.equal(model.bias, final.bias)
    assert metrics["best_step"] == 8 and metrics["best_val_loss"] == 4.0 == metrics["val_loss"]
    assert evaluate.calls == 4  # the final weights are not evaluated again
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rlhfkit: warning")]
    assert warnings == [
        f"rlhfkit: warning: damaged {out / 'best'}: {evaluate.what}; the best weights (step 4, "
        "val_loss 1) are lost and the model keeps the final weights (step 8); train again with "
        "--resume false to recover them"
    ]


@pytest.mark.parametrize(
    "damage,what",
    [
        (lambda f: (f / "best.json").write_text('{"step": 4, "val'), "best.json is 16 bytes, manifest.json says "),
        (lambda f: (f / "manifest.json").unlink(), "manifest.json is missing (best.json says there was one)"),
        (truncate_best_model, "model.pt is "),
    ],
)
def test_a_resumed_run_passes_over_a_damaged_best_with_a_warning(tmp_path, capsys, damage, what):
    """Crashed after the best evaluation (step 4), the best copy damaged: the resumed run says so
    in one line and chooses among the evaluations still to come (steps 6 and 8: step 6)."""
    out = tmp_path / "crashed"
    cfg = config(out, eval_every=2, save_every=2, best_metric="val_loss")
    with pytest.raises(KeyboardInterrupt):
        fit(make_model(), EXAMPLES, collate, loss_sum, count, cfg, DistInfo(), ScriptedEval([3.0, 1.0], crash_at=3))
    damage(out / "best")
    capsys.readouterr()
    metrics = fit(make_model(), EXAMPLES, collate, loss_sum, count, cfg, DistInfo(), ScriptedEval([2.0, 4.0, 99.0]))
    assert metrics["best_step"] == 6 and metrics["best_val_loss"] == 2.0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rlhfkit: warning")]
    assert len(warnings) == 1 and warnings[0].startswith(
        f"rlhfkit: warning: passing over damaged {out / 'best'}: {what}"
    )
    assert warnings[0].endswith(
        "; the best weights before this resume are lost (the best is chosen among the "
        "evaluations to come; train again with --resume false to recover them)"
    )
    assert json.loads((out / "best" / "best.json").read_text())["step"] == 6


def test_a_best_copy_without_manifest_from_an_older_rlhfkit_still_resumes(tmp_path):
    """best/ written before manifests (no manifest.json, a best.json that names none) is taken up
    when its files load."""
    from rlhfkit.training.best_weights import BestWeights

    out = tmp_path / "run"
    BestWeights(str(out), "val_loss", DistInfo(), resuming=False).update(4, {"val_loss": 1.0}, make_model())
    (out / "best" / "manifest.json").unlink()
    (out / "best" / "best.json").write_text(json.dumps({"step": 4, "value": 1.0, "metric": "val_loss"}))
    best = BestWeights(str(out), "val_loss", DistInfo(), resuming=True)
    assert (best.step, best.value) == (4, 1.0)


def test_a_fresh_run_forgets_an_old_best(tmp_path):
    out = tmp_path / "run"
    fit(
        make_model(),
        EXAMPLES,
        collate,
        loss_sum,
        count,
        config(out, eval_every=2, best_metric="val_loss"),
        DistInfo(),
        ScriptedEval([0.5, 1.0, 2.0, 4.0, 0.5]),
    )
    metrics = fit(
        make_model(),
        EXAMPLES,
        collate,
        loss_sum,
        count,
        config(out, eval_every=2, best_metric="val_loss", resume=False),
        DistInfo(),
        ScriptedEval([3.0, 2.0, 1.0, 4.0, 1.0]),
    )
    assert metrics["best_step"] == 6


def test_best_metric_needs_an_evaluation_and_a_known_metric(tmp_path):
    from rlhfkit.training.config import ConfigError

    with pytest.raises(ConfigError, match="needs evaluation data"):
        fit(
            make_model(), EXAMPLES, collate, loss_sum, count, config(tmp_path / "a", best_metric="val_loss"), DistInfo()
        )
    with pytest.raises(ConfigError, match="not among the eval metrics"):
        fit(
            make_model(),
            EXAMPLES,
            collate,
            loss_sum,
            count,
            config(tmp_path / "b", best_metric="val_acc"),
            DistInfo(),
            ScriptedEval([1.0] * 5),
        )


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
