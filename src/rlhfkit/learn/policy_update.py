"""The round's policy update: a LoRA adapter on the promoted version, trained by a recipe.

- ``grpo`` (default): ``recipes.grpo.run`` on the prompts users sent (the held-out share left
  out) against the round's reward model (``rm:PATH``), with the KL leash to v0: the reference is
  v0's model (``ref_model``), or the adapter switched off when the round starts from v0 itself.
- ``kto``: ``recipes.kto.run`` on the thumbs (and the choices, split in up and down);
  ``dpo``: ``recipes.dpo.run`` on choices and edits as pairs; ``sft``: ``recipes.sft.run`` on
  the users' edits. Users the defence weighed below 1/2 are left out (these recipes take no
  per-example weight); the reference is the parent version (log-probs cached once).

The recipe trains an adapter on the parent's weights (a merged model folder written once per
round, or v0's own model spec), checkpoints in the stage folder (``save_every``, so a killed
round resumes exactly) and saves the adapter beside the merged model (``recipes.common.save_final``);
the adapter is what the new version carries.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from rlhfkit.learn.defence import TRUSTED_WEIGHT

MIN_DIRECT_WEIGHT = TRUSTED_WEIGHT  # users below it are left out of kto / dpo / sft


def start_model(learn_dir: Path, parent: str, stage_dir: Path) -> str:
    """The model spec of the parent version: v0's base as it is; a later version merged and saved
    in ``stage_dir/start`` (written whole under a temporary name, so a kill leaves none or all)."""
    import os
    import shutil

    from rlhfkit.models import versions

    info = versions.version_info(learn_dir, parent)
    if info.get("parent") is None:
        return info["base"]
    out = stage_dir / "start"
    if not (out / "config.json").is_file():
        tmp = stage_dir / ".start.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model, tokenizer = versions.load_version(learn_dir, parent)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, out)
    return str(out)


def _write_jsonl(path: Path, rows: Sequence[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def direct_records(events: Sequence[dict], weights: dict[str, float], method: str) -> list[dict]:
    """The rows of the file a direct method trains on, from the users weighed >= 1/2."""
    rows = []
    for e in sorted(events, key=lambda e: e["id"]):
        if weights.get(e["end_user"], 1.0) < MIN_DIRECT_WEIGHT:
            continue
        kind, v, p = e["kind"], e["value"], e["prompt"]
        if method == "kto":
            if kind == "thumbs":
                rows.append({"prompt": p, "completion": e["responses"][0], "label": bool(v)})
            elif kind == "choice":
                rows.append({"prompt": p, "completion": e["responses"][int(v)], "label": True})
                rows.append({"prompt": p, "completion": e["responses"][1 - int(v)], "label": False})
        elif method == "dpo":
            if kind == "choice":
                rows.append({"prompt": p, "chosen": e["responses"][int(v)], "rejected": e["responses"][1 - int(v)]})
            elif kind == "edit":
                rows.append({"prompt": p, "chosen": v, "rejected": e["responses"][0]})
        elif method == "sft" and kind == "edit":
            rows.append({"prompt": p, "completion": v})
    return rows


def _fitting_batch(n: int, batch: int, micro: int) -> tuple[int, int]:
    """A batch no larger than the data (fit drops incomplete batches) and a micro-batch dividing it."""
    b = max(1, min(batch, n))
    return b, math.gcd(b, micro)


def train_policy(
    method: str,
    learn_dir: Path,
    parent: str,
    base: str,
    reward_model: str | None,
    prompts: Sequence[str],
    events: Sequence[dict],
    weights: dict[str, float],
    section,
    stage_dir: Path,
    seed: int,
    threads: int = 0,
) -> dict:
    """Train the round's adapter; returns ``{"adapter", "method", "examples", "metrics"}`` or
    ``{"adapter": None, "why"}`` when there is nothing to train on."""
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    model = start_model(learn_dir, parent, stage_dir)
    out = stage_dir / method
    common = dict(
        model=model,
        output_dir=str(out),
        seed=seed,
        learning_rate=section.learning_rate,
        save_every=section.save_every,
        keep_checkpoints=1,
        tensorboard=False,
        threads=threads,
        lora=section.lora,
    )
    if method == "grpo":
        from rlhfkit.recipes.grpo import GRPOConfig, run

        if not prompts:
            return {"adapter": None, "why": "no training prompts"}
        k = section.num_generations
        per_step = max(1, min(section.batch_size // k, len(prompts)))
        batch, micro = per_step * k, math.gcd(per_step * k, section.micro_batch_size)
        config = GRPOConfig(
            **common,
            prompts=_write_jsonl(stage_dir / "prompts.jsonl", [{"prompt": p} for p in prompts]),
            reward=f"rm:{reward_model}",
            ref_model=base if model != base else "",
            num_generations=k,
            batch_size=batch,
            micro_batch_size=micro,
            max_steps=section.max_steps,
            kl_coef=section.kl_coef,
            max_new_tokens=section.max_new_tokens,
            max_prompt_length=section.max_prompt_length,
            temperature=section.temperature,
            top_p=section.top_p,
            chat_template=section.chat_template,
            sample_every=0,
        )
        n = len(prompts)
    else:
        rows = direct_records(events, weights, method)
        if not rows:
            return {"adapter": None, "why": f"no {method} examples in the round's feedback"}
        batch, micro = _fitting_batch(len(rows), section.batch_size, section.micro_batch_size)
        data = _write_jsonl(stage_dir / f"{method}.jsonl", rows)
        steps = dict(max_steps=section.max_steps, epochs=section.epochs)
        if method == "kto":
            from rlhfkit.recipes.kto import KTOConfig as Config, run

            extra = dict(
                data_kind="thumbs",
                beta=section.beta,
                reference="cached",
                max_prompt_length=section.max_prompt_length,
                micro_batch_size=micro,
            )
        elif method == "dpo":
            from rlhfkit.recipes.dpo import DPOConfig as Config, run

            extra = dict(
                beta=section.beta,
                reference="cached",
                max_prompt_length=section.max_prompt_length,
                micro_batch_size=micro,
            )
        else:
            from rlhfkit.recipes.sft import SFTConfig as Config, run

            extra = dict(micro_batch_size=micro)
        config = Config(**common, **steps, data=data, eval_fraction=0.0, batch_size=batch, **extra)
        config.validate()
        n = len(rows)
    metrics = run(config)
    adapter = out / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise RuntimeError(f"{out}: the {method} run saved no adapter (is policy.lora.r 0?)")
    return {
        "adapter": str(adapter),
        "method": method,
        "examples": n,
        "start": model,
        "metrics": {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))},
    }
