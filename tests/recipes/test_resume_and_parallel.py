"""Exact resume after SIGKILL (from the newest intact checkpoint), and data-parallel /
accumulation invariance, on tiny models."""

import json
import signal

import pytest
import torch

from .conftest import assert_resume_exact, flip_model_bit, load_weights, run_cli


def sft_args(policy, data, out, *extra):
    return [
        "sft",
        "--model",
        str(policy),
        "--data",
        str(data),
        "--output_dir",
        str(out),
        "--epochs",
        "2",
        "--batch_size",
        "4",
        "--micro_batch_size",
        "2",
        "--learning_rate",
        "3e-3",
        "--eval_fraction",
        "0.125",
        "--max_length",
        "64",
        "--threads",
        "1",
        "--tensorboard",
        "false",
        *extra,
    ]


def losses(out):
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def test_sft_sigkill_and_resume_gives_identical_weights(tmp_path, tiny_policy_dir, sft_file):
    # 42 training examples / batch 4 = 10 steps per epoch, 20 steps over 2 epochs.
    straight = tmp_path / "straight"
    r = run_cli(sft_args(tiny_policy_dir, sft_file, straight, "--save_every", "4"))
    assert r.returncode == 0, r.stderr[-3000:]

    killed = tmp_path / "killed"
    # killed after step 14 (last checkpoint at 12): the resumed run redoes 13 and 14,
    # crossing the epoch boundary at step 10 happened before the kill.
    r = run_cli(sft_args(tiny_policy_dir, sft_file, killed, "--save_every", "4"), kill_after=14)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-3000:])
    assert (killed / "checkpoint-12").is_dir() and not (killed / "model").exists()
    r = run_cli(sft_args(tiny_policy_dir, sft_file, killed, "--save_every", "4"))
    assert r.returncode == 0, r.stderr[-3000:]

    a, b = load_weights(straight / "model"), load_weights(killed / "model")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert losses(straight) == losses(killed)
    assert len(losses(killed)) == 20


def sft_run_args(_algo, policy, data, out, *extra):  # assert_resume_exact's argument order
    return sft_args(policy, data, out, *extra)


