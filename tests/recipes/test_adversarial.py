"""The adversarial refit of a discriminator reward (``--adversarial.discriminator``, GAIL / AIRL):
its update learns on its own parameters only (the policy's, in the same optimiser, stay put), the
reward is the rule reward plus the weighted logit, a run refits it and saves it, and a run
SIGKILLed and started again ends exactly where one left alone does (discriminator included)."""

import json

import pytest
import torch

from rlhfkit.recipes.online_inputs import build_run_reward
from rlhfkit.rewards.adversarial import Adversary, AdversarialConfig
from rlhfkit.training.distributed import DistInfo

from .conftest import assert_resume_exact, load_weights, run_cli


@pytest.fixture(scope="module")
def discriminator_dir(tmp_path_factory, sft_file, tiny_policy_dir, tiny_encoder_rm_dir):
    """A tiny discriminator trained by ``rlhfkit reward discriminator`` (demonstrations: a fixed
    phrase; policy: the random tiny model)."""
    out = tmp_path_factory.mktemp("disc")
    r = run_cli(
        [
            "reward",
            "discriminator",
            "--data",
            str(sft_file),
            "--policy",
            str(tiny_policy_dir),
            "--output_dir",
            str(out),
            "--max_new_tokens",
            "8",
            "--eval_fraction",
            "0.25",
            "--reward.model",
            str(tiny_encoder_rm_dir),
            "--reward.epochs",
            "2",
            "--reward.learning_rate",
            "2e-3",
            "--reward.max_length",
            "48",
            "--threads",
            "1",
        ]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return out / "model"


def online_args(algo, policy, prompts, out, *extra):
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
        "8",
        "--micro_batch_size",
        "4",
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


def test_an_update_moves_the_discriminator_only_and_separates_the_classes(discriminator_dir, sft_file):
    torch.manual_seed(0)
    cfg = AdversarialConfig(
        discriminator=str(discriminator_dir),
        demos=str(sft_file),
        batch_size=8,
        updates=1,
        learning_rate=3e-3,
        max_length=48,
    )
    adv = Adversary.load(cfg, seed=0)
    policy_param = torch.nn.Parameter(torch.randn(4, 4))
    opt = torch.optim.AdamW([policy_param], lr=1e-2)
    opt.add_param_group(adv.param_group())
    before_policy = policy_param.detach().clone()
    before_disc = {k: v.clone() for k, v in adv.model.state_dict().items()}
    # the policy's responses: text unlike the demonstrations' fixed phrase
    prompts = [f"tell me about item {i}" for i in range(8)]
    responses = ["zz qq xx zz qq"] * 8
    demo_p = [d.prompt for d in adv.demos[:8]]
    demo_r = [d.completion for d in adv.demos[:8]]

    def gap():
        return float(adv.logits(demo_p, demo_r).mean() - adv.logits(prompts, responses).mean())

    first = adv.update(prompts, responses, step=0, optimizer=opt)
    assert set(first) == {
        "adversarial/loss",
        "adversarial/accuracy",
        "adversarial/logit_demos",
        "adversarial/logit_policy",
    }
    ld, lp = first["adversarial/logit_demos"], first["adversarial/logit_policy"]
    assert first["adversarial/loss"] > 0 and 0 <= first["adversarial/accuracy"] <= 1
    assert torch.equal(policy_param.detach(), before_policy)  # no gradient, no step, no weight decay
    assert any(not torch.equal(before_disc[k], v) for k, v in adv.model.state_dict().items())
    g0 = gap()
    for step in range(1, 8):
        adv.update(prompts, responses, step=step, optimizer=opt)
    assert gap() > g0 and gap() > 0, (g0, gap(), ld, lp)
    assert torch.equal(policy_param.detach(), before_policy)
    # the demonstrations it compares with are of the rollout's own prompts, where there are some
    seen = []
    original = adv._batch
    adv._batch = lambda p, r: (seen.append(list(p)), original(p, r))[1]
    own_prompts = [d.prompt for d in adv.demos[10:18]]
    adv.update(own_prompts, responses, step=20, optimizer=opt)
    (batch,) = seen
    assert sorted(batch[:8]) == sorted(batch[8:]) == sorted(own_prompts)
    seen.clear()
    adv.update(prompts, responses, step=21, optimizer=opt)  # prompts no demonstration has: any
    assert all(p in {d.prompt for d in adv.demos} for p in seen[0][:8])
    adv._batch = original
    # every N steps only
    lazy = Adversary(AdversarialConfig(discriminator="x", demos="y", every=3), adv.model, adv.tokenizer, adv.demos, 0)
    assert [bool(lazy.update(prompts, responses, s, opt)) for s in range(6)] == [False, False, True, False, False, True]


def test_the_reward_is_the_rule_plus_the_weighted_logit(discriminator_dir, sft_file, prompt_file):
    from rlhfkit.recipes.grpo import GRPOConfig

    cfg = GRPOConfig(reward="frequency:e", prompts=str(prompt_file))
    cfg.adversarial = AdversarialConfig(
        discriminator=str(discriminator_dir), demos=str(sft_file), coef=0.5, max_length=48
    )
    cfg.validate()
    reward, adversary = build_run_reward(cfg, DistInfo())
    prompts, responses = ["a b", "c d"], ["eee e", "x"]
    total = reward(prompts, responses)
    logit = adversary.logits(prompts, responses)
    from rlhfkit.rewards import build_reward

    rule = build_reward("frequency:e")(prompts, responses)
    assert rule[0] > rule[1]
    torch.testing.assert_close(total, rule + 0.5 * logit)
    assert set(reward.last_components) == {"adversarial", "base"}
    # with no --reward the logit is the whole reward
    cfg.reward = ""
    cfg.validate()
    only, _ = build_run_reward(cfg, DistInfo())
    torch.testing.assert_close(only(prompts, responses), 0.5 * logit)


def test_bad_settings_are_refused_naming_the_field(discriminator_dir, sft_file, prompt_file):
    from rlhfkit.recipes.grpo import GRPOConfig

    cfg = GRPOConfig(prompts=str(prompt_file))
    cfg.adversarial = AdversarialConfig(discriminator=str(discriminator_dir))
    with pytest.raises(ValueError, match="adversarial.demos"):
        cfg.validate()
    cfg = GRPOConfig(prompts=str(prompt_file), reward="")
    with pytest.raises(ValueError, match="field 'reward': empty"):
        cfg.validate()
    cfg.adversarial = AdversarialConfig(discriminator=str(discriminator_dir), demos=str(sft_file))
    cfg.validate()
    with pytest.raises(ValueError, match="one process"):
        build_run_reward(cfg, DistInfo(rank=0, world_size=2))
    cfg.adversarial.discriminator = str(sft_file.parent / "no-such-model")
    with pytest.raises(ValueError, match="adversarial.discriminator"):
        build_run_reward(cfg, DistInfo())


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_a_run_refits_saves_and_resumes_exactly(
    tmp_path, tiny_policy_dir, prompt_file, discriminator_dir, sft_file, algo
):
    extra = [
        "--max_steps",
        "5",
        "--save_every",
        "2",
        "--adversarial.discriminator",
        str(discriminator_dir),
        "--adversarial.demos",
        str(sft_file),
        "--adversarial.batch_size",
        "4",
        "--adversarial.max_length",
        "48",
        "--adversarial.learning_rate",
        "1e-3",
        "--adversarial.coef",
        "0.5",
    ]
    if algo == "grpo":
        extra += ["--num_generations", "4"]
    straight, killed = assert_resume_exact(
        tmp_path, online_args, algo, tiny_policy_dir, prompt_file, extra, kill_after=3, checkpoint=2
    )
    # the refitted discriminator is saved with the policy, the same after the kill, and it moved
    a, b = load_weights(straight / "discriminator"), load_weights(killed / "discriminator")
    start = load_weights(discriminator_dir)
    assert a.keys() == start.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert any(not torch.equal(a[n], start[n]) for n in a)
    rows = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and all("adversarial/loss" in r and "adversarial/reward" in r for r in rows)
    # and it is a reward model like any other
    from rlhfkit.rewards import build_reward

    assert build_reward(f"rm:{straight / 'discriminator'}", max_length=48)(["a"], ["b"]).shape == (1,)


def test_the_discriminators_learning_rate_stays_while_the_policys_decays(discriminator_dir, sft_file, prompt_file):
    from rlhfkit.recipes.grpo import GRPOConfig
    from rlhfkit.recipes.online_driver import optimizer_and_scheduler

    cfg = GRPOConfig(prompts=str(prompt_file), max_steps=4, learning_rate=1e-3, warmup_ratio=0.0)
    cfg.adversarial = AdversarialConfig(discriminator=str(discriminator_dir), demos=str(sft_file), learning_rate=2e-3)
    _, adversary = build_run_reward(cfg, DistInfo())
    opt, sched = optimizer_and_scheduler([torch.nn.Parameter(torch.zeros(2))], cfg, adversary)
    seen = []
    for _ in range(4):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    # the policy's: linear decay to 0 over the 4 updates; the discriminator's: 2e-3 throughout,
    # also for the refit after the last policy update
    assert [round(p, 8) for p, _ in seen] == [1e-3, 7.5e-4, 5e-4, 2.5e-4]
    assert [d for _, d in seen] == [2e-3] * 4 and opt.param_groups[1]["lr"] == 2e-3 and opt.param_groups[0]["lr"] == 0
    # and the state resumes: a fresh pair loaded from the saved state continues the same way
    opt2, sched2 = optimizer_and_scheduler([torch.nn.Parameter(torch.zeros(2))], cfg, adversary)
    sched2.load_state_dict(sched.state_dict())
    assert sched2.get_last_lr() == sched.get_last_lr()
