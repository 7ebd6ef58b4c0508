"""The one driver of the online-RL recipes (ppo, grpo, rloo, reinforce).

``run_online(config, algorithm)`` does what every online run does, in this order: threads, seed
and the process group (``setup_run``); a finished run's metrics returned as they are; prompts,
the reward (with the adversarial discriminator's logit), the gold judge, the policy and its
reference, the sampler, the modules the algorithm trains beside the policy (a value model),
AdamW and its schedule; resuming from the newest intact checkpoint; then the step loop: the
algorithm's step, the rollout's metrics, the gold score, the adversarial refit, metrics.jsonl, the
sample table, the progress bar, a checkpoint every ``save_every`` steps and the ``max_minutes``
deadline; last the final model, the refitted discriminator and the closing line.

An algorithm is any object with the members of ``OnlineAlgorithm`` (composition; one without
state of its own takes the no-op members from ``StatelessAlgorithm``): its step rolls out, scores, computes its advantages and updates (``OnlineRun`` gives it the
run's pieces and the rollout / reward / reference passes every algorithm needs) and returns a
``StepOutput``. What a checkpoint holds never depends on the driver: the ``ModuleDict`` of
"policy", the algorithm's modules ("value") and "discriminator", the optimiser, the scheduler,
the RNG streams and the algorithm's ``checkpoint_state`` (PPO: KL controller and reward
normaliser; REINFORCE: its running baseline).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
import torch.distributed as dist

from rlhfkit.recipes.common import save_final, set_threads
from rlhfkit.recipes.online_config import OnlineConfig
from rlhfkit.recipes.online_inputs import (
    RANK_SALT,
    adversarial_modules,
    adversarial_step,
    build_run_reward,
    generate,
    load_models,
    local_share,
    make_generator,
    prompts_for_step,
    run_prompts,
    score,
)
from rlhfkit.recipes.online_outputs import closing_line, rollout_metrics, run_outputs
from rlhfkit.rewards import build_reward
from rlhfkit.rollout import Rollout, repeat_each, rollout_logprobs, step_seed
from rlhfkit.training.callbacks import step_ended
from rlhfkit.training.checkpoint import load_checkpoint, load_rank_rng, resume_checkpoint, rng_state, save_checkpoint
from rlhfkit.training.config import ConfigError
from rlhfkit.training.distributed import DistInfo, all_gather_rows, all_reduce_sum, barrier, cleanup, init_distributed
from rlhfkit.training.logging import ticking
from rlhfkit.training.optimizer import adamw, build_scheduler
from rlhfkit.training.run_identity import check_resume_config, finished_run, resume_fingerprint


@dataclass
class StepOutput:
    """What one step of an algorithm gives the driver."""

    rollout: Rollout
    scores: torch.Tensor  # [B] the reward of each row (the rollout metrics' "reward")
    metrics: dict[str, float]  # the algorithm's own (update statistics, lr, KL ...), in log order
    columns: dict[str, torch.Tensor]  # per-row columns of the sample table


@dataclass
class OnlineRun:
    """The pieces of a run the driver built, handed to each step of the algorithm."""

    config: OnlineConfig
    info: DistInfo
    prompts: list[str]
    reward: Callable  # (prompts, responses) -> [B]; with the discriminator's logit when adversarial
    policy: torch.nn.Module
    tokenizer: Any
    reference: torch.nn.Module | None  # None: the policy with its LoRA adapter off (or no KL at all)
    generator: Any
    modules: torch.nn.ModuleDict  # what a checkpoint holds
    params: list  # the trained parameters (policy and the algorithm's modules)
    optimizer: torch.optim.Optimizer
    scheduler: Any

    def rollout(
        self,
        step: int,
        samples_per_prompt: int = 1,
        behaviour_logprobs: bool = True,
        order_seed: int | None = None,
        salt: int = 0,
    ) -> Rollout:
        """This rank's rollout of ``step``: its share of the step's ``batch_size / k`` prompts (in the
        order of ``order_seed``, default the run's seed), each sampled k times (adjacent rows), from
        the sampling seed of (seed, step, salt, rank)."""
        c, k = self.config, samples_per_prompt
        order = c.seed if order_seed is None else order_seed
        prompts = local_share(prompts_for_step(self.prompts, step, c.batch_size // k, order), self.info)
        return generate(
            c,
            self.generator,
            self.policy,
            self.tokenizer,
            repeat_each(prompts, k),
            step,
            behaviour_logprobs=behaviour_logprobs,
            rank=self.info.rank,
            salt=salt,
        )

    def score(self, ro: Rollout) -> torch.Tensor:
        return score(self.reward, ro)

    def reference_logprobs(self, ro: Rollout) -> torch.Tensor:
        """``[B, R]`` log-probs of the rollout's responses under the KL reference (the frozen model,
        or the policy with its LoRA adapter disabled), in micro-batches."""
        lora_reference = self.reference is None
        return rollout_logprobs(
            self.policy if lora_reference else self.reference,
            ro,
            self.config.temperature,
            self.config.micro_batch_size,
            adapter_disabled=lora_reference,
        )

    def lr(self) -> float:
        """The learning rate of the step's first update (the scheduler steps once per update)."""
        return self.scheduler.get_last_lr()[0]


