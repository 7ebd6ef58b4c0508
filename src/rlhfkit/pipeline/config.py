"""The configuration of ``rlhfkit pipeline``: one dataclass whose stage sections are the recipes'
own config dataclasses (``sft: SFTConfig``, ``reward: RewardConfig``, ``grpo: GRPOConfig`` ...),
read from YAML with ``--section.field value`` overrides like every other command.

Fields the pipeline wires between stages are set by the pipeline and ignore what the YAML says:

| section | wired fields |
|---|---|
| ``sft`` | ``model`` (the initial policy), ``output_dir`` |
| ``reward`` | ``data``, ``eval_data`` (the feedback stage's pairs), ``output_dir``; ``model: init`` = the initial policy |
| ``ppo`` / ``grpo`` / ``rloo`` | ``model`` (SFT model or initial policy), ``prompts`` (training prompts), ``reward`` (``rm:`` the trained RM), ``gold_reward`` (``gold``), ``output_dir`` |
| ``dpo`` / ``kto`` | ``model``, ``data``, ``eval_data`` (the feedback pairs), ``output_dir`` |
| ``eval`` | ``policy``, ``reference`` (the model optimisation started from), ``judge`` (the RM), ``gold``, ``prompts`` (held-out prompts), ``exclude_prompts``, ``output`` |

Every section's ``threads`` is the top-level ``threads`` when that is set (non-zero), and the
top-level ``chat_template`` is the ``chat_template`` of the online sections and ``eval``, and
decides how the feedback stage renders prompts: every stage that samples the policy renders a
prompt the same way. How they sample (``temperature``, ``top_p``, ``top_k``, ``max_new_tokens``
of ``feedback``, the online section and ``eval``) must agree, which ``validate`` checks: the
reward model learns from the feedback stage's samples, the policy is optimised on its own and
the gain is measured on the evaluation's, so all three must be answers to the same task.

The default values are the default preset, ``configs/pipeline_chat.yaml``: real first turns of
chat conversations (OASST, HH-RLHF) sent to SmolLM2-135M-Instruct through its chat template,
simulated labelers ranking its replies by the ``friendly`` judge (VADER tone minus toxicity) plus
noise, a MiniLM reward model, GRPO, and the ``friendly`` gold judge before / after.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlhfkit.eval.cli_eval import EvalConfig
from rlhfkit.recipes.dpo import DPOConfig
from rlhfkit.recipes.grpo import GRPOConfig
from rlhfkit.recipes.kto import KTOConfig
from rlhfkit.recipes.ppo import PPOConfig
from rlhfkit.recipes.reward import RewardConfig
from rlhfkit.recipes.rloo import RLOOConfig
from rlhfkit.recipes.sft import SFTConfig

ALGORITHMS = ("ppo", "grpo", "rloo", "dpo", "kto")
ONLINE = ("ppo", "grpo", "rloo")
FEEDBACK_SOURCES = ("dataset", "store", "simulated")
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "max_new_tokens")
# the default preset's sampling (configs/pipeline_chat.yaml): SmolLM2-135M-Instruct's replies read
# as text at temperature 0.7 with nucleus 0.9 (at temperature 1 many drift into word salad); top-k
# 50 first (HF generate's default) leaves the nucleus 50 tokens to sort instead of the whole 49k
# vocabulary at every token, a fifth of the sampling time; 40 tokens are two sentences, cut before
# most replies end (the report marks the cut); a rendered prompt (system turn + user turn of at
# most 25 words) is at most 68 tokens
CHAT_SAMPLING = {"temperature": 0.7, "top_k": 50, "top_p": 0.9, "max_new_tokens": 40, "max_prompt_length": 128}


@dataclass
class InitConfig:
    """Where the policy starts: a pretrained model, or a tiny model built from this config (quick
    runs and tests; randomly initialised, so it learns nothing a person would read as language)."""

    kind: str = field(
        default="pretrained",
        metadata={
            "help": "pretrained (model below) or tiny (a small Llama built from this config and saved to output_dir/init/model)"
        },
    )
    model: str = field(
        default="smollm2-135m", metadata={"help": "pretrained: smollm2-135m, a folder, a .gguf file or a HF name"}
    )
    hidden_size: int = field(default=64, metadata={"help": "tiny: hidden size"})
    num_layers: int = field(default=2, metadata={"help": "tiny: layers"})
    num_heads: int = field(default=4, metadata={"help": "tiny: attention heads"})
    vocab_size: int = field(
        default=512, metadata={"help": "tiny: byte-level BPE vocabulary, trained on the prompt texts"}
    )
    seed: int = field(default=0, metadata={"help": "tiny: initialisation seed"})


@dataclass
class FeedbackConfig:
    """Preference pairs for the reward model (and DPO / KTO), and the train / held-out prompts."""

    source: str = field(
        default="simulated",
        metadata={
            "help": "dataset (a pair file or hh-rlhf / finegrained / oasst), store (a feedback-app project, exported), or simulated (labelers judging pairs of the policy's own samples)"
        },
    )
    data: str = field(default="hh-rlhf", metadata={"help": "dataset: pair file or named set"})
    db: str = field(
        default="feedback.db", metadata={"help": "store: SQLite file or SQLAlchemy URL of the feedback app"}
    )
    project: str = field(default="", metadata={"help": "store: project name (pairwise or ranking tasks)"})
    aggregate: str = field(
        default="majority", metadata={"help": "store: none (a pair per label) or majority (per item)"}
    )
    max_pairs: int = field(
        default=0, metadata={"help": "dataset / store: use at most this many pairs (0 = all), drawn by seed"}
    )
    eval_fraction: float = field(
        default=0.2, metadata={"help": "pairs held out for the reward model's evaluation and calibration"}
    )
    prompts: str = field(
        default="chat-first-turns",
        metadata={
            "help": "prompt pool for simulated labelers and online RL: chat-first-turns (first human turns of OASST and HH-RLHF, data.shared_sets.load_chat_prompts), movie-reviews, a prompt file, or empty = the prompts of the pairs"
        },
    )
    prompt_words: int = field(default=8, metadata={"help": "movie-reviews: words per prompt"})
    n_eval_prompts: int = field(
        default=128, metadata={"help": "held-out prompts for the evaluation (never trained on)"}
    )
    max_train_prompts: int = field(
        default=0, metadata={"help": "training prompts kept for online RL (0 = all the rest)"}
    )
    n_label_prompts: int = field(default=80, metadata={"help": "simulated: prompts whose samples are judged"})
    num_candidates: int = field(
        default=4,
        metadata={
            "help": "simulated: samples per prompt, ranked by the labeler and expanded to all pairs (2 = one pair; 4 = six pairs, as InstructGPT's K-way rankings)"
        },
    )
    label_noise: float = field(
        default=0.3, metadata={"help": "simulated: std of the Gaussian noise added to the gold score before comparing"}
    )
    labeler: str = field(
        default="",
        metadata={"help": "simulated: the labelers' scorer (reward spec); empty = the pipeline's gold judge"},
    )
    max_new_tokens: int = field(default=40, metadata={"help": "simulated: response tokens sampled"})
    temperature: float = field(default=0.7, metadata={"help": "simulated: sampling temperature"})
    top_p: float = field(default=0.9, metadata={"help": "simulated: nucleus sampling (1 = off)"})
    top_k: int = field(default=50, metadata={"help": "simulated: top-k sampling (0 = off)"})
    batch_size: int = field(
        default=32, metadata={"help": "simulated: prompts per generation chunk (a chunk is the unit of resume)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the splits, the sampling and the label noise"})


@dataclass
class ReportConfig:
    title: str = field(default="", metadata={"help": "page title (empty = from the preset)"})
    n_token_samples: int = field(
        default=8, metadata={"help": "held-out responses shown with per-token reward and KL shading"}
    )
    n_sample_rows: int = field(default=12, metadata={"help": "rows of the policy-vs-reference sample table"})


@dataclass
class PipelineConfig:
    name: str = field(default="chat", metadata={"help": "a label for this pipeline (shown in the report)"})
    output_dir: str = field(
        default="outputs/pipeline_chat",
        metadata={"help": "each stage writes output_dir/<stage>/ with a stage.json; report.html at the top"},
    )
    quick: bool = field(
        default=False,
        metadata={
            "help": "shrink every stage (tiny model built from config, few steps): a smoke run of about a minute. It overrides the --config file's values (a full-size preset), never the command line's; a file that itself says quick: true keeps its values too"
        },
    )
    threads: int = field(
        default=0, metadata={"help": "torch CPU threads for every stage (0 = each section's own setting)"}
    )
    gold: str = field(
        default="friendly",
        metadata={
            "help": "gold judge (reward spec): simulated labelers' scorer, logged during RL, evaluated before / after; e.g. friendly, vader, toxicity"
        },
    )
    chat_template: bool = field(
        default=True,
        metadata={
            "help": "render every prompt as one user turn with the policy's chat template (feedback samples, online policy, evaluation alike)"
        },
    )
    run_sft: bool = field(default=False, metadata={"help": "run the SFT stage before everything else"})
    algorithm: str = field(
        default="grpo",
        metadata={"help": "policy optimisation: ppo, grpo, rloo (against the reward model) or dpo, kto (on the pairs)"},
    )
    clean_checkpoints: bool = field(
        default=True,
        metadata={"help": "delete a stage's checkpoint-N folders once it has finished (they only serve resuming it)"},
    )
    force: list[str] = field(
        default_factory=list, metadata={"help": "stages to rerun even when cached (comma-separated; 'all')"}
    )
    init: InitConfig = field(default_factory=InitConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    reward: RewardConfig = field(
        default_factory=lambda: RewardConfig(
            model="minilm-l6", max_length=128, epochs=3.0, batch_size=32, micro_batch_size=16, learning_rate=1e-4
        )
    )
    # the online sections sample as the feedback stage and the evaluation do (validate checks it)
    ppo: PPOConfig = field(
        default_factory=lambda: PPOConfig(
            **CHAT_SAMPLING,
            batch_size=32,
            micro_batch_size=16,
            ppo_epochs=2,
            num_minibatches=2,
            max_steps=30,
            learning_rate=1e-5,
            save_every=5,
            sample_every=5,
        )
    )
    grpo: GRPOConfig = field(
        default_factory=lambda: GRPOConfig(
            **CHAT_SAMPLING,
            batch_size=16,
            micro_batch_size=16,
            num_generations=4,
            max_steps=20,
            learning_rate=3e-5,
            save_every=5,
            sample_every=5,
        )
    )
    rloo: RLOOConfig = field(
        default_factory=lambda: RLOOConfig(
            **CHAT_SAMPLING,
            batch_size=32,
            micro_batch_size=16,
            num_generations=4,
            max_steps=36,
            learning_rate=1e-5,
            save_every=6,
            sample_every=6,
        )
    )
    dpo: DPOConfig = field(
        default_factory=lambda: DPOConfig(max_length=192, max_prompt_length=128, epochs=1.0, save_every=20)
    )
    kto: KTOConfig = field(
        default_factory=lambda: KTOConfig(max_length=192, max_prompt_length=128, epochs=1.0, save_every=20)
    )
    eval: EvalConfig = field(
        default_factory=lambda: EvalConfig(**CHAT_SAMPLING, max_prompts=0, batch_size=32, n_boot=1000)
    )
    report: ReportConfig = field(default_factory=ReportConfig)

    def validate(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"field 'algorithm': {self.algorithm!r} is not one of {list(ALGORITHMS)}")
        if self.feedback.source not in FEEDBACK_SOURCES:
            raise ValueError(
                f"field 'feedback.source': {self.feedback.source!r} is not one of {list(FEEDBACK_SOURCES)}"
            )
        if self.init.kind not in ("pretrained", "tiny"):
            raise ValueError(f"field 'init.kind': {self.init.kind!r} is not pretrained or tiny")
        if self.feedback.source == "store" and not self.feedback.project:
            raise ValueError("feedback.source store needs feedback.project (the feedback-app project to export)")
        if self.feedback.source == "simulated" and not self.feedback.prompts:
            raise ValueError("feedback.source simulated needs feedback.prompts (movie-reviews or a prompt file)")
        if self.feedback.source == "simulated" and self.feedback.num_candidates < 2:
            raise ValueError(
                f"field 'feedback.num_candidates': must be at least 2 (a pair), got {self.feedback.num_candidates}"
            )
        if not 0 < self.feedback.eval_fraction < 1:
            raise ValueError("feedback.eval_fraction must be in (0, 1)")
        if self.feedback.aggregate not in ("none", "majority"):
            raise ValueError("feedback.aggregate must be none or majority")
        from rlhfkit.rewards import check_reward_field

        check_reward_field("gold", self.gold)
        if self.feedback.labeler:
            check_reward_field("feedback.labeler", self.feedback.labeler)
        from rlhfkit.pipeline.stages import STAGES

        unknown = [s for s in self.force if s != "all" and s not in STAGES]
        if unknown:
            raise ValueError(f"field 'force': unknown stage(s) {unknown}; stages are {list(STAGES)}")
        if self.chat_template and self.algorithm in ("dpo", "kto"):
            raise ValueError(
                f"field 'chat_template': {self.algorithm} tokenises the pairs' prompts as plain text, "
                "so its policy would be trained on another rendering than it is evaluated on; "
                "set chat_template false (or use ppo, grpo, rloo)"
            )
        check_same_sampling(self)
        sections = [self.reward, self.eval, getattr(self, self.algorithm)] + ([self.sft] if self.run_sft else [])
        for section in sections:
            section.validate()


def sampling_sections(config: PipelineConfig) -> dict[str, object]:
    """The sections that sample the policy, by name: ``feedback`` (simulated labelers), the
    online algorithm's section, ``eval``."""
    sections: dict[str, object] = {}
    if config.feedback.source == "simulated":
        sections["feedback"] = config.feedback
    if config.algorithm in ONLINE:
        sections[config.algorithm] = getattr(config, config.algorithm)
    sections["eval"] = config.eval
    return sections


