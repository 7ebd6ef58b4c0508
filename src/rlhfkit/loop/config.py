"""The configuration of ``rlhfkit loop``: one dataclass; the reward-model and policy-optimisation
sections are the recipes' own configs (``reward: RewardConfig``, ``grpo: GRPOConfig``,
``ppo: PPOConfig``), read from YAML with ``--section.field value`` overrides.

Wired by the loop (what the YAML says is ignored): ``reward.data / eval_data / output_dir /
seed``; ``grpo|ppo.model`` (the current policy), ``ref_model`` (``kl_anchor``), ``prompts`` (the
training prompts), ``reward`` (the ensemble mean), ``gold_reward`` (``gold``), ``output_dir``,
``seed`` (seed x 100 + round).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlhfkit.pipeline.config import InitConfig
from rlhfkit.recipes.grpo import GRPOConfig
from rlhfkit.recipes.ppo import PPOConfig
from rlhfkit.recipes.reward import RewardConfig

ALGORITHMS = ("grpo", "ppo")
KL_ANCHORS = ("round", "initial")
LABELERS = ("simulated", "store")


@dataclass
class LoopConfig:
    name: str = field(
        default="loop",
        metadata={"help": "a label for this loop (also the feedback projects' prefix when project_prefix is empty)"},
    )
    output_dir: str = field(
        default="outputs/loop_sentiment",
        metadata={"help": "setup/ and round-N/<stage>/ folders, loop_state.json, curve.json"},
    )
    quick: bool = field(
        default=False,
        metadata={
            "help": "tiny model built from config, few steps: a smoke run. It overrides the --config file's values (a full-size preset), never the command line's; a file that itself says quick: true keeps its values too"
        },
    )
    threads: int = field(default=0, metadata={"help": "torch CPU threads for every stage (0 = torch default)"})
    seed: int = field(
        default=0, metadata={"help": "seed of the prompt split, sampling, selection, label noise, training"}
    )
    gold: str = field(
        default="vader",
        metadata={
            "help": "gold judge (reward spec): simulated labelers' scorer and the evaluation; never the policy's reward"
        },
    )
    rounds: int = field(default=4, metadata={"help": "rounds (raising it later continues a finished loop)"})
    # --- candidates
    prompts: str = field(default="movie-reviews", metadata={"help": "prompt pool: movie-reviews or a prompt file"})
    prompt_words: int = field(default=8, metadata={"help": "movie-reviews: words per prompt"})
    n_eval_prompts: int = field(default=64, metadata={"help": "held-out prompts (evaluation only)"})
    max_train_prompts: int = field(default=0, metadata={"help": "training prompts kept (0 = all the rest)"})
    prompts_per_round: int = field(default=64, metadata={"help": "prompts the current policy answers each round"})
    num_candidates: int = field(default=4, metadata={"help": "k responses per prompt (>= 2): k(k-1)/2 candidate pairs"})
    max_new_tokens: int = field(default=24, metadata={"help": "candidate and evaluation response tokens"})
    temperature: float = field(default=1.0, metadata={"help": "candidate and evaluation sampling temperature"})
    # --- selection
    selection: str = field(
        default="uncertainty",
        metadata={
            "help": "uncertainty (reward-model ensemble) or random (the baseline); round 1 is random (no ensemble yet)"
        },
    )
    uncertainty: str = field(
        default="variance",
        metadata={
            "help": "variance (ensemble disagreement of sigmoid(r_a - r_b)), bald, margin (mean closest to 0.5) or dts (double Thompson sampling: members disagree about the best candidate)"
        },
    )
    labels_per_round: int = field(
        default=32, metadata={"help": "pairs sent to labelers each round (the label budget per round)"}
    )
    max_pairs_per_prompt: int = field(default=1, metadata={"help": "cap on selected pairs from one prompt (0 = none)"})
    ensemble_size: int = field(default=3, metadata={"help": "reward models in the ensemble (>= 2 for variance)"})
    bootstrap: bool = field(
        default=True,
        metadata={"help": "members 1.. train on bootstrap resamples (member 0 on all labels); else seeds only"},
    )
    ensemble_reward: str = field(
        default="mean",
        metadata={
            "help": "the policy's reward from the ensemble: mean, min (worst case) "
            "or uwo=LAMBDA (mean - LAMBDA * variance over members; "
            "Coste et al. 2023, against over-optimisation; as "
            "best-of-4 choosers they did worse than mean, "
            "docs/BENCHMARKS.md)"
        },
    )
    # --- labels
    labeler: str = field(
        default="simulated",
        metadata={"help": "simulated (gold judge + noise, in process) or store (people in the feedback app)"},
    )
    label_noise: float = field(default=0.3, metadata={"help": "simulated: std of Gaussian noise on the gold score"})
    labeler_judge: str = field(default="", metadata={"help": "simulated: the labelers' scorer (empty = gold)"})
    db: str = field(
        default="", metadata={"help": "store: SQLite file or SQLAlchemy URL (empty = output_dir/feedback.db)"}
    )
    project_prefix: str = field(
        default="", metadata={"help": "store: projects are named PREFIX-round-N (empty = name)"}
    )
    overlap: int = field(default=1, metadata={"help": "store: labelers per item"})
    labels_required: int = field(
        default=0, metadata={"help": "store: labels to wait for per round (0 = items x overlap)"}
    )
    label_timeout: float = field(
        default=24 * 3600.0,
        metadata={"help": "store: seconds to wait for labels before giving up (rerun to keep waiting)"},
    )
    poll_seconds: float = field(default=5.0, metadata={"help": "store: seconds between polls of the label count"})
    # --- training
    algorithm: str = field(
        default="grpo",
        metadata={"help": "policy optimisation each round: grpo or ppo, against the ensemble-mean reward"},
    )
    kl_anchor: str = field(
        default="round",
        metadata={
            "help": "the KL reference of each round's policy optimisation: round "
            "(the policy the round starts from: a trust region per round) "
            "or initial (the initial policy in every round: one leash for the whole loop)"
        },
    )
    eval_samples: int = field(default=2, metadata={"help": "evaluation samples per held-out prompt"})
    heldout_samples: int = field(
        default=2,
        metadata={
            "help": "samples of the initial policy per held-out prompt "
            "whose pairs, ordered by the gold judge, score the ensemble's accuracy"
        },
    )
    init: InitConfig = field(default_factory=InitConfig)
    reward: RewardConfig = field(
        default_factory=lambda: RewardConfig(
            model="minilm-l6",
            max_length=96,
            epochs=3.0,
            batch_size=16,
            micro_batch_size=16,
            learning_rate=5e-5,
            tensorboard=False,
        )
    )
    grpo: GRPOConfig = field(
        default_factory=lambda: GRPOConfig(
            max_new_tokens=24,
            batch_size=32,
            micro_batch_size=16,
            num_generations=4,
            max_steps=8,
            learning_rate=1e-5,
            save_every=2,
            sample_every=0,
            tensorboard=False,
        )
    )
    ppo: PPOConfig = field(
        default_factory=lambda: PPOConfig(
            max_new_tokens=24,
            batch_size=32,
            micro_batch_size=16,
            ppo_epochs=2,
            num_minibatches=2,
            max_steps=8,
            learning_rate=1e-5,
            save_every=2,
            sample_every=0,
            tensorboard=False,
        )
    )

    def validate(self) -> None:
        from rlhfkit.loop.selection import ENSEMBLE_MEASURES, MEASURES, METHODS

        if self.selection not in METHODS:
            raise ValueError(f"field 'selection': {self.selection!r} is not one of {list(METHODS)}")
        if self.uncertainty not in MEASURES:
            raise ValueError(f"field 'uncertainty': {self.uncertainty!r} is not one of {list(MEASURES)}")
        if self.labeler not in LABELERS:
            raise ValueError(f"field 'labeler': {self.labeler!r} is not one of {list(LABELERS)}")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"field 'algorithm': {self.algorithm!r} is not one of {list(ALGORITHMS)}")
        if self.kl_anchor not in KL_ANCHORS:
            raise ValueError(f"field 'kl_anchor': {self.kl_anchor!r} is not one of {list(KL_ANCHORS)}")
        if self.heldout_samples < 2:
            raise ValueError("field 'heldout_samples': needs >= 2 samples per held-out prompt to make pairs")
        if self.num_candidates < 2:
            raise ValueError("field 'num_candidates': needs >= 2 responses per prompt to make pairs")
        if self.selection == "uncertainty" and self.uncertainty in ENSEMBLE_MEASURES and self.ensemble_size < 2:
            raise ValueError(f"{self.uncertainty} selection needs ensemble_size >= 2 (disagreement between members)")
        if self.ensemble_size < 1 or self.rounds < 1 or self.labels_per_round < 1:
            raise ValueError("ensemble_size, rounds and labels_per_round must be >= 1")
        if not self.quick:  # under --quick, checked once quick's batch sizes are set (run: apply_quick)
            check_label_budget(self)
        if self.init.kind not in ("pretrained", "tiny"):
            raise ValueError(f"field 'init.kind': {self.init.kind!r} is not pretrained or tiny")
        from rlhfkit.rewards import check_reward_field

        check_reward_field("gold", self.gold)
        if self.ensemble_reward != "mean":
            from rlhfkit.rewards.sources import parse_ensemble_term

            try:
                parse_ensemble_term(f"{self.ensemble_reward}:member")
            except ValueError:
                raise ValueError(
                    f"field 'ensemble_reward': {self.ensemble_reward!r} is not mean, min or uwo=LAMBDA (LAMBDA >= 0)"
                ) from None
        if self.labeler_judge:
            check_reward_field("labeler_judge", self.labeler_judge)
        for section in (self.reward, getattr(self, self.algorithm)):
            section.validate()


def check_label_budget(config: LoopConfig) -> None:
    """Raise ValueError when simulated labels per round are fewer than one reward-model batch:
    round 1's ensemble trains on these labels alone (found here, not after the candidates)."""
    if config.labeler == "simulated" and config.labels_per_round < config.reward.batch_size:
        raise ValueError(
            f"field 'labels_per_round': {config.labels_per_round} labels are fewer than one batch of "
            f"the reward models (reward.batch_size {config.reward.batch_size}), which round 1 trains "
            "on alone; raise labels_per_round or lower reward.batch_size and "
            "reward.micro_batch_size"
        )