@pytest.mark.parametrize("torchrun", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_sft_resumes_past_a_bit_flipped_checkpoint_to_identical_weights(tmp_path, tiny_policy_dir, sft_file, torchrun):
    """Killed after step 6 with checkpoints 4 and 6, one bit of checkpoint-6's weights flipped: the
    restart says so in one line, resumes from checkpoint-4 and ends with the weights and losses of
    a run left alone; over two processes every rank resumes from checkpoint-4 (rank 0 chooses)."""
    assert_resume_exact(
        tmp_path,
        sft_run_args,
        "sft",
        tiny_policy_dir,
        sft_file,
        ["--max_steps", "8", "--save_every", "2"],
        kill_after=6,
        checkpoint=6,
        torchrun=torchrun,
        damage=flip_model_bit(previous=4),
    )


def test_sft_with_no_intact_checkpoint_stops_with_an_error_naming_the_damage(tmp_path, tiny_policy_dir, sft_file):
    out = tmp_path / "run"
    args = sft_args(tiny_policy_dir, sft_file, out, "--max_steps", "4", "--save_every", "2")
    r = run_cli(args, kill_after=2)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-3000:])
    model = out / "checkpoint-2" / "model.pt"
    size = model.stat().st_size
    model.write_bytes(model.read_bytes()[: size // 3])
    r = run_cli(args)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert r.stderr.splitlines()[-1] == (
        f"rlhfkit sft: error: {out}: no intact checkpoint to resume from. checkpoint-2: model.pt is {size // 3} "
        f"bytes, manifest.json says {size}. Delete them, or use another --output_dir, to start afresh"
    )
    assert model.stat().st_size == size // 3 and not (out / "model").exists()  # nothing removed, nothing trained


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_equal_one_process_same_global_batch(tmp_path, tiny_policy_dir, sft_file, parallel):
    one = tmp_path / "one"
    two = tmp_path / "two"
    extra = ["--max_steps", "6", "--save_every", "0"]
    r = run_cli(sft_args(tiny_policy_dir, sft_file, one, *extra))
    assert r.returncode == 0, r.stderr[-3000:]
    # 2 processes x micro-batch 2 = global batch 4, gloo backend on CPU; with fsdp the weights,
    # gradients and optimiser state are sharded over the two processes (FSDP2), and a checkpoint
    # at step 3 gathers them
    r = run_cli(
        sft_args(tiny_policy_dir, sft_file, two, *extra[:2], "--save_every", "3", "--parallel", parallel), torchrun=2
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    a, b = load_weights(one / "model"), load_weights(two / "model")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    for (s1, l1), (s2, l2) in zip(losses(one), losses(two)):
        assert s1 == s2 and l1 == pytest.approx(l2, rel=1e-5)


def test_accumulation_invariance_in_process(tmp_path, tiny_policy_dir, sft_file):
    """batch 8 x accumulation 1 == batch 8 as 8 micro-batches of 1 (token-weighted mean)."""
    from rlhfkit.recipes.sft import SFTConfig, run
    from rlhfkit.training.config import load_config

    results = {}
    for micro in (8, 1):
        out = tmp_path / f"micro{micro}"
        cfg = load_config(SFTConfig, None, sft_args(tiny_policy_dir, sft_file, out, "--max_steps", "3")[1:])
        cfg.batch_size, cfg.micro_batch_size = 8, micro
        run(cfg)
        results[micro] = load_weights(out / "model")
    for name in results[8]:
        torch.testing.assert_close(results[8][name], results[1][name], rtol=1e-5, atol=1e-6, msg=name)


def test_reward_two_processes_equal_one_process(tmp_path, tiny_causal_rm_dir, pair_file):
    """A causal-LM reward model under DDP (2 gloo processes) makes the same updates as 1 process."""

    def args(out):
        return [
            "reward",
            "train",
            "--model",
            str(tiny_causal_rm_dir),
            "--data",
            str(pair_file),
            "--output_dir",
            str(out),
            "--max_steps",
            "4",
            "--batch_size",
            "8",
            "--micro_batch_size",
            "2",
            "--learning_rate",
            "3e-3",
            "--max_length",
            "48",
            "--threads",
            "1",
            "--tensorboard",
            "false",
        ]

    r = run_cli(args(tmp_path / "one"))
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_cli(args(tmp_path / "two"), torchrun=2)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    a, b = load_weights(tmp_path / "one" / "model"), load_weights(tmp_path / "two" / "model")
    moved = load_weights(tiny_causal_rm_dir)
    assert any(not torch.equal(a[k], moved[k]) for k in a)  # training changed the weights
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_weighted_pairs_over_two_processes_equal_one_process(tmp_path, tiny_causal_rm_dir, pair_file):
    """Record weights under DDP (0, 0.1, 1 and 0.9 over 16 pairs): the ranks' shares of a global
    batch weigh differently, a micro-batch may weigh 0, and the normaliser is the global sum of
    weights on every rank, so 2 processes make the updates of 1."""
    rows = [json.loads(line) for line in pair_file.read_text().splitlines()][:16]
    weights = [0.0, 0.1, 1.0, 0.9] * 4
    data = tmp_path / "weighted.jsonl"
    data.write_text("".join(json.dumps({**r, "weight": w}) + "\n" for r, w in zip(rows, weights)))

    def args(out):
        return [
            "reward",
            "train",
            "--model",
            str(tiny_causal_rm_dir),
            "--data",
            str(data),
            "--eval_fraction",
            "0",
            "--output_dir",
            str(out),
            "--max_steps",
            "4",
            "--batch_size",
            "8",
            "--micro_batch_size",
            "2",
            "--learning_rate",
            "3e-3",
            "--max_length",
            "48",
            "--threads",
            "1",
            "--tensorboard",
            "false",
            "--linear_probe_steps",
            "0",
        ]

    r = run_cli(args(tmp_path / "one"))
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_cli(args(tmp_path / "two"), torchrun=2)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    a, b = load_weights(tmp_path / "one" / "model"), load_weights(tmp_path / "two" / "model")
    for name in a:  # AdamW turns float noise where a gradient is near 0 into about 1e-6 of a step
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
    for (s1, l1), (s2, l2) in zip(losses(tmp_path / "one"), losses(tmp_path / "two")):
        assert s1 == s2 and l1 == pytest.approx(l2, rel=1e-5)
