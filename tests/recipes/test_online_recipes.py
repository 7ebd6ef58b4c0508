"""Online RL recipes (ppo, grpo, rloo, reinforce) on tiny models: hand-derived advantages and
losses, a rule reward that rises, batch-split invariance, LoRA reference, exact resume."""

import json
import math

import pytest
import torch

from rlhfkit.core.losses import ppo_policy_loss
from rlhfkit.core.kl import kl_k3
from rlhfkit.core.losses import token_weights
from rlhfkit.recipes import grpo, ppo, reinforce, rloo
from rlhfkit.recipes.online_inputs import prompts_for_step
from rlhfkit.rollout import repeat_each
from rlhfkit.training.config import load_config

from .conftest import assert_resume_exact, flip_model_bit, load_weights

RECIPES = {
    "ppo": ppo.PPOConfig,
    "grpo": grpo.GRPOConfig,
    "rloo": rloo.RLOOConfig,
    "reinforce": reinforce.ReinforceConfig,
}


def args(algo, policy, prompts, out, *extra):
    return [
        algo,
        "--model",
        str(policy),
        "--prompts",
        str(prompts),
        "--output_dir",
        str(out),
        "--reward",
        "frequency:e",
        "--max_new_tokens",
        "8",
        "--batch_size",
        "16",
        "--micro_batch_size",
        "8",
        "--learning_rate",
        "3e-3",
        "--threads",
        "1",
        "--tensorboard",
        "false",
        "--sample_every",
        "0",
        *extra,
    ]


def run_inproc(algo, policy, prompts, out, *extra):
    module = {"ppo": ppo, "grpo": grpo, "rloo": rloo, "reinforce": reinforce}[algo]
    cfg = load_config(RECIPES[algo], None, args(algo, policy, prompts, out, *extra)[1:])
    module.run(cfg)
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ hand-derived numbers
def test_grpo_and_dr_grpo_advantages_by_hand():
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0])  # two groups of k = 2
    # group means 1.5 and 4.5; unbiased stds sqrt(0.5) and sqrt(4.5); eps 1e-4 (TRL)
    expect = torch.tensor(
        [
            -0.5 / (math.sqrt(0.5) + 1e-4),
            0.5 / (math.sqrt(0.5) + 1e-4),
            -1.5 / (math.sqrt(4.5) + 1e-4),
            1.5 / (math.sqrt(4.5) + 1e-4),
        ]
    )
    torch.testing.assert_close(grpo.group_advantages(scores, 2, "grpo"), expect)
    assert grpo.group_advantages(scores, 2, "dr_grpo").tolist() == [-0.5, 0.5, -1.5, 1.5]


def test_rloo_and_reinforce_advantages_by_hand():
    # k = 3: [1, 2, 6] -> 1 - 4, 2 - 3.5, 6 - 1.5
    assert rloo.leave_one_out(torch.tensor([1.0, 2.0, 6.0]), 3).tolist() == [-3.0, -1.5, 4.5]
    adv, b = reinforce.running_baseline_step(1.0, torch.tensor([2.0, 4.0]), alpha=0.5)
    assert adv.tolist() == [1.0, 3.0] and b == 2.0  # 1 + 0.5 * (3 - 1)


def test_token_weights_by_hand():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    for mode, expect in (
        ("token", [[1 / 3, 1 / 3, 0], [1 / 3, 0, 0]]),
        ("sequence", [[0.25, 0.25, 0], [0.5, 0, 0]]),
        ("constant", [[1 / 6, 1 / 6, 0], [1 / 6, 0, 0]]),
    ):
        torch.testing.assert_close(token_weights(mask, mode, 3), torch.tensor(expect))


def test_grpo_token_loss_by_hand():
    """One sequence, two tokens, A = 1, clip 0.2, beta 0.1, sequence aggregation (weights 1/2).
    ratios 2 and 1: clipped terms max(-2, -1.2) = -1.2 and -1; mean -1.1.
    k3 with log r = ln .25 - ln .5 = -ln 2: 0.5 - 1 + ln 2; with log r = ln 2: 2 - 1 - ln 2; mean 0.25."""
    logp = torch.log(torch.tensor([[0.5, 0.25]]))
    old = torch.log(torch.tensor([[0.25, 0.25]]))
    ref = torch.log(torch.tensor([[0.25, 0.5]]))
    mask = torch.ones(1, 2, dtype=torch.bool)
    w = token_weights(mask, "sequence", 8)
    # the recipes scale the advantage by the (positive) token weight and sum (normaliser 1)
    loss, st = ppo_policy_loss(logp, old, torch.ones(1, 2) * w, mask, 0.2, normaliser=1.0)
    assert loss.item() == pytest.approx(-1.1)
    assert st["clipfrac"].item() == 0.5
    kl_term = (kl_k3(logp, ref) * w).sum()
    assert kl_term.item() == pytest.approx(0.25, abs=1e-6)
    assert (loss + 0.1 * kl_term).item() == pytest.approx(-1.075)


