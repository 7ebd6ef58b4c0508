"""A discriminator-style learned reward: a classifier that tells people's demonstrations from the
policy's own responses to the same prompts; its logit is the reward.

    rlhfkit reward discriminator --data finegrained-corrections --policy outputs/sft/model
    rlhfkit ppo --reward rm:outputs/discriminator/model ...

Where no one has labelled anything yet, demonstrations are still feedback: a response that reads
like what a person wrote is better than one that does not. The discriminator ``D(x)`` is trained
with binary cross-entropy, demonstrations as label 1 and the policy's samples as label 0 (the
reward recipe's ``classification`` objective, so any backbone it takes works), and the reward is
its logit ``log D(x) - log(1 - D(x))``: the log density ratio of the people's responses to the
policy's at the optimum of the classifier, the reward of adversarial imitation (GAIL, Ho & Ermon
2016; this form AIRL's, Fu et al. 2018). Trained once against a fixed policy it is a reward model
like any other (``rm:`` spec); retrained against each new policy it is the adversarial loop.

Steps: the policy answers every demonstration's prompt ``samples_per_prompt`` times
(``samples.jsonl``, kept and reused when rerun with the same settings, data file contents
included); the demonstrations (``prompt`` / ``completion`` records or a named set) are split by
prompt into a training and a held-out part; both parts become thumbs records (``train.jsonl`` /
``heldout.jsonl``; empty policy responses are left out and counted); the classifier trains on
the first (``reward``: the reward recipe's settings, resumable from its checkpoints; a changed
``train.jsonl`` trains afresh) and is scored on the second (``discriminator.json``): the
balanced accuracy of the sign of the logit, and the share of held-out (demonstration, policy
response) pairs of one prompt in which the demonstration scores higher.

Wired by the recipe (what the ``reward`` section says is replaced): ``reward.data``,
``eval_data``, ``eval_fraction`` (the split is by prompt, above), ``output_dir``
(``output_dir``), ``seed`` (``seed``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rlhfkit.data.loading import load_training_records
from rlhfkit.data.splits import draw_in_order, split_by_prompt
from rlhfkit.recipes.reward import RewardConfig
from rlhfkit.training.run_identity import with_content


@dataclass
class DiscriminatorConfig:
    data: str = field(
        default="finegrained-corrections",
        metadata={
            "help": "demonstrations: a prompt/completion JSONL/JSON file or finegrained-corrections / oasst-best"
        },
    )
    policy: str = field(
        default="smollm2-135m",
        metadata={"help": "the policy whose responses are the other class: smollm2-135m, a folder or .gguf"},
    )
    output_dir: str = field(
        default="outputs/discriminator",
        metadata={"help": "samples.jsonl, train/heldout.jsonl, the classifier (model/), discriminator.json"},
    )
    eval_fraction: float = field(
        default=0.2,
        metadata={
            "help": "demonstrations held out (with the policy's responses to their prompts) to score the classifier"
        },
    )
    max_demos: int = field(
        default=0, metadata={"help": "use at most this many demonstrations (0 = all), drawn by seed"}
    )
    samples_per_prompt: int = field(default=1, metadata={"help": "policy responses per demonstration prompt"})
    max_new_tokens: int = field(default=64, metadata={"help": "tokens per policy response"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the policy"})
    max_prompt_length: int = field(
        default=256, metadata={"help": "prompt tokens kept (the last ones) when the policy answers"}
    )
    chat_template: bool = field(
        default=False, metadata={"help": "render each prompt as a user turn with the policy's chat template"}
    )
    generation_batch_size: int = field(default=16, metadata={"help": "prompts per generation chunk"})
    seed: int = field(default=0, metadata={"help": "seed of the split, the sampling and the classifier"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch default)"})
    on_error: str = field(default="raise", metadata={"help": "bad demonstration records: raise, or skip and count"})
    reward: RewardConfig = field(
        default_factory=lambda: RewardConfig(
            objective="classification",
            epochs=2.0,
            batch_size=16,
            micro_batch_size=8,
            learning_rate=5e-5,
            max_length=256,
            eval_fraction=0.0,
        )
    )

    def validate(self) -> None:
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"field 'eval_fraction': {self.eval_fraction} is not in (0, 1)")
        if self.samples_per_prompt < 1 or self.max_new_tokens < 1 or self.generation_batch_size < 1:
            raise ValueError("fields 'samples_per_prompt', 'max_new_tokens' and 'generation_batch_size' must be >= 1")
        if self.max_demos < 0:
            raise ValueError("field 'max_demos' must be >= 0 (0 = all)")
        if self.temperature < 0:
            raise ValueError("field 'temperature' must be >= 0")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"field 'on_error': {self.on_error!r} is not one of ['raise', 'skip']")
        if self.reward.objective != "classification":
            raise ValueError(
                f"field 'reward.objective': a discriminator is a classifier (classification), "
                f"not {self.reward.objective!r}"
            )
        self.reward.validate()


def load_demonstrations(config: DiscriminatorConfig) -> list:
    """``CompletionRecord`` demonstrations; conversations are refused naming the first one (a
    policy answers a prompt text here, and a rendered conversation is not the text the
    classifier would later score)."""
    from rlhfkit.data.records import CompletionRecord
    from rlhfkit.training.config import ConfigError

    records = load_training_records(config.data, "sft", config.on_error)
    for i, r in enumerate(records):
        if not isinstance(r, CompletionRecord):
            raise ConfigError(
                f"{config.data}: record {i + 1} is a conversation (messages); the discriminator "
                f"takes prompt/completion demonstrations (the last assistant turn as the completion)"
            )
    if not records:
        raise ConfigError(f"{config.data}: no demonstrations")
    return draw_in_order(records, config.max_demos, config.seed)


def sample_policy(config: DiscriminatorConfig, prompts: list[str]) -> list[str]:
    """``samples_per_prompt`` responses of the policy to each prompt, in prompt order."""
    import torch

    from rlhfkit.models import load_policy
    from rlhfkit.rollout import SamplingConfig, make_sampler, repeat_each, rollout, step_seed
    from rlhfkit.training.logging import progress_bar

    model, tok = load_policy(config.policy)
    gen = make_sampler(
        model,
        SamplingConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature),
        tok.eos_token_id,
        tok.pad_token_id,
    )
    wanted = repeat_each(prompts, config.samples_per_prompt)
    out: list[str] = []
    bar = progress_bar(len(wanted), desc="discriminator: policy samples", unit="response")
    with torch.no_grad():
        for start in range(0, len(wanted), config.generation_batch_size):
            chunk = wanted[start : start + config.generation_batch_size]
            ro = rollout(
                gen,
                model,
                tok,
                chunk,
                seed=step_seed(config.seed, start, 91),
                max_prompt_length=config.max_prompt_length,
                chat_template=config.chat_template,
                behaviour_logprobs=False,
            )
            out += list(ro.responses)
            bar.update(len(chunk))
    bar.close()
    return out


def _sample_settings(config: DiscriminatorConfig) -> dict:
    keys = (
        "max_demos",
        "samples_per_prompt",
        "max_new_tokens",
        "temperature",
        "max_prompt_length",
        "chat_template",
        "seed",
        "on_error",
    )
    return {
        "policy": with_content(config.policy),
        "data": with_content(config.data),
        **{k: getattr(config, k) for k in keys},
    }


def score_heldout(model_dir: str, heldout: list[dict], max_length: int) -> dict:
    """Balanced accuracy of the logit's sign on the held-out records (the mean of the two
    classes' accuracies), the mean logit of each class, and the share of (demonstration, policy
    response) pairs of one demonstration (``demo``: its index) in which the demonstration scores
    higher."""
    from rlhfkit.rewards import build_reward

    score = build_reward(f"rm:{model_dir}", max_length=max_length)
    s = score([r["prompt"] for r in heldout], [r["completion"] for r in heldout]).tolist()
    human = {r["demo"]: x for r, x in zip(heldout, s) if r["label"]}
    policy = [(r["demo"], x) for r, x in zip(heldout, s) if not r["label"]]
    accuracy = (sum(x > 0 for x in human.values()) / len(human) + sum(x < 0 for _, x in policy) / len(policy)) / 2
    return {
        "heldout_demonstrations": len(human),
        "heldout_policy_responses": len(policy),
        "accuracy": accuracy,
        "mean_logit_demonstrations": sum(human.values()) / len(human),
        "mean_logit_policy": sum(x for _, x in policy) / len(policy),
        "demonstration_preferred": sum(human[d] > x for d, x in policy) / len(policy),
    }


def run(config: DiscriminatorConfig) -> dict:
    import copy

    from rlhfkit.data.readers import write_jsonl
    from rlhfkit.recipes import reward as reward_recipe
    from rlhfkit.recipes.common import set_threads

    config.validate()
    set_threads(config.threads)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    demos = load_demonstrations(config)
    prompts = [d.prompt for d in demos]

    # the policy's responses: the slow part, so kept and reused when the settings are the same
    settings = _sample_settings(config)
    samples_file, settings_file = out / "samples.jsonl", out / "samples_settings.json"
    wanted = [p for p in prompts for _ in range(config.samples_per_prompt)]
    kept = (
        [json.loads(x) for x in samples_file.read_text(encoding="utf-8").splitlines() if x]
        if samples_file.exists()
        and settings_file.exists()
        and json.loads(settings_file.read_text(encoding="utf-8")) == settings
        else None
    )
    if kept is not None and [r["prompt"] for r in kept] == wanted:  # the same prompts, in order
        samples = [r["response"] for r in kept]
        print(f"discriminator: {len(samples)} policy responses reused from {samples_file}")
    else:
        samples = sample_policy(config, prompts)
        write_jsonl(samples_file, [{"prompt": p, "response": r} for p, r in zip(wanted, samples)])
        settings_file.write_text(json.dumps(settings, indent=1), encoding="utf-8")

    # split by prompt: a prompt's demonstrations and the policy's responses to it fall on the
    # same side, so the held-out score never rests on a prompt the classifier trained on
    k = config.samples_per_prompt
    train_idx, held_idx = split_by_prompt(
        list(range(len(demos))), config.eval_fraction, config.seed, prompt_of=lambda i: prompts[i]
    )
    if not train_idx or not held_idx:
        raise ValueError(
            f"{len(demos)} demonstrations leave nothing to train on or hold out at eval_fraction {config.eval_fraction}"
        )

    # an empty response (the policy ended at once) is no text to classify: left out, and counted
    answers = [[s for s in samples[i * k : (i + 1) * k] if s.strip()] for i in range(len(demos))]
    empty = len(samples) - sum(map(len, answers))
    if empty:
        print(f"discriminator: {empty} of {len(samples)} policy responses are empty and left out")

    def records(idx: list[int], demo_field: bool = False) -> list[dict]:
        rows = []
        for i in idx:
            policy = answers[i]
            extra = {"demo": i} if demo_field else {}
            # in training each demonstration comes once per policy response to its prompt: equal
            # class weights, so the logit's zero is a density ratio of 1 (with 1:k classes it
            # would be shifted by log k and every response would look worse than it is)
            copies = 1 if demo_field else len(policy)
            rows += [{"prompt": demos[i].prompt, "completion": demos[i].completion, "label": True, **extra}] * copies
            rows += [{"prompt": demos[i].prompt, "completion": s, "label": False, **extra} for s in policy]
        return rows

    heldout = records(held_idx, demo_field=True)
    if not any(not r["label"] for r in heldout):
        raise ValueError("every held-out policy response is empty: nothing to score the classifier on")
    train_file = out / "train.jsonl"
    before = train_file.read_bytes() if train_file.exists() else None
    write_jsonl(train_file, records(train_idx))
    write_jsonl(out / "heldout.jsonl", heldout)

    rc = copy.deepcopy(config.reward)
    if before is not None and before != train_file.read_bytes():
        # new samples or demonstrations under the same file name: the reward recipe would take the
        # classifier (or checkpoint) trained on the old ones for this run's
        print("discriminator: the training records changed since the last run: the classifier trains afresh")
        rc.resume = False
    rc.data, rc.eval_data, rc.output_dir, rc.seed = str(out / "train.jsonl"), "", str(out), config.seed
    rc.eval_fraction = 0.0  # held out above, by prompt
    rc.drop_duplicates = False  # the demonstrations' repeats balance the classes
    if config.threads:
        rc.threads = config.threads
    from rlhfkit.training.config import ConfigError

    try:
        metrics = reward_recipe.run(rc)
    except ConfigError as e:  # the reward recipe's advice names its own flags; here they sit under reward.
        raise ConfigError(str(e).replace("--resume false", "--reward.resume false")) from None
    trained = sum(bool(answers[i]) for i in train_idx)
    report = {
        "model": str(out / "model"),
        "policy": config.policy,
        "data": config.data,
        "train_demonstrations": trained,
        "samples_per_prompt": k,
        "empty_policy_responses": empty,
        **score_heldout(str(out / "model"), heldout, rc.max_length),
        "train_loss": (metrics or {}).get("loss"),
    }
    (out / "discriminator.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(
        f"discriminator: saved {report['model']} (reward spec rm:{report['model']}); held-out balanced accuracy "
        f"{report['accuracy']:.3f} on {report['heldout_demonstrations']} demonstrations and "
        f"{report['heldout_policy_responses']} policy responses; the demonstration scores above the policy's "
        f"response in {report['demonstration_preferred']:.3f} of held-out pairs (mean logit "
        f"{report['mean_logit_demonstrations']:+.2f} vs {report['mean_logit_policy']:+.2f})"
    )
    return report
