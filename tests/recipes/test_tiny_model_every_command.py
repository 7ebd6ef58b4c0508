"""``--model tiny`` (a tiny Llama built from config: ``rlhfkit.models.TINY_MODEL``) works in every
command that takes a model, for a step or two in seconds; a hub name the hub cannot give fails at
once, naming the name and what is accepted."""

import io
import json
import os
import subprocess
import sys
import time

import pytest

from rlhfkit.cli import main

from .conftest import free_port

TRAIN = ["--tensorboard", "false", "--threads", "1"]
ONLINE = [
    "--max_steps",
    "1",
    "--batch_size",
    "4",
    "--micro_batch_size",
    "4",
    "--max_new_tokens",
    "4",
    "--reward",
    "vader",
]
PREFERENCE = [
    "--max_steps",
    "1",
    "--batch_size",
    "4",
    "--micro_batch_size",
    "4",
    "--max_length",
    "48",
    "--max_prompt_length",
    "24",
    "--eval_fraction",
    "0.1",
]
# the loop and the pipeline at --quick sizes, from the pretrained model "tiny" (the command line
# wins over quick's own tiny model) with a tiny reward backbone, one round / one GRPO step
LOOP = [
    "--quick",
    "--init.kind",
    "pretrained",
    "--init.model",
    "tiny",
    "--reward.model",
    "tiny",
    "--rounds",
    "1",
    "--labels_per_round",
    "16",
    "--prompts_per_round",
    "12",
    "--n_eval_prompts",
    "8",
    "--ensemble_size",
    "2",
    "--grpo.max_steps",
    "1",
    "--grpo.batch_size",
    "8",
    "--grpo.micro_batch_size",
    "8",
    "--threads",
    "1",
]
PIPELINE = [
    "--quick",
    "--init.kind",
    "pretrained",
    "--init.model",
    "tiny",
    "--reward.model",
    "tiny",
    "--feedback.n_label_prompts",
    "16",
    "--feedback.n_eval_prompts",
    "8",
    "--feedback.max_pairs",
    "32",
    "--reward.max_steps",
    "1",
    "--reward.batch_size",
    "4",
    "--reward.micro_batch_size",
    "4",
    "--grpo.max_steps",
    "1",
    "--grpo.batch_size",
    "8",
    "--grpo.micro_batch_size",
    "8",
    "--eval.n_boot",
    "20",
    "--threads",
    "1",
]


