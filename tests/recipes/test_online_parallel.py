"""Online RL over several processes (torchrun, gloo): each rank rolls out its share of the prompts,
the token weights use the whole minibatch's counts and the gradients are summed over ranks, so
one update over two processes equals the same update in one; a two-process GRPO run resumes
exactly after a SIGKILL, and so does PPO, whose whitening over ranks equals one process's; RLOO
and REINFORCE run too."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import assert_resume_exact, free_port, load_weights
from .test_online_recipes import args

WORKER = Path(__file__).with_name("online_update_worker.py")


def run_cli_with_rank_digests(args: list[str], folder: Path):
    """``rlhfkit ARGS`` over two processes, each rank writing a digest of its final state to
    ``folder`` (rank_digest_cli.py)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RLHFKIT_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        str(WORKER.with_name("rank_digest_cli.py")),
        str(folder),
        *args,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _update(policy, out: Path, aggregation: str, epochs: int, processes: int) -> tuple[dict, dict]:
    out.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = (
        [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", f"--master_port={free_port()}"]
        if processes > 1
        else [sys.executable]
    )
    r = subprocess.run(
        [*launch, str(WORKER), str(policy), str(out), aggregation, str(epochs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return torch.load(out / "weights.pt"), json.loads((out / "stats.json").read_text())


@pytest.mark.parametrize("aggregation,epochs", [("token", 1), ("sequence", 2), ("constant", 1), ("ppo", 2)])
def test_one_update_over_two_processes_equals_one_process(tmp_path, tiny_policy_dir, aggregation, epochs):
    """8 rows, micro-batches of 3 (one process: 3+3+2; each of two: 3+1); with 2 epochs the second
    one has ratios != 1 (clipping in play). Same weights, same statistics. ``ppo``: PPO's whole
    update (values, GAE, reward and advantage whitening over all ranks, policy + value loss)."""
    one, s1 = _update(tiny_policy_dir, tmp_path / "one", aggregation, epochs, 1)
    two, s2 = _update(tiny_policy_dir, tmp_path / "two", aggregation, epochs, 2)
    assert (s1["rows"], s1["world_size"], s2["rows"], s2["world_size"]) == (8, 1, 4, 2)
    start = load_weights(tiny_policy_dir)
    prefix = "policy." if aggregation == "ppo" else ""
    assert any(not torch.equal(one[prefix + k], start[k]) for k in start if prefix + k in one)  # it moved
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6, msg=k)
    keys = (
        ("pg_loss", "value_loss", "clipfrac", "approx_kl", "entropy", "grad_norm")
        if aggregation == "ppo"
        else ("loss", "clipfrac", "approx_kl", "entropy", "grad_norm")
    )
    for key in keys:
        assert key in s1 and s2[key] == pytest.approx(s1[key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize(
    "algo,extra",
    [
        ("grpo", ["--num_generations", "2", "--micro_batch_size", "4", "--sample_every", "2"]),
        # LoRA dropout draws from the global RNG, which differs per rank: each rank's stream is saved
        ("grpo", ["--num_generations", "2", "--micro_batch_size", "4", "--lora.r", "4", "--lora.dropout", "0.1"]),
        # state that every rank must keep the same: adaptive KL coefficient, running reward statistics
        (
            "ppo",
            [
                "--ppo_epochs",
                "2",
                "--num_minibatches",
                "2",
                "--micro_batch_size",
                "2",
                "--kl_control",
                "adaptive",
                "--kl_target",
                "0.01",
                "--reward_norm",
                "running",
            ],
        ),
        ("reinforce", ["--baseline", "running"]),
    ],
)
def test_two_processes_resume_exactly_after_sigkill(tmp_path, tiny_policy_dir, prompt_file, algo, extra):
    _, killed = assert_resume_exact(
        tmp_path,
        args,
        algo,
        tiny_policy_dir,
        prompt_file,
        ["--max_steps", "4", "--save_every", "2", "--batch_size", "8", *extra],
        kill_after=3,
        checkpoint=2,
        torchrun=2,
    )
    assert (killed / "checkpoint-2" / "rng_ranks.pt").is_file()  # each rank's own RNG stream
    if "--sample_every" in extra:
        rows = [json.loads(l) for l in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
        assert [x["step"] for x in rows] == [1, 2, 3, 4]  # rank 0 logs, once per step
        assert rows[-1]["samples_per_s"] > 0 and (tmp_path / "straight" / "samples.jsonl").is_file()


def _same_state_on_both_ranks(folder: Path) -> None:
    digests = [(folder / f"rank-{r}.txt").read_text() for r in (0, 1)]
    assert digests[0] == digests[1]


@pytest.mark.parametrize(
    "algo,extra",
    [
        ("rloo", ["--num_generations", "2", "--normalize_advantages", "true"]),
        ("reinforce", ["--baseline", "learned"]),
        ("reinforce", ["--baseline", "running", "--num_minibatches", "2", "--micro_batch_size", "2"]),
    ],
)
def test_rloo_and_reinforce_run_over_two_processes(tmp_path, tiny_policy_dir, prompt_file, algo, extra):
    """The ranks end with the same weights, optimiser state and baseline (a digest each)."""
    out = tmp_path / algo
    r = run_cli_with_rank_digests(
        args(algo, tiny_policy_dir, prompt_file, out, "--max_steps", "2", "--batch_size", "8", *extra),
        tmp_path / "digest",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    _same_state_on_both_ranks(tmp_path / "digest")
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows] == [1, 2] and (out / "model" / "model.safetensors").is_file()


def test_whitening_and_explained_variance_over_two_processes_equal_one(tmp_path):
    """PPO's advantage / reward whitening and its explained-variance metric over two ranks' halves
    equal ``core.masking.masked_whiten`` and the one-process metric on the whole tensors."""
    from rlhfkit.core.masking import masked_whiten
    from rlhfkit.training.stats import explained_variance

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={free_port()}",
            str(WORKER.with_name("online_stats_worker.py")),
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    got = torch.load(tmp_path / "stats.pt")
    x, v, mask = got["x"], got["v"], got["mask"]
    for shift in (True, False):
        torch.testing.assert_close(
            got[f"whiten_{shift}"], masked_whiten(x, mask, shift_mean=shift), rtol=1e-5, atol=1e-6
        )
    assert got["explained_variance"] == pytest.approx(
        explained_variance(v, x, mask), rel=1e-6
    )  # float32 vs float64 sums


@pytest.mark.parametrize(
    "extra",
    [
        ["--reward_norm", "running", "--whiten_rewards", "true"],
        ["--kl_control", "adaptive", "--num_minibatches", "2", "--micro_batch_size", "2"],
    ],
)
def test_ppo_runs_over_two_processes(tmp_path, tiny_policy_dir, prompt_file, extra):
    """The ranks end with the same weights, optimiser state, KL coefficient and reward statistics."""
    out = tmp_path / "ppo"
    r = run_cli_with_rank_digests(
        args(
            "ppo",
            tiny_policy_dir,
            prompt_file,
            out,
            "--max_steps",
            "2",
            "--batch_size",
            "8",
            "--ppo_epochs",
            "2",
            *extra,
        ),
        tmp_path / "d",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    _same_state_on_both_ranks(tmp_path / "d")
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows] == [1, 2] and all("explained_variance" in x and "kl_coef" in x for x in rows)
    assert (out / "model" / "model.safetensors").is_file()
