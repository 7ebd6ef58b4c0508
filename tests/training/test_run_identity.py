"""What identifies a run (training/run_identity.py): one list of result-free fields serves the
stage fingerprint, the checkpoint's resume check and the finished-run check."""

import dataclasses
import json

import pytest

from rlhfkit.recipes.dpo import DPOConfig
from rlhfkit.recipes.grpo import GRPOConfig
from rlhfkit.recipes.kto import KTOConfig
from rlhfkit.recipes.ppo import PPOConfig
from rlhfkit.recipes.reinforce import ReinforceConfig
from rlhfkit.recipes.reward import RewardConfig
from rlhfkit.recipes.rloo import RLOOConfig
from rlhfkit.recipes.sft import SFTConfig
from rlhfkit.training.config import ConfigError
from rlhfkit.training.distributed import DistInfo
from rlhfkit.training.run_identity import check_resume_config, finished_run, resume_fingerprint, stage_settings

TRAINED = [SFTConfig, RewardConfig, DPOConfig, KTOConfig, PPOConfig, GRPOConfig, RLOOConfig, ReinforceConfig]


@pytest.mark.parametrize("config_class", TRAINED, ids=lambda c: c.__name__)
def test_every_field_a_stage_fingerprint_leaves_out_the_resume_check_leaves_out(config_class):
    """A field the stage fingerprint ignores keeps the stage (and resumes it in its folder) when
    it changes: the checkpoint's resume fingerprint must ignore it as well."""
    config = config_class()
    fields = set(dataclasses.asdict(config))
    left_out_of_stage = fields - set(stage_settings(config))
    kept_for_resume = set(resume_fingerprint(config))
    assert not left_out_of_stage & kept_for_resume


def _checkpoint(tmp_path, stored: dict):
    ckpt = tmp_path / "checkpoint-2"
    ckpt.mkdir()
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": 2, "config": stored}))
    return ckpt


def test_a_checkpoint_resumes_under_another_sample_table_schedule(tmp_path):
    """``sample_every`` and ``num_sample_rows`` say how often the sample table is written and how
    many rows it has (the rollout it shows is drawn anyway): a checkpoint resumes under other
    values, also one whose stored fingerprint names them; ``learning_rate`` is refused."""
    written = GRPOConfig(sample_every=2, num_sample_rows=4)
    ckpt = _checkpoint(tmp_path, resume_fingerprint(written))
    check_resume_config(ckpt, GRPOConfig(sample_every=3, num_sample_rows=8))
    stored_with_them = {**resume_fingerprint(written), "sample_every": 2, "num_sample_rows": 4}
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": 2, "config": stored_with_them}))
    check_resume_config(ckpt, GRPOConfig(sample_every=3, num_sample_rows=8))
    with pytest.raises(ConfigError, match=r"learning_rate: 1e-06 -> 2e-06\)"):
        check_resume_config(ckpt, GRPOConfig(sample_every=3, learning_rate=2e-6, num_sample_rows=8))


def test_a_finished_run_is_the_same_run_under_another_sample_table_schedule(tmp_path, capsys):
    """A finished run's folder (config.yaml, final_metrics.json, model/) is returned for a rerun
    that differs only in result-free fields, and refused, naming the field, for one that does not."""
    import yaml

    out = tmp_path / "run"
    (out / "model").mkdir(parents=True)
    written = GRPOConfig(output_dir=str(out), sample_every=2, learning_rate=1e-6)
    (out / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(written)))))
    (out / "final_metrics.json").write_text(json.dumps({"reward": 0.25}))
    info = DistInfo()
    assert finished_run(GRPOConfig(output_dir=str(out), sample_every=5, learning_rate=1e-6), "grpo", info) == {
        "reward": 0.25
    }
    with pytest.raises(ConfigError, match=r"other settings \(learning_rate: 1e-06 -> 3e-06\)"):
        finished_run(GRPOConfig(output_dir=str(out), sample_every=2, learning_rate=3e-6), "grpo", info)