# --quick: a tiny Llama built from config (policy and reward backbone), a few steps per round (the
# command line wins over quick, and so does a config file that itself says quick: true).
QUICK: dict[str, object] = {
    "init.kind": "tiny",
    "init.hidden_size": 64,
    "init.num_layers": 2,
    "init.num_heads": 4,
    "init.vocab_size": 512,
    "n_eval_prompts": 16,
    "max_train_prompts": 128,
    "prompts_per_round": 24,
    "num_candidates": 3,
    "labels_per_round": 16,
    "max_new_tokens": 10,
    "eval_samples": 2,
    "reward.model": "init",
    "reward.epochs": 3.0,
    "reward.max_length": 48,
    "reward.learning_rate": 1e-3,
    "reward.batch_size": 16,
    "reward.micro_batch_size": 16,
    "grpo.max_steps": 3,
    "grpo.batch_size": 16,
    "grpo.micro_batch_size": 16,
    "grpo.max_new_tokens": 10,
    "grpo.learning_rate": 1e-3,
    "grpo.save_every": 1,
    "ppo.max_steps": 3,
    "ppo.batch_size": 16,
    "ppo.micro_batch_size": 8,
    "ppo.max_new_tokens": 10,
    "ppo.learning_rate": 1e-3,
    "ppo.save_every": 1,
}


def apply_quick(config: LoopConfig) -> tuple[list[str], dict[str, str]]:
    """Set the ``QUICK`` fields on ``config`` (in place) but those given explicitly (the command
    line; the config file when it says ``quick: true``: ``training.config.set_quick_fields``);
    returns ``(fields set, {field left as given: where})``. Quick's reward batch sizes also fit a
    given ``labels_per_round`` (round 1 trains on that many labels alone, so a batch above it
    would stop the run: ``--quick --labels_per_round 6`` trains batches of 6)."""
    from rlhfkit.training.config import set_quick_fields

    changed, kept = set_quick_fields(config, QUICK)
    if "labels_per_round" in kept:
        for dotted in ("reward.batch_size", "reward.micro_batch_size"):
            size = getattr(config.reward, dotted.split(".")[1])
            if dotted not in kept and size > config.labels_per_round:
                setattr(config.reward, dotted.split(".")[1], config.labels_per_round)
                kept[dotted] = f"quick's {size!r} fitted to the given labels_per_round"
                if dotted in changed:
                    changed.remove(dotted)
    return changed, kept
