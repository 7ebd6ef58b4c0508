"""The adversarial loop of a discriminator reward: refit the discriminator on the policy's own
responses while the policy learns against it (GAIL, Ho & Ermon 2016; the logit reward of AIRL,
Fu et al. 2018).

``rlhfkit reward discriminator`` trains a classifier of people's demonstrations (label 1) against
a fixed policy's responses (label 0); its logit ``log D - log(1 - D)`` is a reward. Trained once,
it is a fixed target the policy can learn to exploit: what the classifier happened to use to tell
the starting policy apart (length, a stock phrase) is rewarded long after the policy has stopped
doing it. With ``--adversarial.discriminator PATH`` an online recipe (ppo, grpo, rloo, reinforce)
takes that classifier as a reward term and, every ``every`` steps, after the policy update,
takes ``updates`` gradient steps of the same binary cross-entropy on demonstrations drawn from
``demos`` against the rollout's responses. The classifier always separates the current policy
from the people, so the reward keeps pointing at what still differs.

Exactness: the discriminator is in the run's checkpoints (its weights in ``model.pt`` beside the
policy's, its AdamW moments in ``optimizer.pt`` as a second parameter group, its learning rate constant
while the policy's warms up and decays: the discriminator keeps learning to the last step), the draws are seeded by (seed, step), dropout is off, so a resumed
run continues exactly. The refitted discriminator is saved with the policy
(``output_dir/discriminator``, usable as ``rm:``). One process only (the update is not
all-reduced over ranks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from rlhfkit.data.loading import load_training_records
from rlhfkit.data.splits import draw_in_order

ADVERSARIAL_SALT = 4_409  # step_seed salt of the discriminator's draws


@dataclass
class AdversarialConfig:
    discriminator: str = field(
        default="",
        metadata={
            "help": "a trained discriminator (rlhfkit reward discriminator's output_dir/model) to refit on the policy's "
            "responses during the run, its logit a reward term (GAIL / AIRL); empty = off"
        },
    )
    demos: str = field(
        default="",
        metadata={
            "help": "demonstrations, the class the policy is told apart from: a prompt/completion file or "
            "finegrained-corrections / oasst-best"
        },
    )
    coef: float = field(
        default=1.0, metadata={"help": "weight of the discriminator's logit in the reward (added to --reward)"}
    )
    every: int = field(default=1, metadata={"help": "refit after every N policy steps"})
    updates: int = field(default=1, metadata={"help": "discriminator gradient steps per refit"})
    batch_size: int = field(
        default=16, metadata={"help": "demonstrations and policy responses (each) per gradient step"}
    )
    learning_rate: float = field(default=1e-5, metadata={"help": "discriminator learning rate (AdamW, constant)"})
    max_length: int = field(
        default=256, metadata={"help": "tokens of prompt + response the discriminator reads (left-truncated)"}
    )
    max_demos: int = field(default=0, metadata={"help": "demonstrations used at most (0 = all), drawn by seed"})

    @property
    def enabled(self) -> bool:
        return bool(self.discriminator)

    def validate(self) -> None:
        if not self.enabled:
            return
        if not self.demos:
            raise ValueError(
                "field 'adversarial.demos': the adversarial discriminator needs demonstrations "
                "(the class the policy's responses are told apart from)"
            )
        if self.every < 1 or self.updates < 1 or self.batch_size < 1 or self.max_length < 8:
            raise ValueError("fields 'adversarial.every', 'updates', 'batch_size' must be >= 1 and 'max_length' >= 8")
        if self.learning_rate <= 0:
            raise ValueError("field 'adversarial.learning_rate' must be > 0")
        if self.max_demos < 0:
            raise ValueError("field 'adversarial.max_demos' must be >= 0 (0 = all)")


class Adversary:
    """The discriminator being refitted: its reward (``logits``), its parameter group, its update."""

    def __init__(
        self,
        config: AdversarialConfig,
        model: torch.nn.Module,
        tokenizer: Any,
        demos: list,
        seed: int,
        max_grad_norm: float = 1.0,
        score_batch_size: int = 32,
    ):
        from rlhfkit.models import disable_dropout

        self.config = config
        self.model = disable_dropout(model)
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.tokenizer = tokenizer
        self.demos = demos
        self.demos_by_prompt: dict[str, list[int]] = {}
        for i, d in enumerate(demos):
            self.demos_by_prompt.setdefault(d.prompt, []).append(i)
        self.seed = int(seed)
        self.max_grad_norm = float(max_grad_norm)
        self.score_batch_size = int(score_batch_size)

    @classmethod
    def load(
        cls, config: AdversarialConfig, seed: int, max_grad_norm: float = 1.0, score_batch_size: int = 32
    ) -> "Adversary":
        from rlhfkit.data.records import CompletionRecord
        from rlhfkit.models import load_reward_model
        from rlhfkit.training.config import ConfigError

        demos = load_training_records(config.demos, "sft", "raise")
        for i, r in enumerate(demos):
            if not isinstance(r, CompletionRecord):
                raise ConfigError(
                    f"{config.demos}: record {i + 1} is a conversation (messages); the discriminator "
                    "takes prompt/completion demonstrations"
                )
        demos = [r for r in draw_in_order(demos, config.max_demos, seed) if r.completion.strip()]
        if not demos:
            raise ConfigError(f"field 'adversarial.demos': no non-empty demonstrations in {config.demos}")
        try:
            model, tokenizer = load_reward_model(config.discriminator, trained_head=True)
        except (OSError, ValueError) as e:
            raise ConfigError(f"field 'adversarial.discriminator': {e}") from None
        return cls(config, model, tokenizer, demos, seed, max_grad_norm, score_batch_size)

    # ------------------------------------------------------------------ reward
    def _batch(self, prompts: Sequence[str], responses: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        from rlhfkit.data.tokenize import pad_sequences, tokenize_pair

        seqs = [tokenize_pair(p, r, self.tokenizer, self.config.max_length) for p, r in zip(prompts, responses)]
        ids, mask = pad_sequences(seqs, self.tokenizer.pad_token_id, side="right")
        device = next(self.model.parameters()).device
        return ids.to(device), mask.to(device)

    @torch.no_grad()
    def logits(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """The discriminator's logit for each (prompt, response): ``log D - log(1 - D)``, ``[B]``."""
        from rlhfkit.models import reward_scores

        out = []
        for i in range(0, len(responses), self.score_batch_size):
            ids, mask = self._batch(prompts[i : i + self.score_batch_size], responses[i : i + self.score_batch_size])
            out.append(reward_scores(self.model, ids, mask).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    # ------------------------------------------------------------------ refit
    def param_group(self) -> dict:
        return {
            "params": [p for p in self.model.parameters() if p.requires_grad],
            "lr": self.config.learning_rate,
            "weight_decay": 0.0,
        }

    def _demo_for(self, prompt: str, anyone: int, u: float) -> int:
        """A demonstration of ``prompt`` (the ``u``-th share of them), else demonstration ``anyone``."""
        same = self.demos_by_prompt.get(prompt)
        return same[min(int(u * len(same)), len(same) - 1)] if same else anyone

    def due(self, step: int) -> bool:
        return (step + 1) % self.config.every == 0

    def update(self, prompts: Sequence[str], responses: Sequence[str], step: int, optimizer) -> dict:
        """After policy step ``step``: ``updates`` gradient steps of binary cross-entropy, a draw of
        this rollout's non-empty responses (label 0) against as many demonstrations (label 1), of
        the same prompts where the demonstrations hold them. ``optimizer`` holds the discriminator's parameter group; the
        policy's gradients are empty here, so only the discriminator moves. Returns the mean loss,
        accuracy of the logit's sign and mean logit per class, before each step."""
        from rlhfkit.models import reward_scores
        from rlhfkit.rollout import step_seed

        if not self.due(step):
            return {}
        own = [i for i, r in enumerate(responses) if r.strip()]
        if not own:
            return {"adversarial/skipped": 1.0}
        g = torch.Generator().manual_seed(step_seed(self.seed, step, ADVERSARIAL_SALT))
        n = min(self.config.batch_size, len(own))
        sums = {"loss": 0.0, "accuracy": 0.0, "logit_demos": 0.0, "logit_policy": 0.0}
        self.model.train()
        optimizer.zero_grad(set_to_none=True)
        for _ in range(self.config.updates):
            o = [own[i] for i in torch.randperm(len(own), generator=g)[:n].tolist()]
            # a demonstration of the same prompt where there is one, so that the classifier tells
            # responses apart and not prompts (as the discriminator recipe trains it); else any
            anyone = torch.randint(len(self.demos), (n,), generator=g).tolist()
            pick = torch.rand(n, generator=g).tolist()
            d = [self._demo_for(prompts[i], a, u) for i, a, u in zip(o, anyone, pick)]
            ids, mask = self._batch(
                [self.demos[i].prompt for i in d] + [prompts[i] for i in o],
                [self.demos[i].completion for i in d] + [responses[i] for i in o],
            )
            labels = torch.cat([torch.ones(n), torch.zeros(n)]).to(ids.device)
            logits = reward_scores(self.model, ids, mask).float()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
            loss.backward()
            if self.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.param_group()["params"], self.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                sums["loss"] += float(loss)
                sums["accuracy"] += float(((logits > 0).float() == labels).float().mean())
                sums["logit_demos"] += float(logits[:n].mean())
                sums["logit_policy"] += float(logits[n:].mean())
        self.model.eval()
        return {f"adversarial/{k}": v / self.config.updates for k, v in sums.items()}

    def save(self, output_dir) -> None:
        from pathlib import Path

        out = Path(output_dir) / "discriminator"
        self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)


class RewardWithAdversary:
    """``base(prompts, responses) + coef * discriminator logit`` (``base`` may be None: the logit
    alone). ``last_components`` holds both terms' unweighted scores for logging."""

    def __init__(self, base, adversary: Adversary):
        self.base, self.adversary = base, adversary
        self.last_components: dict[str, torch.Tensor] = {}

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        logit = self.adversary.logits(prompts, responses)
        self.last_components = {"adversarial": logit}
        total = self.adversary.config.coef * logit
        if self.base is not None:
            base = self.base(prompts, responses).float().reshape(-1)
            self.last_components["base"] = base
            total = total + base
        return total

    def __repr__(self) -> str:
        return (
            f"{self.base!r} + {self.adversary.config.coef:g}*adversarial"
            if self.base is not None
            else f"{self.adversary.config.coef:g}*adversarial"
        )