class OnlineAlgorithm(Protocol):
    name: str  # the command: the progress bar's label and the closing line's
    samples_per_prompt: int  # k: a step rolls out batch_size / k prompts, each k times
    need_reference: bool  # whether the run keeps a KL reference
    progress: dict[str, str]  # metrics on the progress bar, with their formats

    def trained_modules(self, tokenizer) -> dict[str, torch.nn.Module]:
        """Modules trained beside the policy (a value model), by their names in a checkpoint."""

    def start(self, run: OnlineRun, trainer_state: dict) -> None:
        """Take the algorithm's state from a resumed checkpoint's ``trainer_state`` ({} on a fresh start)."""

    def step(self, run: OnlineRun, step: int) -> StepOutput: ...

    def checkpoint_state(self) -> dict:
        """The algorithm's state a checkpoint keeps (JSON)."""


class StatelessAlgorithm:
    """The members of ``OnlineAlgorithm`` that an algorithm which trains nothing beside the policy
    and keeps no state between steps (GRPO, RLOO) has: no module, nothing to take from a resumed
    checkpoint, nothing to keep in one. Such an algorithm takes them from here (its one base class)
    and writes only its step."""

    def trained_modules(self, tokenizer) -> dict[str, torch.nn.Module]:
        return {}

    def start(self, run: OnlineRun, trainer_state: dict) -> None:
        pass

    def checkpoint_state(self) -> dict:
        return {}


