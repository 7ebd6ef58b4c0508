"""A learner killed with SIGKILL anywhere in a round resumes and promotes the same version."""

import json
import os
import subprocess
import sys

from rlhfkit.learn.run import run
from rlhfkit.models import versions

from .conftest import TEST_KEY, cli_args, fill, tiny_config

KILLER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kill_learner.py")
KILLS = [
    "step:1",  # inside the defence's first cross-fitted reward model (after its step 1)
    "stage:defence",  # at a stage boundary (that fold model resumed, the other trained, both scored)
    "step:2",  # inside the reward model's training (after step 2 of 5; the defence is cached)
    "stage:reward",  # at a stage boundary (the reward model resumed, done)
    "step:1",  # inside GRPO (after step 1 of 2; the reward stage is cached)
    "stage:gate",  # after the gate, before the version is written
    "stage:version",
]  # v1 written whole, current.json not yet replaced


def test_sigkill_anywhere_then_restart_promotes_the_same_version(tmp_path, tiny_base):
    """The same store, two learner folders: one round uninterrupted; the other killed seven times
    (inside the defence's cross-fitted training, after the defence, inside reward-model training,
    after the reward stage, inside GRPO, after the gate, after v1 is written but before it is
    current) by real
    SIGKILLs of a real ``rlhfkit learn run`` process, each restart continuing the round. The
    second promotes the same version name with byte-identical adapter weights, the same reward
    model, the same gate figures, logs the promotion once, and records the same watermark and
    trained ids, with the same defence (nothing counted twice)."""
    db = tmp_path / "fb.db"
    fill(str(db), {"alice": "honest", "bob": "honest", "eve": "inverted"})
    reference = tmp_path / "reference"
    [ref] = run(tiny_config(reference, db, tiny_base))
    assert ref["outcome"] == "promoted"

    killed = tmp_path / "killed"
    killed.mkdir()  # the same held-out key as the reference (a subprocess makes its own otherwise)
    (killed / "holdout.key").write_text(TEST_KEY.hex())
    args = ["learn", "run", str(killed), "--store", str(db), "--model", str(tiny_base), *cli_args()]
    cmd = [sys.executable, "-m", "rlhfkit.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    for point in KILLS:
        proc = subprocess.run(
            [sys.executable, KILLER, point, *args], env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == -9, (point, proc.returncode, proc.stderr[-2000:])
        assert not (killed / "current.json").is_file() or versions.current_version(killed) == "v0"
    stages = {
        s: json.loads((killed / "rounds" / "round-1" / s / "stage.json").read_text())
        for s in ("defence", "reward", "policy", "gate")
    }
    assert stages["defence"]["runs"] == 2 and stages["defence"]["resumed"]
    assert stages["reward"]["runs"] == 2 and stages["reward"]["resumed"]  # continued from its checkpoint
    assert stages["policy"]["runs"] == 2 and stages["policy"]["resumed"]
    assert (killed / "versions" / "v1").is_dir() and versions.current_version(killed) == "v0"
    assert not (killed / "versions.jsonl").exists()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "round 1: promoted v1" in proc.stdout

    assert versions.current_version(killed) == versions.current_version(reference) == "v1"
    a, b = (d / "versions" / "v1" / "adapter" / "adapter_model.safetensors" for d in (reference, killed))
    assert a.read_bytes() == b.read_bytes()
    rm_a, rm_b = (d / "rounds" / "round-1" / "reward" / "model" / "model.safetensors" for d in (reference, killed))
    assert rm_a.read_bytes() == rm_b.read_bytes()
    gates = [versions.version_info(d, "v1")["gate"] for d in (reference, killed)]
    assert gates[0] == gates[1]
    defences = [
        json.loads((d / "rounds" / "round-1" / "defence" / "defence.json").read_text()) for d in (reference, killed)
    ]
    assert defences[0] == defences[1] and defences[0]["crossfit_agreement"] is not None  # the fold models ran
    log = [json.loads(x) for x in (killed / "versions.jsonl").read_text().splitlines()]
    assert [(x["event"], x["version"]) for x in log] == [("promoted", "v1")]
    a_state, b_state = (json.loads((d / "learn_state.json").read_text()) for d in (reference, killed))
    for key in ("watermark", "trained", "rounds_done"):
        assert a_state[key] == b_state[key], key
    # a further start finds nothing new: the round is not run or counted again
    assert run(tiny_config(killed, db, tiny_base)) == []
    assert json.loads((killed / "learn_state.json").read_text())["rounds_done"] == 1
