"""Settings of ``rlhfkit learn run`` / ``versions`` / ``rollback`` (dataclasses: YAML + ``--field``).

Sections: ``reward`` (the reward model refit each round), ``policy`` (the optimisation of the
policy: GRPO on users' prompts against that reward model, or KTO / DPO / SFT straight from the
feedback), ``defence`` (per-user caps and consensus weights) and ``gate`` (what a candidate must
show before it is promoted). Every field is part of a round's stage fingerprints except the
run-only ones (``pipeline.cache.RUN_ONLY_FIELDS`` and the polling fields below).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlhfkit.recipes.common import LoraConfig

METHODS = ("grpo", "kto", "dpo", "sft")
# fields that never change what a round produces (the follow loop's own settings)
FOLLOW_FIELDS = {"learn_dir", "store", "once", "poll_seconds", "max_rounds", "threads", "prefix"}


@dataclass
class RewardSection:
    model: str = field(
        default="",
        metadata={
            "help": "backbone of the first reward model (empty = the base policy "
            "model); later rounds start from the last round's reward model"
        },
    )
    learning_rate: float = field(default=3e-5, metadata={"help": "reward model's peak learning rate"})
    epochs: float = field(default=2.0, metadata={"help": "passes over a round's feedback"})
    batch_size: int = field(default=16, metadata={"help": "examples per optimiser step"})
    micro_batch_size: int = field(default=8, metadata={"help": "examples per forward pass"})
    max_length: int = field(default=256, metadata={"help": "tokens of prompt + reply (prompt cut on the left)"})
    thumbs_weight: float = field(default=1.0, metadata={"help": "weight of a thumbs example beside a pair's 1"})
    rating_weight: float = field(default=1.0, metadata={"help": "weight of a rating example beside a pair's 1"})


@dataclass
class PolicySection:
    max_steps: int = field(
        default=8, metadata={"help": "GRPO steps per round (kto/dpo/sft: optimiser steps, 0 = epochs)"}
    )
    epochs: float = field(
        default=1.0, metadata={"help": "kto/dpo/sft: passes over the round's feedback when max_steps is 0"}
    )
    learning_rate: float = field(default=1e-5, metadata={"help": "policy's peak learning rate"})
    num_generations: int = field(default=4, metadata={"help": "GRPO: replies per prompt (the group)"})
    batch_size: int = field(default=16, metadata={"help": "sequences per step (GRPO: prompts x num_generations)"})
    micro_batch_size: int = field(default=4, metadata={"help": "sequences per forward pass"})
    kl_coef: float = field(default=0.05, metadata={"help": "GRPO: beta of the KL leash to v0 (the first version)"})
    beta: float = field(default=0.1, metadata={"help": "kto/dpo: reward scale beta"})
    max_new_tokens: int = field(default=48, metadata={"help": "reply tokens at most (also the gate's budget)"})
    max_prompt_length: int = field(default=128, metadata={"help": "prompt tokens kept (the last ones)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of training and the gate"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling (1 = off)"})
    chat_template: bool = field(
        default=True, metadata={"help": "wrap each user prompt in the tokenizer's chat template"}
    )
    save_every: int = field(default=1, metadata={"help": "checkpoint every N steps (resume after a kill)"})
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(r=8, alpha=16))


@dataclass
class DefenceSection:
    max_per_user: int = field(
        default=50,
        metadata={
            "help": "verdicts of one user used per round at most (a flood is "
            "cut, the rest counted in the lineage; 0 = no cap)"
        },
    )
    min_consensus_agreement: float = field(
        default=0.6,
        metadata={
            "help": "the previous reward model is the consensus "
            "only when it agrees with at least this share of "
            "the round's verdicts; else leave-one-user-out majority"
        },
    )
    honest_agreement: float = field(
        default=0.75,
        metadata={
            "help": "the agreement with the consensus assumed of an honest user at most (else the consensus's "
            "own pooled agreement); a user's weight is their posterior probability of being honest "
            "rather than random or inverted under it"
        },
    )
    min_judged: int = field(
        default=3, metadata={"help": "verdicts checked against the consensus before a user's weight moves from 1"}
    )
    crossfit_folds: int = field(
        default=2,
        metadata={
            "help": "without a previous reward model the round agrees with: users dealt into this many folds "
            "by a hash of their id, each checked against a reward model trained on the other folds (0 = off)"
        },
    )
    crossfit_max_steps: int = field(
        default=0, metadata={"help": "optimiser steps of each cross-fitted reward model at most (0 = reward.epochs)"}
    )


@dataclass
class GateSection:
    holdout_share: float = field(
        default=0.2,
        metadata={
            "help": "share of user prompts kept out of training for the gate (chosen by a keyed hash of the "
            "prompt under LEARN_DIR/holdout.key: fixed, and not computable by users)"
        },
    )
    max_prompts: int = field(default=64, metadata={"help": "held-out prompts the gate samples at most"})
    min_prompts: int = field(default=2, metadata={"help": "fewer held-out prompts: the candidate is refused"})
    min_win_rate: float = field(default=0.5, metadata={"help": "reward-model win rate of candidate vs current needed"})
    gold: str = field(default="", metadata={"help": "gold judge (a reward spec, e.g. -toxicity+vader); empty = none"})
    min_gold_win_rate: float = field(default=0.5, metadata={"help": "gold win rate needed when gold is set"})
    max_kl: float = field(default=20.0, metadata={"help": "mean sequence KL (nats) of the candidate to v0 at most"})
    max_toxicity_increase: float = field(
        default=0.05, metadata={"help": "mean toxicity may rise this much over current"}
    )
    max_empty_increase: float = field(default=0.05, metadata={"help": "share of empty replies may rise this much"})
    max_runaway_increase: float = field(
        default=0.1, metadata={"help": "share of replies cut at the token budget may rise this much"}
    )
    n_boot: int = field(default=1000, metadata={"help": "bootstrap resamples of the win rate's interval"})


@dataclass
class LearnConfig:
    """``rlhfkit learn run LEARN_DIR --store DB --model BASE``."""

    learn_dir: str = field(
        default="",
        metadata={
            "help": "the learner's folder (versions/, current.json, rounds/); also the first positional argument"
        },
    )
    store: str = field(default="", metadata={"help": "the feedback store serve writes (SQLite file or database URL)"})
    prefix: str = field(default="serve", metadata={"help": "project prefix of the end-user feedback in the store"})
    model: str = field(
        default="", metadata={"help": "base model (v0) when LEARN_DIR is new; must match when it exists"}
    )
    method: str = field(
        default="grpo",
        metadata={
            "help": "grpo (reward model, then GRPO against it), or kto / dpo / "
            "sft: the policy trained straight from the feedback"
        },
    )
    min_feedback: int = field(default=32, metadata={"help": "new verdicts that start a round"})
    once: bool = field(
        default=False, metadata={"help": "run at most one round (when enough feedback is there), then exit"}
    )
    poll_seconds: float = field(default=10.0, metadata={"help": "seconds between looks at the store"})
    max_rounds: int = field(default=0, metadata={"help": "stop after this many rounds (0 = follow forever)"})
    seed: int = field(default=0, metadata={"help": "seed of every round (each round draws from (seed, round))"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch default)"})
    reward: RewardSection = field(default_factory=RewardSection)
    policy: PolicySection = field(default_factory=PolicySection)
    defence: DefenceSection = field(default_factory=DefenceSection)
    gate: GateSection = field(default_factory=GateSection)

    def validate(self) -> None:
        if not self.learn_dir:
            raise ValueError("give the learner's folder: rlhfkit learn run LEARN_DIR --store DB --model BASE")
        if not self.store:
            raise ValueError("field 'store': give the feedback store serve writes (--store fb.db)")
        from pathlib import Path

        if "://" not in self.store and not Path(self.store).is_file():  # a typo must not read a new, empty store
            raise ValueError(f"field 'store': {self.store}: no such file (start rlhfkit serve --db {self.store} first)")
        if self.policy.lora.r < 1:
            raise ValueError("field 'policy.lora.r' must be >= 1: a version is a LoRA adapter on its parent")
        if self.method not in METHODS:
            raise ValueError(f"field 'method': {self.method!r} is not one of {list(METHODS)}")
        if self.min_feedback < 1:
            raise ValueError("field 'min_feedback' must be >= 1")
        if self.poll_seconds <= 0 or self.max_rounds < 0:
            raise ValueError("fields 'poll_seconds' must be > 0 and 'max_rounds' >= 0")
        if not 0 < self.gate.holdout_share < 1:
            raise ValueError("field 'gate.holdout_share' must be in (0, 1)")
        if self.method == "grpo" and (
            self.policy.num_generations < 2 or self.policy.batch_size % self.policy.num_generations
        ):
            raise ValueError("field 'policy.batch_size' must be a multiple of 'policy.num_generations' (>= 2)")
        if not 0.5 < self.defence.min_consensus_agreement <= 1:
            raise ValueError(
                "field 'defence.min_consensus_agreement' must be in (0.5, 1]: a consensus at chance says nothing"
            )
        if self.defence.max_per_user < 0 or not 0.5 < self.defence.honest_agreement < 1:
            raise ValueError("field 'defence.max_per_user' must be >= 0 and 'defence.honest_agreement' in (0.5, 1)")
        if self.defence.crossfit_folds == 1 or self.defence.crossfit_folds < 0 or self.defence.crossfit_max_steps < 0:
            raise ValueError(
                "field 'defence.crossfit_folds' must be 0 (off) or >= 2, 'defence.crossfit_max_steps' >= 0"
            )
        if self.gate.gold:
            from rlhfkit.rewards import check_reward_field

            check_reward_field("gate.gold", self.gate.gold)


@dataclass
class VersionsConfig:
    """``rlhfkit learn versions LEARN_DIR``."""

    learn_dir: str = field(default="", metadata={"help": "the learner's folder (also the first positional argument)"})
    json: bool = field(default=False, metadata={"help": "print the versions as JSON lines instead of a table"})
    html: str = field(
        default="",
        metadata={
            "help": "also write the versions-over-time report (self-contained HTML: "
            "rounds promoted / refused, gate figures, lineage) to this file"
        },
    )

    def validate(self) -> None:
        if not self.learn_dir:
            raise ValueError("give the learner's folder: rlhfkit learn versions LEARN_DIR")


@dataclass
class RollbackConfig:
    """``rlhfkit learn rollback LEARN_DIR VERSION``."""

    learn_dir: str = field(default="", metadata={"help": "the learner's folder (the first positional argument)"})
    version: str = field(
        default="", metadata={"help": "the version to serve again, e.g. v2 (the second positional argument)"}
    )
    reason: str = field(default="", metadata={"help": "why (kept in versions.jsonl)"})

    def validate(self) -> None:
        if not self.learn_dir or not self.version:
            raise ValueError("give the learner's folder and a version: rlhfkit learn rollback LEARN_DIR v2")