def test_online_prompts_come_from_a_named_pool(shared_data):
    """``--prompts`` takes every named pool (``data.shared_sets.PROMPT_POOLS``): chat-first-turns
    gives the pool's first human turns, ``max_prompts`` of them drawn by the run's seed."""
    from rlhfkit.data.shared_sets import load_named_prompts
    from rlhfkit.recipes.online_inputs import run_prompts

    cfg = load_config(grpo.GRPOConfig, None, {"prompts": "chat-first-turns", "max_prompts": 6, "seed": 4})
    assert run_prompts(cfg) == [p.prompt for p in load_named_prompts("chat-first-turns", limit=6, seed=4)]
    reviews = run_prompts(load_config(grpo.GRPOConfig, None, {"max_prompts": 3, "prompt_words": 5}))
    assert len(reviews) == 3 and all(len(p.split()) == 5 for p in reviews)


def test_prompt_order_is_a_function_of_seed_and_step():
    prompts = [f"p{i}" for i in range(10)]
    a = [prompts_for_step(prompts, s, 4, seed=3) for s in range(4)]
    assert a == [prompts_for_step(prompts, s, 4, seed=3) for s in range(4)]
    assert sorted(a[0] + a[1]) == sorted(set(a[0] + a[1]))  # no repeat inside an epoch (2 steps of 4)
    assert repeat_each(["a", "b"], 2) == ["a", "a", "b", "b"]


# ------------------------------------------------------------------ learning
LEARN = {
    "grpo": ["--num_generations", "4", "--max_steps", "80"],
    "rloo": ["--num_generations", "4", "--max_steps", "120", "--kl_coef", "0.01"],
    "ppo": ["--max_steps", "80", "--learning_rate", "1e-3"],
    "reinforce": ["--max_steps", "120", "--kl_coef", "0.01"],
}


@pytest.mark.parametrize("algo", [a if a == "grpo" else pytest.param(a, marks=pytest.mark.slow) for a in LEARN])
def test_rule_reward_rises(tmp_path, tiny_policy_dir, prompt_file, algo):
    rows = run_inproc(algo, tiny_policy_dir, prompt_file, tmp_path / algo, "--resume", "false", *LEARN[algo])
    r = [x["reward"] for x in rows]
    first, last = sum(r[:15]) / 15, sum(r[-15:]) / 15
    assert last > 2 * first and last - first > 0.04, (algo, first, last)
    assert abs(rows[0]["kl"]) < 1e-4  # the first rollout comes from the reference itself
    for key in ("entropy", "approx_kl", "clipfrac", "response_length", "eos_rate", "tokens_per_s", "grad_norm"):
        assert key in rows[-1], key
    assert (tmp_path / algo / "model" / "model.safetensors").exists()


# ------------------------------------------------------------------ invariance and LoRA
@pytest.mark.parametrize(
    "algo,extra,micros",
    [
        ("grpo", ["--num_generations", "4", "--ppo_epochs", "2"], ("8", "4")),  # minibatch 8: 8 x 1 vs 4 x 2
        ("ppo", ["--ppo_epochs", "2", "--num_minibatches", "2"], ("4", "2")),  # minibatch 4: 4 x 1 vs 2 x 2
    ],
)
def test_batch_split_invariance(tmp_path, tiny_policy_dir, prompt_file, algo, extra, micros):
    """The same update however a minibatch is split into micro-batches (minibatch-global normalisers)."""
    weights = []
    for micro in micros:
        out = tmp_path / f"{algo}{micro}"
        run_inproc(
            algo,
            tiny_policy_dir,
            prompt_file,
            out,
            "--batch_size",
            "8",
            "--max_steps",
            "3",
            "--resume",
            "false",
            *extra,
            "--micro_batch_size",
            micro,
        )
        weights.append(load_weights(out / "model"))
    a, b = weights
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6, msg=name)