def argv_for(command: str, data: dict, out: str) -> list[str]:
    """The command line of ``command`` on the tiny model, writing under ``out``."""
    sft, pairs, prompts, thumbs = (str(data[k]) for k in ("sft", "pairs", "prompts", "thumbs"))
    return {
        "sft": [
            "sft",
            "--model",
            "tiny",
            "--data",
            sft,
            "--output_dir",
            out,
            "--max_steps",
            "1",
            "--batch_size",
            "4",
            "--micro_batch_size",
            "4",
            "--max_length",
            "32",
            *TRAIN,
        ],
        "reward train": [
            "reward",
            "train",
            "--model",
            "tiny",
            "--data",
            pairs,
            "--output_dir",
            out,
            "--max_steps",
            "1",
            "--batch_size",
            "4",
            "--micro_batch_size",
            "4",
            "--max_length",
            "32",
            *TRAIN,
        ],
        "reward discriminator": [
            "reward",
            "discriminator",
            "--policy",
            "tiny",
            "--reward.model",
            "tiny",
            "--data",
            sft,
            "--max_demos",
            "12",
            "--max_new_tokens",
            "4",
            "--output_dir",
            out,
            "--reward.max_steps",
            "1",
            "--reward.batch_size",
            "4",
            "--reward.micro_batch_size",
            "4",
            "--reward.max_length",
            "32",
            "--reward.tensorboard",
            "false",
            "--threads",
            "1",
        ],
        "ppo": ["ppo", "--model", "tiny", "--prompts", prompts, "--output_dir", out, *ONLINE, *TRAIN],
        "grpo": [
            "grpo",
            "--model",
            "tiny",
            "--prompts",
            prompts,
            "--output_dir",
            out,
            *ONLINE,
            "--num_generations",
            "2",
            *TRAIN,
        ],
        "rloo": [
            "rloo",
            "--model",
            "tiny",
            "--prompts",
            prompts,
            "--output_dir",
            out,
            *ONLINE,
            "--num_generations",
            "2",
            *TRAIN,
        ],
        "reinforce": ["reinforce", "--model", "tiny", "--prompts", prompts, "--output_dir", out, *ONLINE, *TRAIN],
        "ilql": [
            "ilql",
            "--model",
            "tiny",
            "--data",
            pairs,
            "--kind",
            "pairs",
            "--max_records",
            "24",
            "--epochs",
            "1",
            "--batch_size",
            "8",
            "--eval_prompts",
            "2",
            "--max_new_tokens",
            "4",
            "--output_dir",
            out,
            "--threads",
            "1",
        ],
        "dpo": ["dpo", "--model", "tiny", "--data", pairs, "--output_dir", out, *PREFERENCE, *TRAIN],
        "kto": ["kto", "--model", "tiny", "--data", thumbs, "--output_dir", out, *PREFERENCE, *TRAIN],
        "eval": [
            "eval",
            "--policy",
            "tiny",
            "--reference",
            "tiny",
            "--judge",
            "vader",
            "--prompts",
            prompts,
            "--max_prompts",
            "4",
            "--max_new_tokens",
            "4",
            "--n_boot",
            "20",
            "--output",
            out,
            "--threads",
            "1",
        ],
        "eval leaderboard": [
            "eval",
            "leaderboard",
            "--models",
            "a=tiny,b=tiny",
            "--judge",
            "length",
            "--prompts",
            prompts,
            "--max_prompts",
            "4",
            "--max_new_tokens",
            "4",
            "--n_boot",
            "20",
            "--output",
            out,
            "--threads",
            "1",
        ],
        "chat": ["chat", "--model", "tiny", "--max_new_tokens", "4", "--seed", "0", "--threads", "1"],
        "loop": ["loop", *LOOP, "--prompts", prompts, "--output_dir", out],
        "pipeline": ["pipeline", *PIPELINE, "--feedback.prompts", prompts, "--output_dir", out],
    }[command]


@pytest.fixture
def tiny_cache(tmp_path_factory, monkeypatch):
    """The tiny model's cache folder, shared by the tests of this session (built once)."""
    folder = tmp_path_factory.getbasetemp() / "rlhfkit_cache"
    monkeypatch.setenv("RLHFKIT_CACHE", str(folder))
    return folder


@pytest.fixture
def data(sft_file, pair_file, prompt_file, thumbs_file):
    return {"sft": sft_file, "pairs": pair_file, "prompts": prompt_file, "thumbs": thumbs_file}


IN_PROCESS = [
    "sft",
    "reward train",
    "reward discriminator",
    "ppo",
    "grpo",
    "rloo",
    "reinforce",
    "ilql",
    "dpo",
    "kto",
    "eval",
    "eval leaderboard",
    "chat",
    "loop",
    "pipeline",
]


@pytest.mark.parametrize("command", IN_PROCESS)
def test_every_command_runs_on_the_tiny_model(command, tmp_path, data, tiny_cache, monkeypatch, capsys):
    """Each command that takes a model runs a step or two on ``tiny``, which every one of them
    loads from the same folder (built from config once)."""
    from rlhfkit.models import tiny_model_folder

    monkeypatch.setenv("RLHFKIT_NO_PROGRESS", "1")
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello there\n/quit\n"))  # chat's conversation
    out = tmp_path / "out"
    t = time.perf_counter()
    code = main(argv_for(command, data, str(out)))
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    assert time.perf_counter() - t < 120
    assert (tiny_model_folder() / "config.json").is_file() and tiny_model_folder().parent == tiny_cache
    if command == "chat":
        assert "chatting with tiny" in captured.out and "1 replies" in captured.out
    elif command in ("eval", "eval leaderboard"):
        assert any(out.iterdir())
    elif command in ("loop", "pipeline"):
        state = out / ("loop_state.json" if command == "loop" else "pipeline.json")
        assert state.is_file()
        if command == "pipeline":  # the initial policy is the one named, not quick's model built from config
            init = json.loads((out / "init" / "stage.json").read_text())["outputs"]
            assert init["model"] == "tiny"
    else:
        assert (out / "model").is_dir() or (out / "heads.safetensors").is_file(), sorted(p.name for p in out.iterdir())