def check_same_sampling(config: PipelineConfig) -> None:
    """Raise ValueError naming the fields when the sections that sample the policy disagree on
    ``SAMPLING_FIELDS``."""
    sections = sampling_sections(config)
    for name in SAMPLING_FIELDS:
        values = {s: getattr(section, name) for s, section in sections.items()}
        if len(set(values.values())) > 1:
            raise ValueError(
                f"field '{name}' differs between the stages that sample the policy ("
                + ", ".join(f"{s}.{name} {v}" for s, v in values.items())
                + "): the reward model learns from the feedback samples and the gain is measured on the "
                "evaluation's, so set them together"
            )


# --quick: the fields it sets (everything else comes from the YAML file and the overrides; the
# command line wins over quick, and so does a config file that itself says quick: true).
# A tiny Llama built from config replaces SmolLM2 (too slow for a minute on 2 cores), and the
# reward model is a sequence classifier on that tiny backbone instead of MiniLM.
QUICK: dict[str, object] = {
    "init.kind": "tiny",
    "init.hidden_size": 64,
    "init.num_layers": 2,
    "init.num_heads": 4,
    "init.vocab_size": 512,
    "sft.max_steps": 4,
    "sft.batch_size": 8,
    "sft.micro_batch_size": 8,
    "sft.max_length": 128,
    "sft.learning_rate": 1e-3,
    "feedback.n_label_prompts": 96,
    "feedback.num_candidates": 2,
    "feedback.n_eval_prompts": 16,
    "feedback.max_train_prompts": 128,
    "feedback.max_pairs": 160,
    "feedback.max_new_tokens": 10,
    "feedback.batch_size": 48,
    "reward.model": "init",
    "reward.epochs": 2.0,
    "reward.max_length": 64,
    "reward.learning_rate": 1e-3,
    "reward.batch_size": 16,
    "reward.micro_batch_size": 16,
    "ppo.max_steps": 6,
    "ppo.batch_size": 16,
    "ppo.micro_batch_size": 8,
    "ppo.max_new_tokens": 10,
    "ppo.learning_rate": 1e-3,
    "ppo.save_every": 2,
    "ppo.sample_every": 2,
    "grpo.max_steps": 6,
    "grpo.batch_size": 16,
    "grpo.micro_batch_size": 16,
    "grpo.max_new_tokens": 10,
    "grpo.learning_rate": 1e-3,
    "grpo.save_every": 2,
    "grpo.sample_every": 2,
    "rloo.max_steps": 6,
    "rloo.batch_size": 16,
    "rloo.micro_batch_size": 16,
    "rloo.max_new_tokens": 10,
    "rloo.learning_rate": 1e-3,
    "rloo.save_every": 2,
    "rloo.sample_every": 2,
    "dpo.max_steps": 6,
    "dpo.batch_size": 16,
    "dpo.micro_batch_size": 8,
    "dpo.max_length": 64,
    "dpo.max_prompt_length": 32,
    "dpo.learning_rate": 1e-3,
    "dpo.save_every": 2,
    "kto.max_steps": 6,
    "kto.batch_size": 16,
    "kto.micro_batch_size": 8,
    "kto.max_length": 64,
    "kto.max_prompt_length": 32,
    "kto.learning_rate": 1e-3,
    "kto.save_every": 2,
    "eval.max_new_tokens": 10,
    "eval.max_prompt_length": 32,
    "eval.n_boot": 200,
    "report.n_token_samples": 6,
}


def apply_quick(config: PipelineConfig) -> tuple[list[str], dict[str, str]]:
    """Set the ``QUICK`` fields on ``config`` (in place) but those given explicitly (the command
    line; the config file when it says ``quick: true``: ``training.config.set_quick_fields``);
    returns ``(fields set, {field left as given: where})``."""
    from rlhfkit.training.config import set_quick_fields

    return set_quick_fields(config, QUICK)
