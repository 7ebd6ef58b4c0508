"""The config every online-RL recipe (ppo, grpo, rloo, reinforce) extends, and its checks.

Batch vocabulary: ``batch_size`` = sequences (prompt, response) per step = prompts per step x
``num_generations``; each step makes ``ppo_epochs x num_minibatches`` optimiser steps, each over
``batch_size / num_minibatches`` sequences fed ``micro_batch_size`` at a time (gradient
accumulation). Losses are sums over a minibatch divided by minibatch-global counts
(``core.losses.token_weights``), so batch 8 x accumulation 1 and batch 4 x accumulation 2 make
the same update (TRL invariance tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlhfkit.recipes.common import LoraConfig
from rlhfkit.rewards import check_reward_field
from rlhfkit.rewards.adversarial import AdversarialConfig
from rlhfkit.rollout import ENGINES
from rlhfkit.training.loop import TrainingConfig


@dataclass
class OnlineConfig(TrainingConfig):
    """Fields every online-RL recipe shares (each recipe's config extends this)."""

    model: str = field(
        default="smollm2-135m",
        metadata={"help": "policy (and reference): smollm2-135m, a folder, a .gguf file or a HF name"},
    )
    ref_model: str = field(
        default="",
        metadata={
            "help": "KL reference, same forms as model (empty = the starting policy); "
            "e.g. the SFT model while model is a later policy. Needs model's tokenizer"
        },
    )
    prompts: str = field(
        default="movie-reviews",
        metadata={
            "help": 'movie-reviews (first words of the shared reviews), chat-first-turns (first human turns of OASST and HH-RLHF; with chat_template true) or a JSONL/JSON file of {"prompt": ...}'
        },
    )
    prompt_words: int = field(default=8, metadata={"help": "movie-reviews: words per prompt"})
    max_prompts: int = field(default=0, metadata={"help": "use at most this many prompts (0 = all)"})
    chat_template: bool = field(
        default=False, metadata={"help": "wrap each prompt as a user turn with the tokenizer's chat template"}
    )
    max_prompt_length: int = field(default=64, metadata={"help": "prompt tokens kept (the last ones)"})
    reward: str = field(
        default="vader",
        metadata={
            "help": "reward: a judge (vader, textblob, afinn, toxicity, readability, frequency:TEXT), rm:PATH, ensemble:mean|min|uwo=LAMBDA:PATH1,PATH2 (reward models combined), fn:pkg.mod:func, or a weighted sum like 0.7*vader+0.3*rm:PATH; empty with adversarial.discriminator: its logit alone"
        },
    )
    gold_reward: str = field(
        default="", metadata={"help": "a second reward only logged (gold judge), same syntax; empty = none"}
    )
    reward_batch_size: int = field(default=32, metadata={"help": "sequences per reward-model forward"})
    max_new_tokens: int = field(default=32, metadata={"help": "response tokens generated at most"})
    temperature: float = field(
        default=1.0, metadata={"help": "sampling temperature (also divides the logits of every log-prob pass)"}
    )
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling (1 = off)"})
    top_k: int = field(default=0, metadata={"help": "top-k sampling (0 = off)"})
    generation_engine: str = field(
        default="auto",
        metadata={
            "help": "sampler: auto (native for plain Llama-family models, else hf), native, or hf (model.generate)"
        },
    )
    num_generations: int = field(default=1, metadata={"help": "samples per prompt (k)"})
    batch_size: int = field(default=16, metadata={"help": "sequences per step (prompts per step x num_generations)"})
    micro_batch_size: int = field(
        default=4, metadata={"help": "sequences per forward/backward pass (gradient accumulation fills a minibatch)"}
    )
    num_minibatches: int = field(default=1, metadata={"help": "optimiser steps per epoch over the step's batch"})
    ppo_epochs: int = field(default=1, metadata={"help": "passes over each step's batch (shuffled minibatches)"})
    clip_eps: float = field(default=0.2, metadata={"help": "ratio clipping epsilon"})
    kl_coef: float = field(default=0.05, metadata={"help": "KL coefficient beta (initial value when adaptive)"})
    max_steps: int = field(default=100, metadata={"help": "rollout steps"})
    max_minutes: float = field(
        default=0.0,
        metadata={
            "help": "also stop after the step that ends this many minutes "
            "after the loop started (0 = off); a wall-clock budget, "
            "so the number of steps depends on the machine"
        },
    )
    learning_rate: float = field(default=1e-6, metadata={"help": "peak learning rate"})
    adam_eps: float = field(
        default=1e-5, metadata={"help": "AdamW epsilon: docs/PPO_CHECKLIST.md #11 (Adam eps and LR decay)"}
    )
    sample_every: int = field(
        default=10, metadata={"help": "write a table of sample generations every N steps (0 = off)"}
    )
    num_sample_rows: int = field(default=4, metadata={"help": "rows in each sample table"})
    lora: LoraConfig = field(default_factory=LoraConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)

    def validate(self) -> None:
        super().validate()
        if self.num_generations < 1 or self.batch_size % self.num_generations:
            raise ValueError(
                f"batch_size {self.batch_size} must be a multiple of num_generations {self.num_generations}"
            )
        if self.num_minibatches < 1 or self.batch_size % self.num_minibatches:
            raise ValueError(
                f"batch_size {self.batch_size} must be a multiple of num_minibatches {self.num_minibatches}"
            )
        if (self.batch_size // self.num_minibatches) % self.micro_batch_size:
            raise ValueError("the minibatch (batch_size / num_minibatches) must be a multiple of micro_batch_size")
        if self.max_steps < 1:
            raise ValueError("max_steps must be >= 1")
        if self.max_minutes < 0:
            raise ValueError("max_minutes must be >= 0")
        if self.generation_engine not in ENGINES:
            raise ValueError(f"generation_engine must be one of {list(ENGINES)}, got {self.generation_engine!r}")
        if self.reward or not self.adversarial.enabled:  # the discriminator's logit may be the whole reward
            check_reward_field("reward", self.reward)
        self.adversarial.validate()
        if self.gold_reward:
            check_reward_field("gold_reward", self.gold_reward)
