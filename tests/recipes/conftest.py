"""Tiny models saved as Hugging Face folders, and small synthetic data files, for recipe tests."""

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ..kill_after_step import SCRIPT as KILL_AFTER_STEP

WORDS = (
    "the cat dog bird sat ran on under a mat log tree happy sad quick slow red blue green "
    "big small old new good bad sun moon star sky sea land"
).split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    from rlhfkit.models import tiny_tokenizer

    rng = random.Random(0)
    tok = tiny_tokenizer([sentence(rng, 12) for _ in range(300)], vocab_size=300)
    out = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    from transformers import AutoTokenizer

    from rlhfkit.models import tiny_causal_lm

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    model = tiny_causal_lm(tok, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    out = tmp_path_factory.mktemp("policy")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_encoder_rm_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    from transformers import AutoTokenizer

    from rlhfkit.models import tiny_reward_model

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    model = tiny_reward_model(tok, kind="encoder", hidden_size=32, num_layers=2, seed=0)
    out = tmp_path_factory.mktemp("rm")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def sft_file(tmp_path_factory) -> Path:
    """Demonstrations with a learnable rule: a fixed phrase, then the prompt's last word."""
    rng = random.Random(1)
    rows = []
    for _ in range(48):
        prompt = sentence(rng, 5)
        last = prompt.split()[-1]
        rows.append({"prompt": prompt, "completion": f" so the answer is {last} ."})
    return write_jsonl(tmp_path_factory.mktemp("sft") / "demos.jsonl", rows)


@pytest.fixture(scope="session")
def pair_file(tmp_path_factory) -> Path:
    """Preference pairs whose chosen response mentions 'happy' and rejected 'sad'."""
    rng = random.Random(2)
    rows = []
    for _ in range(160):
        prompt = sentence(rng, 4)
        body = sentence(rng, 4)
        rows.append(
            {
                "prompt": prompt,
                "chosen": f" {body} happy {sentence(rng, 2)}",
                "rejected": f" {body} sad {sentence(rng, 2)}",
            }
        )
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", rows)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(
    args: list[str], env_extra: dict | None = None, torchrun: int = 0, timeout: int = 600, kill_after: int | None = None
):
    """Run `rlhfkit ...` in a fresh process (one torch thread), optionally under torchrun;
    ``kill_after``: every process SIGKILLs itself once that training step is done
    (``tests/kill_after_step.py``)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "RLHFKIT_NO_PROGRESS": "1",
        "PYTHONUNBUFFERED": "1",
        **(env_extra or {}),
    }
    entry = ["-m", "rlhfkit.cli"] if kill_after is None else [KILL_AFTER_STEP, str(kill_after)]
    if torchrun:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={torchrun}",
            f"--master_port={free_port()}",
            *entry,
            *args,
        ]
    else:
        cmd = [sys.executable, *entry, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="session")
def tiny_causal_rm_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    from transformers import AutoTokenizer

    from rlhfkit.models import tiny_reward_model

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    model = tiny_reward_model(tok, kind="causal", hidden_size=32, num_layers=2, seed=0)
    out = tmp_path_factory.mktemp("causal_rm")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def prompt_file(tmp_path_factory) -> Path:
    """Short prompts for online-RL recipe tests."""
    rng = random.Random(3)
    rows = [{"prompt": sentence(rng, rng.randint(2, 5))} for _ in range(64)]
    return write_jsonl(tmp_path_factory.mktemp("prompts") / "prompts.jsonl", rows)


@pytest.fixture(scope="session")
def thumbs_file(tmp_path_factory) -> Path:
    """Unpaired thumbs records: completions with 'happy' are thumbs up, with 'sad' thumbs down."""
    rng = random.Random(3)
    rows = []
    for i in range(240):
        good = i % 2 == 0
        rows.append(
            {
                "prompt": sentence(rng, 4),
                "label": good,
                "completion": f" {sentence(rng, 4)} {'happy' if good else 'sad'} {sentence(rng, 2)}",
            }
        )
    return write_jsonl(tmp_path_factory.mktemp("thumbs") / "thumbs.jsonl", rows)


def assert_resume_exact(
    tmp_path: Path,
    make_args,
    algo: str,
    policy,
    prompts,
    common: list[str],
    kill_after: int,
    checkpoint: int,
    torchrun: int = 0,
    damage=None,
) -> tuple[Path, Path]:
    """A run SIGKILLed after step ``kill_after`` and started again (resuming from
    ``checkpoint-<checkpoint>``) ends with the weights and the metrics (timings aside) of a run
    left alone; ``torchrun``: over that many processes. ``damage(checkpoint folder)``, when given,
    damages that checkpoint before the restart and returns the one warning line the restarted run
    must print (it then resumes from an older one). Returns both output folders."""
    import json
    import signal

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    r = run_cli(make_args(algo, policy, prompts, straight, *common), torchrun=torchrun)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_cli(make_args(algo, policy, prompts, killed, *common), torchrun=torchrun, kill_after=kill_after)
    assert (r.returncode != 0) if torchrun else (r.returncode == -signal.SIGKILL), (r.returncode, r.stderr[-3000:])
    assert (killed / f"checkpoint-{checkpoint}").is_dir() and not (killed / "model").exists()
    warning = damage(killed / f"checkpoint-{checkpoint}") if damage is not None else None
    r = run_cli(make_args(algo, policy, prompts, killed, *common), torchrun=torchrun)
    assert r.returncode == 0, r.stderr[-3000:]
    warnings = [line for line in r.stderr.splitlines() if line.startswith("rlhfkit: warning: passing over")]
    assert warnings == ([warning] if warning else []), r.stderr[-3000:]  # once, by rank 0 alone
    a, b = load_weights(straight / "model"), load_weights(killed / "model")
    for name in a:
        assert torch.equal(a[name], b[name]), name

    def rows(out):
        return [
            {k: v for k, v in json.loads(l).items() if not k.endswith("_per_s") and k != "time"}
            for l in (out / "metrics.jsonl").read_text().splitlines()
        ]

    assert rows(straight) == rows(killed) and len(rows(killed)) > kill_after
    return straight, killed


def flip_model_bit(previous: int):
    """A `damage` for assert_resume_exact: one flipped bit in the tensor data of the checkpoint's
    model.pt (torch.load would read it without complaint); the run resumes from
    ``checkpoint-<previous>``."""
    from ..conftest import flip_tensor_bit

    def damage(ckpt: Path) -> str:
        flip_tensor_bit(ckpt / "model.pt")
        return (
            f"rlhfkit: warning: passing over damaged {ckpt}: model.pt does not match its sha256 in "
            f"manifest.json (changed after it was written); resuming from checkpoint-{previous}"
        )

    return damage