# ---------------------------------------------------------------------------- setup and teardown
def setup_run(config: OnlineConfig, prompts_per_step: int) -> DistInfo:
    """Threads, seed, and the process group when launched with several processes (torchrun /
    accelerate launch; gloo, as the online recipes run on the CPU). Data parallel: every rank
    holds the policy, rolls out its consecutive share of each step's prompts (whole groups) from
    its own seed, and the gradients are summed over ranks."""
    set_threads(config.threads)
    torch.manual_seed(config.seed)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        if config.parallel != "ddp":
            raise ConfigError(
                f"field 'parallel': online RL recipes replicate the policy on every process (ddp), "
                f"not {config.parallel!r}"
            )
        if prompts_per_step % world:
            raise ConfigError(
                f"fields 'batch_size' / 'num_generations': {prompts_per_step} prompts per step do not "
                f"divide by {world} processes"
            )
        if (config.batch_size // world) % config.num_minibatches:
            raise ConfigError(
                f"field 'num_minibatches': {config.batch_size // world} sequences per process do not "
                f"divide into {config.num_minibatches} minibatches"
            )
    return init_distributed("cpu")


def optimizer_and_scheduler(params, config: OnlineConfig, adversary=None):
    """AdamW over ``params`` (and the adversarial discriminator's parameters as a second group with
    its own, constant learning rate), and the run's schedule."""
    optimizer = adamw(params, config)
    if adversary is not None:
        optimizer.add_param_group(adversary.param_group())
    total = config.max_steps * config.ppo_epochs * config.num_minibatches
    # linear decay (docs/PPO_CHECKLIST.md #11 (Adam eps and LR decay)); the discriminator's rate
    # stays constant
    return optimizer, build_scheduler(optimizer, total, config, constant_groups=int(adversary is not None))


def resume_state(
    config: OnlineConfig, modules: torch.nn.Module, optimizer, scheduler, info: DistInfo | None = None
) -> tuple[int, dict]:
    """``(start_step, trainer_state)`` from the newest intact checkpoint in ``output_dir`` (if resuming);
    over several processes each rank takes back its own RNG stream (LoRA dropout draws from it)."""
    if info is not None and info.rank:
        # the models are built (the same on every rank): from here on each rank draws its own stream
        # from the global RNG (LoRA dropout); rank 0 keeps a single process's
        torch.manual_seed(step_seed(config.seed, 0, salt=RANK_SALT * info.rank + 1))
    ckpt = resume_checkpoint(config.output_dir, info) if config.resume else None  # the newest intact one
    if ckpt is None:
        return 0, {}
    check_resume_config(ckpt, config)  # another run's weights and schedule must not be continued
    state = load_checkpoint(ckpt, modules, optimizer, scheduler)
    if info is not None and info.enabled:
        load_rank_rng(ckpt, info.rank)
    return int(state["step"]), state


def maybe_checkpoint(
    config: OnlineConfig,
    step_done: int,
    modules,
    optimizer,
    scheduler,
    trainer_state: dict,
    info: DistInfo | None = None,
) -> None:
    """Save every ``save_every`` steps (not at the end: the final model is saved instead), then
    call the step-end callbacks (training/callbacks.py). Several processes: every rank holds the same
    weights and optimiser state, rank 0 writes them and the others wait for it."""
    if config.save_every and step_done % config.save_every == 0 and step_done < config.max_steps:
        rank_rng = None
        if info is not None and info.enabled:  # every rank's own stream, so resume continues each one
            rank_rng = [None] * info.world_size
            dist.all_gather_object(rank_rng, rng_state())
        if info is None or info.is_main:
            save_checkpoint(
                config.output_dir,
                step_done,
                modules,
                optimizer,
                scheduler,
                {**trainer_state, "config": resume_fingerprint(config)},
                keep_last=config.keep_checkpoints,
                rank_rng_states=rank_rng,
            )
        if info is not None:
            barrier(info)
    step_ended(step_done)


def out_of_time(config: OnlineConfig, started: float, info: DistInfo | None = None) -> bool:
    """True once ``max_minutes`` (when set) have passed since ``started``: checked after a step is
    logged and checkpointed, so the run always ends on a whole step (on every rank together:
    rank 0's clock decides)."""
    late = config.max_minutes > 0 and time.perf_counter() - started >= config.max_minutes * 60
    if info is not None and info.enabled:
        late = bool(all_reduce_sum(float(late) if info.is_main else 0.0, info).item())
    return late


def finish_run(info: DistInfo, line: str) -> None:
    """End of a run: the main process prints ``line``, then every rank leaves the process group."""
    if info.is_main:
        print(line, flush=True)
    cleanup(info)


# ---------------------------------------------------------------------------- the run
def run_online(config: OnlineConfig, algorithm: OnlineAlgorithm) -> dict:
    """Train ``algorithm`` as ``config`` says; returns the last step's metrics."""
    info = setup_run(config, config.batch_size // algorithm.samples_per_prompt)
    if (done := finished_run(config, algorithm.name, info)) is not None:
        cleanup(info)
        return done
    prompts = run_prompts(config)
    reward, adversary = build_run_reward(config, info)
    gold = build_reward(config.gold_reward, batch_size=config.reward_batch_size) if config.gold_reward else None
    policy, tokenizer, reference = load_models(config, need_reference=algorithm.need_reference)
    generator = make_generator(config, tokenizer, policy)
    modules = torch.nn.ModuleDict({"policy": policy, **algorithm.trained_modules(tokenizer)})
    params = [p for p in modules.parameters() if p.requires_grad]
    optimizer, scheduler = optimizer_and_scheduler(params, config, adversary)
    modules.update(adversarial_modules(adversary))  # in the checkpoints, not in the update's params
    run = OnlineRun(
        config, info, prompts, reward, policy, tokenizer, reference, generator, modules, params, optimizer, scheduler
    )
    start, state = resume_state(config, modules, optimizer, scheduler, info)
    algorithm.start(run, state)
    logger, table, bar = run_outputs(config, info, start, bool(state), algorithm.name)
    metrics: dict = {}
    started = time.perf_counter()
    with ticking(bar):  # a step takes seconds to minutes: the bar's clock keeps moving
        for step in range(start, config.max_steps):
            t0 = time.perf_counter()
            out = algorithm.step(run, step)
            metrics = {**rollout_metrics(out.rollout, out.scores, time.perf_counter() - t0, info), **out.metrics}
            columns = dict(out.columns)
            if gold is not None:
                columns["gold"] = score(gold, out.rollout)
                metrics["gold"] = float(all_gather_rows(columns["gold"], info).mean())
            metrics.update(adversarial_step(adversary, reward, out.rollout, step, optimizer))
            logger.log(step + 1, metrics)
            table.maybe_write(step + 1, out.rollout, columns)
            bar.update(1)
            bar.set_postfix({k: f"{metrics[k]:{fmt}}" for k, fmt in algorithm.progress.items()})
            maybe_checkpoint(config, step + 1, modules, optimizer, scheduler, algorithm.checkpoint_state(), info)
            if out_of_time(config, started, info):
                break
    bar.close()
    logger.close()
    save_final(policy, tokenizer, config, metrics, info)
    if adversary is not None and info.is_main:
        adversary.save(config.output_dir)
    finish_run(info, closing_line(algorithm.name, config, metrics))
    return metrics
