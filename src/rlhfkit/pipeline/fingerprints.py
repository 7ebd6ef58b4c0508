"""What each stage's fingerprint of ``rlhfkit pipeline`` covers: ``stage_inputs`` gives a
stage's own settings and the fingerprints of the stages it reads, which ``pipeline.cache.run_stage``
hashes to decide whether a finished stage is still valid.

A field the pipeline wires itself (``WIRED``: a model, a data file from an earlier stage) is left
out of the settings, since the input's fingerprint covers it; fields added after runs were cached
are left out at their old values, so those runs stay cached.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlhfkit.pipeline.context import Context
from rlhfkit.pipeline.feedback_stage import export_store
from rlhfkit.training.run_identity import file_digest, stage_settings, with_content

WIRED = {
    "sft": {"model"},
    "reward": {"data", "eval_data"},
    "ppo": {"model", "prompts", "reward", "gold_reward", "chat_template"},
    "grpo": {"model", "prompts", "reward", "gold_reward", "chat_template"},
    "rloo": {"model", "prompts", "reward", "gold_reward", "chat_template"},
    "dpo": {"model", "data", "eval_data"},
    "kto": {"model", "data", "eval_data"},
    "eval": {"policy", "reference", "judge", "gold", "prompts", "exclude_prompts", "chat_template"},
}
# feedback fields added after runs were cached: left out of the fingerprint at these values (what
# those runs sampled with), so a finished run of an older preset stays cached
LATER_FEEDBACK_DEFAULTS = {"top_p": 1.0, "top_k": 0}
# feedback fields only simulated labelers read: not in the fingerprint of the other sources
SIMULATION_FIELDS = {
    "n_label_prompts",
    "num_candidates",
    "label_noise",
    "labeler",
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "batch_size",
}


def _feedback_settings(c) -> dict:
    own = {
        k: v
        for k, v in stage_settings(c.feedback).items()
        if not (k in LATER_FEEDBACK_DEFAULTS and v == LATER_FEEDBACK_DEFAULTS[k])
        and (c.feedback.source == "simulated" or k not in SIMULATION_FIELDS)
    }
    if c.feedback.source == "simulated" and c.chat_template:  # plain text: nothing, as before the field
        own["chat_template"] = True
    return own


def stage_inputs(ctx: Context, stage: str) -> tuple[Any, dict[str, str]]:
    """``(own settings, {input stage: fingerprint})`` of ``stage``; upstream fingerprints must
    already be in ``ctx.fingerprints``."""
    c, fps = ctx.config, ctx.fingerprints
    start = {"start": fps["sft"] if c.run_sft else fps["init"]} if stage not in ("init", "sft") else {}
    if stage == "init":
        own = stage_settings(c.init)
        if c.init.kind == "tiny":
            own["corpus"] = with_content(c.feedback.prompts)  # stage_init's tokenizer corpus
        else:
            own = {"kind": c.init.kind, "model": with_content(c.init.model)}
        return own, {}
    if stage == "sft":
        return stage_settings(c.sft, WIRED["sft"]), {"init": fps["init"]}
    if stage == "feedback":
        own = _feedback_settings(c)
        own["source_digest"] = _feedback_source_digest(c.feedback)
        if c.feedback.source == "simulated":
            own["labeler"] = c.feedback.labeler or c.gold
            return own, start
        return own, {}
    if stage == "reward":
        inputs = {"feedback": fps["feedback"]}
        if c.reward.model == "init":
            inputs["init"] = fps["init"]
        return stage_settings(c.reward, WIRED["reward"]), inputs
    if stage == "policy":
        own = {"algorithm": c.algorithm, **stage_settings(getattr(c, c.algorithm), WIRED[c.algorithm])}
        inputs = {**start, "feedback": fps["feedback"]}
        if c.algorithm in ("ppo", "grpo", "rloo"):
            inputs["reward"] = fps["reward"]
            own["gold"] = c.gold
            own["chat_template"] = c.chat_template
        return own, inputs
    if stage == "eval":
        own = {
            **stage_settings(c.eval, WIRED["eval"]),
            "gold": c.gold,
            "n_token_samples": c.report.n_token_samples,
            "kl_coef": kl_coef(c),
            "chat_template": c.chat_template,
        }
        return own, {**start, "policy": fps["policy"], "reward": fps["reward"], "feedback": fps["feedback"]}
    if stage == "report":
        own = {"report": stage_settings(c.report), "name": c.name, "algorithm": c.algorithm, "version": 1}
        return own, {k: v for k, v in fps.items() if k != "report"}
    raise KeyError(stage)


def _feedback_source_digest(fb) -> str:
    """What the feedback's source holds: a pair file's content hash; a store project's exported
    pairs (labels added in the app change it, so the reward model retrains); a named set's name."""
    if fb.source == "dataset":
        return file_digest(fb.data) if Path(fb.data).is_file() else f"named:{fb.data}"
    if fb.source == "store":
        import hashlib

        h = hashlib.sha256()
        for r in export_store(fb):
            h.update(json.dumps(r.to_dict(), sort_keys=True).encode())
        return h.hexdigest()
    return ""


def kl_coef(c) -> float:
    """The beta shown in the per-token shaped reward ``-beta * KL (+ score on the last token)``."""
    section = getattr(c, c.algorithm)
    if c.algorithm == "dpo":
        from rlhfkit.recipes.dpo import DEFAULT_BETA

        return float(section.beta or DEFAULT_BETA.get(section.loss, 0.1) or 0.1)
    if c.algorithm == "kto":
        return float(section.beta)
    return float(section.kl_coef)