def test_reward_eval_refuses_the_untrained_tiny_model(capsys, tiny_cache, pair_file):
    """``reward eval`` scores a trained reward model: ``tiny`` is a language model whose score
    head would be random, so it is refused (train one first: ``reward train --model tiny``)."""
    code = main(["reward", "eval", "--model", "tiny", "--data", str(pair_file)])
    err = capsys.readouterr().err
    assert code == 2 and "tiny: not a trained reward model" in err and "Traceback" not in err, err


def _start(args: list[str], cache) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "RLHFKIT_CACHE": str(cache)}
    return subprocess.Popen(
        [sys.executable, "-m", "rlhfkit.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_healthy(proc: subprocess.Popen, url: str) -> None:
    import httpx

    for _ in range(600):
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.1)
    raise AssertionError("the server did not start")


def _stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.kill()
    proc.wait(30)
    text = proc.stdout.read()
    proc.stdout.close()
    return text


@pytest.mark.parametrize("command", ["serve", "feedback serve"])
def test_the_servers_answer_with_the_tiny_model(command, tmp_path, tiny_cache):
    """``serve --model tiny`` answers a chat completion; ``feedback serve --policy tiny`` starts
    with the tiny policy loaded (it loads the policy before it listens)."""
    pytest.importorskip("fastapi")
    import httpx

    port = free_port()
    args = (
        ["serve", "--model", "tiny", "--port", str(port), "--threads", "1", "--max_new_tokens", "4"]
        if command == "serve"
        else ["feedback", "serve", "--policy", "tiny", "--db", str(tmp_path / "fb.db"), "--port", str(port)]
    )
    proc = _start(args, tiny_cache)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_healthy(proc, base + ("/health" if command == "serve" else "/healthz"))
        if command == "serve":
            reply = httpx.post(
                base + "/v1/chat/completions",
                timeout=60,
                json={"messages": [{"role": "user", "content": "hi"}], "seed": 0},
            ).json()
            assert reply["model"] == "tiny" and reply["choices"][0]["message"]["role"] == "assistant"
    finally:
        log = _stop(proc)
    assert "Traceback" not in log, log
    if command == "feedback serve":
        assert "rlhfkit feedback: live generation by tiny\n" in log, log


def test_a_hub_name_the_hub_cannot_give_fails_at_once_naming_it(tmp_path):
    """Not a local path, not an alias, not cached, and the hub does not give it (unreachable here,
    or no such model where it is reachable): one request, then the error names the model and
    what is accepted, in seconds (transformers' own download retries for about 50 s)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(OMP_NUM_THREADS="1", HF_HOME=str(tmp_path / "hf"))  # an empty local cache
    sft = tmp_path / "d.jsonl"
    sft.write_text("".join(f'{{"prompt": "q{i}", "completion": " b"}}\n' for i in range(16)), encoding="utf-8")
    t = time.perf_counter()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhfkit.cli",
            "sft",
            "--model",
            "someorg/not-a-model",
            "--data",
            str(sft),
            "--output_dir",
            str(tmp_path / "o"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.perf_counter() - t
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "could not load 'someorg/not-a-model'" in r.stderr and "'tiny'" in r.stderr, r.stderr
    assert seconds < 20, seconds  # the interpreter, torch and transformers start included
