"""What an online run reads: its prompts, its models, its sampler and its reward.

- prompts: a named pool (the first words of the shared movie reviews, or the first human turns
  of chat conversations) or a prompt file, read by ``data.loading.load_prompts``; each step's
  prompts are a function of (seed, step) only (``prompts_for_step``), so resuming needs no
  data-loader state,
  and over several processes each rank takes its consecutive share (``local_share``: whole
  groups of k samples stay on one rank);
- models: the policy and its KL reference (a given ``ref_model``, the policy with its LoRA adapter
  switched off, or a frozen copy), dropout off, in the run's precision;
- sampling: ``generate`` draws a rollout from the seed of (seed, step, rank), so a resumed run
  draws what an uninterrupted one would;
- reward: the ``reward`` spec, plus the refitted discriminator's logit when
  ``adversarial.discriminator`` is set (``rewards.adversarial``: GAIL / AIRL).
"""

from __future__ import annotations

import copy

import torch

from rlhfkit.data.loading import load_prompts
from rlhfkit.models import load_policy
from rlhfkit.recipes.common import with_lora
from rlhfkit.recipes.online_config import OnlineConfig
from rlhfkit.rewards import build_reward
from rlhfkit.rewards.adversarial import Adversary, RewardWithAdversary
from rlhfkit.rollout import Rollout, SamplingConfig, make_sampler, rollout, step_seed
from rlhfkit.training.config import ConfigError
from rlhfkit.training.distributed import DistInfo
from rlhfkit.training.loop import enable_gradient_checkpointing, epoch_order
from rlhfkit.core.precision import autocast_forward

RANK_SALT = 100_003  # separates the ranks' sampling seeds from the other salts of a step


# ---------------------------------------------------------------------------- prompts
def run_prompts(config: OnlineConfig) -> list[str]:
    """The prompts of a run (``data.loading.load_prompts``): at most ``max_prompts``, drawn by the
    run's seed from a named pool, the first ones of a prompt file."""
    return load_prompts(config.prompts, config.prompt_words, limit=config.max_prompts or None, seed=config.seed)


def prompts_for_step(prompts: list[str], step: int, n: int, seed: int) -> list[str]:
    """The ``n`` prompts of ``step``: consecutive slices of a per-epoch permutation seeded by
    (seed, epoch), so the data position is a function of the step alone (exact resume)."""
    if n > len(prompts):
        raise ValueError(f"{n} prompts per step but only {len(prompts)} prompts")
    per_epoch = len(prompts) // n
    epoch, pos = divmod(step, per_epoch)
    order = epoch_order(len(prompts), seed, epoch)
    return [prompts[i] for i in order[pos * n : (pos + 1) * n]]


def local_share(items: list, info: DistInfo) -> list:
    """This rank's consecutive share of a step's items (prompts: whole groups stay together)."""
    if not info.enabled:
        return items
    n = len(items) // info.world_size
    return items[info.rank * n : (info.rank + 1) * n]