def test_rloo_kl_from_the_update_pass_equals_a_separate_behaviour_pass(
    tmp_path, tiny_policy_dir, prompt_file, monkeypatch
):
    """Micro-batches of whole groups (4 of k = 4): the KL-penalised reward is computed from the update
    pass's own log-probs, no behaviour forward; micro-batches of 2 split the groups and take the
    separate pass. Same weights, rewards and KL; and the fused run really skips the pass."""
    from rlhfkit.recipes import online_inputs

    passes = []
    original = online_inputs.rollout

    def counted(*a, **k):
        passes.append(k.get("behaviour_logprobs", True))
        return original(*a, **k)

    monkeypatch.setattr(online_inputs, "rollout", counted)
    extra = [
        "--batch_size",
        "8",
        "--max_steps",
        "3",
        "--num_generations",
        "4",
        "--kl_coef",
        "0.5",
        "--learning_rate",
        "1e-2",
        "--resume",
        "false",
    ]
    fused = run_inproc("rloo", tiny_policy_dir, prompt_file, tmp_path / "fused", *extra, "--micro_batch_size", "4")
    assert passes == [False] * 3
    passes.clear()
    split = run_inproc("rloo", tiny_policy_dir, prompt_file, tmp_path / "split", *extra, "--micro_batch_size", "2")
    assert passes == [True] * 3
    assert fused[-1]["kl"] != 0.0
    for a, b in zip(fused, split):
        for key in ("reward", "rlhf_reward", "kl", "loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    # float rounding differs between the two micro-batchings; Adam at lr 1e-2 turns it into a few
    # 1e-6 of weight (a 1e-4 fraction of one step)
    wa, wb = load_weights(tmp_path / "fused" / "model"), load_weights(tmp_path / "split" / "model")
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_generation_engines_give_the_same_run(tmp_path, tiny_policy_dir, prompt_file, algo):
    """``generation_engine`` native (the default for this Llama) and hf (``model.generate``) draw the
    same samples from the same seed (tests/rollout/test_native.py), so the runs agree."""
    extra = [
        "--batch_size",
        "8",
        "--max_steps",
        "2",
        "--resume",
        "false",
        *(["--num_generations", "4"] if algo == "grpo" else []),
    ]
    rows = {
        e: run_inproc(algo, tiny_policy_dir, prompt_file, tmp_path / e, *extra, "--generation_engine", e)
        for e in ("native", "hf")
    }
    for a, b in zip(rows["native"], rows["hf"]):
        for key in ("reward", "kl", "entropy", "response_length"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key


def test_lora_reference_is_the_adapter_switched_off(tmp_path, tiny_policy_dir, prompt_file):
    rows = run_inproc(
        "grpo",
        tiny_policy_dir,
        prompt_file,
        tmp_path / "lora",
        "--num_generations",
        "4",
        "--max_steps",
        "3",
        "--lora.r",
        "4",
        "--learning_rate",
        "1e-2",
        "--resume",
        "false",
    )
    assert abs(rows[0]["kl"]) < 1e-5 and rows[-1]["kl"] != 0.0
    assert (tmp_path / "lora" / "model" / "model.safetensors").exists()


def test_ref_model_is_the_kl_reference(tmp_path, tiny_policy_dir, prompt_file):
    """``ref_model``: a policy trained on from an earlier run keeps its KL to the model it came
    from. The reference loaded from the policy's own folder is the frozen copy (same run); from
    the starting model, the first step already measures the drift of the earlier run."""
    extra = ["--num_generations", "4", "--batch_size", "8", "--resume", "false"]
    run_inproc(
        "grpo", tiny_policy_dir, prompt_file, tmp_path / "first", *extra, "--max_steps", "3", "--learning_rate", "1e-2"
    )
    later = tmp_path / "first" / "model"
    own = run_inproc("grpo", later, prompt_file, tmp_path / "own", *extra, "--max_steps", "2")
    same = run_inproc(
        "grpo", later, prompt_file, tmp_path / "same", *extra, "--max_steps", "2", "--ref_model", str(later)
    )
    untimed = [
        [{k: v for k, v in r.items() if k != "time" and not k.endswith("_per_s")} for r in rows] for rows in (own, same)
    ]
    assert untimed[0] == untimed[1] and len(own) == 2
    assert abs(own[0]["kl"]) < 1e-5
    anchored = run_inproc(
        "grpo",
        later,
        prompt_file,
        tmp_path / "anchored",
        *extra,
        "--max_steps",
        "2",
        "--ref_model",
        str(tiny_policy_dir),
    )
    assert anchored[0]["kl"] > 0.05 and anchored[0]["reward"] == own[0]["reward"]  # same samples, other reference


def test_ref_model_with_another_tokenizer_is_refused(tmp_path, tiny_policy_dir, prompt_file):
    from rlhfkit.models import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer(["completely different words here"] * 20, vocab_size=280)
    other = tmp_path / "other"
    tiny_causal_lm(tok, hidden_size=16, num_layers=1, num_heads=2, seed=0).save_pretrained(other)
    tok.save_pretrained(other)
    with pytest.raises(ValueError, match="field 'ref_model'.*another tokenizer"):
        run_inproc(
            "grpo",
            tiny_policy_dir,
            prompt_file,
            tmp_path / "run",
            "--num_generations",
            "4",
            "--max_steps",
            "1",
            "--ref_model",
            str(other),
        )


@pytest.mark.parametrize("algo", ["grpo", "ppo", "rloo", "reinforce"])
def test_max_minutes_ends_the_run_on_a_whole_step(tmp_path, tiny_policy_dir, prompt_file, algo):
    """A wall-clock budget far shorter than one step: the first step still completes, is logged
    and the model is saved; no second step starts."""
    extra = ["--num_generations", "4"] if algo in ("grpo", "rloo") else []
    rows = run_inproc(
        algo,
        tiny_policy_dir,
        prompt_file,
        tmp_path / algo,
        "--batch_size",
        "8",
        "--max_steps",
        "50",
        "--max_minutes",
        "1e-6",
        "--resume",
        "false",
        *extra,
    )
    assert [r["step"] for r in rows if "reward" in r] == [1]
    assert (tmp_path / algo / "model" / "model.safetensors").exists()


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_gradient_checkpointing_gives_the_same_update(tmp_path, tiny_policy_dir, prompt_file, monkeypatch, algo):
    """Online recipes honour ``gradient_checkpointing``: the training forward of every layer runs
    again in the backward pass (PPO: policy and value model), generation and the no-grad passes
    do not, and the trained weights equal those of a run without it."""
    from transformers.models.llama import modeling_llama

    calls = []
    original = modeling_llama.LlamaMLP.forward  # inside a layer, below the checkpoint wrapper

    def counted(self, *a, **k):
        calls.append(torch.is_grad_enabled())
        return original(self, *a, **k)

    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", counted)
    extra = [
        "--batch_size",
        "8",
        "--max_steps",
        "2",
        "--resume",
        "false",
        *(["--num_generations", "4"] if algo == "grpo" else ["--ppo_epochs", "2"]),
    ]
    run_inproc(algo, tiny_policy_dir, prompt_file, tmp_path / "plain", *extra)
    plain_grad = sum(calls)
    calls.clear()
    run_inproc(algo, tiny_policy_dir, prompt_file, tmp_path / "ckpt", *extra, "--gradient_checkpointing", "true")
    # each forward with grad enabled is run once more in the backward pass (recompute under grad)
    assert sum(calls) == 2 * plain_grad > 0, (plain_grad, sum(calls))
    a, b = load_weights(tmp_path / "plain" / "model"), load_weights(tmp_path / "ckpt" / "model")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


# ------------------------------------------------------------------ exact resume after SIGKILL
@pytest.mark.parametrize(
    "algo,extra",
    [
        ("ppo", ["--kl_control", "adaptive", "--kl_horizon", "100", "--reward_norm", "running", "--ppo_epochs", "2"]),
        pytest.param("reinforce", ["--baseline", "running"], marks=pytest.mark.slow),
        pytest.param("grpo", ["--num_generations", "4", "--sample_every", "2"], marks=pytest.mark.slow),
    ],
)
def test_sigkill_resume_is_exact(tmp_path, tiny_policy_dir, prompt_file, algo, extra):
    straight, killed = assert_resume_exact(
        tmp_path,
        args,
        algo,
        tiny_policy_dir,
        prompt_file,
        ["--max_steps", "6", "--save_every", "2", "--batch_size", "8", *extra],
        kill_after=5,
        checkpoint=4,
    )
    if "--sample_every" in extra:
        assert (straight / "samples.jsonl").read_text() == (killed / "samples.jsonl").read_text()
        assert "## step 6" in (killed / "samples.md").read_text()


def test_grpo_resumes_past_a_bit_flipped_checkpoint_to_identical_weights(tmp_path, tiny_policy_dir, prompt_file):
    """Killed after step 4 with checkpoints 2 and 4, one bit of checkpoint-4's weights flipped: the
    restart says so in one line, resumes from checkpoint-2 and ends as a run left alone."""
    assert_resume_exact(
        tmp_path,
        args,
        "grpo",
        tiny_policy_dir,
        prompt_file,
        ["--max_steps", "6", "--save_every", "2", "--batch_size", "8", "--num_generations", "4"],
        kill_after=4,
        checkpoint=4,
        damage=flip_model_bit(previous=2),
    )


def test_sample_table_resume_keeps_rows_whose_text_holds_line_separators(tmp_path):
    from rlhfkit.recipes.online_outputs import SampleTable
    from rlhfkit.training.logging import MetricsLogger

    rows = [{"step": 2, "prompt": "p", "response": "a\u2028b\x85c"}, {"step": 4, "prompt": "q", "response": "later"}]
    (tmp_path / "samples.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    SampleTable(tmp_path, every=2, rows=1, resume_step=2)
    assert [json.loads(l) for l in (tmp_path / "samples.jsonl").read_text(encoding="utf-8").split("\n") if l] == rows[
        :1
    ]
    (tmp_path / "metrics.jsonl").write_text(
        json.dumps({"step": 1, "note": "x\u2028y"}, ensure_ascii=False) + "\n" + json.dumps({"step": 3}) + "\n",
        encoding="utf-8",
    )
    MetricsLogger(tmp_path, tensorboard=False, resume_step=2).close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text(encoding="utf-8").split("\n")[0])["note"] == "x\u2028y"


def test_a_finished_online_run_is_kept_and_a_checkpoint_resumes_only_with_its_settings(
    tmp_path, tiny_policy_dir, prompt_file, capsys
):
    """Rerunning a finished GRPO run returns its final metrics without training again or
    rewriting its model; a checkpoint is continued only under the settings that wrote it, other
    settings are refused naming the field."""
    from rlhfkit.training.config import ConfigError

    out = tmp_path / "grpo"
    rows = run_inproc("grpo", tiny_policy_dir, prompt_file, out, "--max_steps", "2", "--save_every", "1")
    weights = out / "model" / "model.safetensors"
    stamp, final = weights.stat().st_mtime_ns, json.loads((out / "final_metrics.json").read_text())
    capsys.readouterr()
    again = grpo.run(
        load_config(
            grpo.GRPOConfig,
            None,
            args("grpo", tiny_policy_dir, prompt_file, out, "--max_steps", "2", "--save_every", "1")[1:],
        )
    )
    assert again == final and "holds this run, finished" in capsys.readouterr().out
    assert weights.stat().st_mtime_ns == stamp and len(rows) == 2
    (out / "final_metrics.json").unlink()  # as if killed after checkpoint-1: a resume, not a finished run
    with pytest.raises(ConfigError, match="checkpoint-1 was written with other settings.*learning_rate"):
        run_inproc(
            "grpo",
            tiny_policy_dir,
            prompt_file,
            out,
            "--max_steps",
            "2",
            "--save_every",
            "1",
            "--learning_rate",
            "1e-3",
        )


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_logged_lr_is_the_rate_the_step_used(tmp_path, tiny_policy_dir, prompt_file, algo):
    """Linear decay over max_steps x ppo_epochs x num_minibatches updates (docs/PPO_CHECKLIST.md
    #11 (Adam eps and LR decay)): step s's first update uses lr * (1 - s * updates_per_step /
    total); the log shows that rate, not the next step's (the last step would otherwise log 0)."""
    extra = [
        "--batch_size",
        "8",
        "--micro_batch_size",
        "4",
        "--max_steps",
        "2",
        "--resume",
        "false",
        "--ppo_epochs",
        "2",
        "--num_minibatches",
        "2",
    ]
    if algo == "grpo":
        extra += ["--num_generations", "4"]
    rows = run_inproc(algo, tiny_policy_dir, prompt_file, tmp_path / algo, *extra)
    assert [r["lr"] for r in rows] == pytest.approx([3e-3, 3e-3 * (1 - 4 / 8)])


def test_an_online_run_ends_with_where_its_model_is(tmp_path, tiny_policy_dir, prompt_file, capsys):
    rows = run_inproc(
        "grpo",
        tiny_policy_dir,
        prompt_file,
        tmp_path / "g",
        "--num_generations",
        "4",
        "--max_steps",
        "2",
        "--resume",
        "false",
        "--gold_reward",
        "length",
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == (
        f"grpo: saved {tmp_path / 'g' / 'model'}; last step reward {rows[-1]['reward']:.4f}, "
        f"gold {rows[-1]['gold']:.4f}, kl {rows[-1]['kl']:.4f}; curves in {tmp_path / 'g' / 'metrics.jsonl'}"
    )