# ---------------------------------------------------------------------------- models and sampling
def _frozen(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_models(config: OnlineConfig, need_reference: bool):
    """``(policy, tokenizer, reference)``. With ``ref_model`` the reference is that model, loaded
    and frozen (a policy that started from an SFT model keeps its KL to it over several runs).
    Else with ``lora.r > 0`` the policy gets an adapter and ``reference`` is None: the reference
    is the same weights with the adapter disabled (``models.reference_context``; one copy of the
    weights). Otherwise the reference is a frozen deep copy of the initial policy (None when not
    needed). Dropout is off in all of them (docs/PPO_CHECKLIST.md #8 (no dropout, value head
    init))."""
    # left padding, pad != eos (docs/PPO_CHECKLIST.md #1 (distinct pad token))
    policy, tokenizer = load_policy(config.model)
    # bf16: every forward of the policy (sampling, behaviour and update log-probs) and of the
    # reference runs in autocast, so the behaviour log-probs and the update's come from the same
    # computation (the teacher-forced pass of rollout.finish_rollout) and the ratio starts at 1;
    # reward models are not touched
    autocast_forward(policy, config.precision)
    reference = None
    if need_reference and config.ref_model:
        reference, ref_tokenizer = load_policy(config.ref_model)
        autocast_forward(reference, config.precision)
        if ref_tokenizer.get_vocab() != tokenizer.get_vocab():  # the KL compares token by token
            raise ValueError(
                f"field 'ref_model': {config.ref_model!r} has another tokenizer than model "
                f"{config.model!r}; the KL to the reference needs the same vocabulary"
            )
        _frozen(reference)
    if config.lora.r:
        policy = with_lora(policy, config.lora)
    elif need_reference and reference is None:
        reference = _frozen(copy.deepcopy(policy))
    if config.gradient_checkpointing:
        # only the training forward recomputes (HF checkpoints in train mode); generation and the
        # no-grad log-prob passes run in eval mode and are unchanged
        enable_gradient_checkpointing(policy)
    return policy, tokenizer, reference


def make_generator(config: OnlineConfig, tokenizer, policy):
    """The sampler of ``config.generation_engine`` for ``policy`` (rollout.make_sampler)."""
    sampling = SamplingConfig(
        max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p, top_k=config.top_k
    )
    return make_sampler(policy, sampling, tokenizer.eos_token_id, tokenizer.pad_token_id, config.generation_engine)


def generate(
    config: OnlineConfig,
    generator,
    policy,
    tokenizer,
    prompts: list[str],
    step: int,
    behaviour_logprobs: bool = True,
    rank: int = 0,
    salt: int = 0,
) -> Rollout:
    """One rollout of ``prompts`` sampled from the seed of (config.seed, step, salt, rank) (rank
    0's is a single process's); without ``behaviour_logprobs`` its ``logprobs`` stay zero and
    the update takes them from its own forward pass (``policy_gradient.single_update``)."""
    return rollout(
        generator,
        policy,
        tokenizer,
        prompts,
        seed=step_seed(config.seed, step, salt=salt + RANK_SALT * rank),
        max_prompt_length=config.max_prompt_length,
        chat_template=config.chat_template,
        logprob_batch_size=config.micro_batch_size,
        behaviour_logprobs=behaviour_logprobs,
    )


# ---------------------------------------------------------------------------- reward
def score(source, ro: Rollout) -> torch.Tensor:
    """``[B]`` float scores of the rollout's (prompt, response) pairs, on the rollout's device."""
    return source(ro.prompts, ro.responses).float().to(ro.logprobs.device)


def build_run_reward(config: OnlineConfig, info: DistInfo):
    """``(reward source, adversary or None)``: the ``reward`` spec, plus the refitted
    discriminator's logit when ``adversarial.discriminator`` is set (``rewards.adversarial``)."""
    base = build_reward(config.reward, batch_size=config.reward_batch_size) if config.reward else None
    if not config.adversarial.enabled:
        return base, None
    if info.world_size > 1:
        raise ConfigError(
            "field 'adversarial.discriminator': the adversarial refit runs in one process "
            "(its update is not reduced over ranks); launch without torchrun"
        )
    adversary = Adversary.load(config.adversarial, config.seed, config.max_grad_norm, config.reward_batch_size)
    adversary.model.to(info.device)  # beside the policy (one fused AdamW holds both)
    return RewardWithAdversary(base, adversary), adversary


def adversarial_modules(adversary) -> dict:
    """What a checkpoint holds of the adversarial refit: the discriminator (none when off)."""
    return {} if adversary is None else {"discriminator": adversary.model}


def adversarial_step(adversary, reward, ro: Rollout, step: int, optimizer) -> dict:
    """After the policy's update at ``step``: the discriminator's mean logit on the rollout (the
    reward term it gave) and, when due, its refit on the rollout's responses (metrics)."""
    if adversary is None:
        return {}
    logit = getattr(reward, "last_components", {}).get("adversarial")
    out = {} if logit is None else {"adversarial/reward": float(logit.mean())}
    return {**out, **adversary.update(ro.prompts, ro.responses, step, optimizer)}
