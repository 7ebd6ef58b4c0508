"""``rlhfkit loop``: iterated online RLHF with active labelling.

    rlhfkit loop --config configs/loop_sentiment.yaml                  # uncertainty selection
    rlhfkit loop --config configs/loop_sentiment.yaml --selection random --output_dir outputs/loop_random
    rlhfkit loop --config configs/loop_sentiment.yaml --labeler store --db feedback.db   # people label

``setup/`` (once): the initial policy (a pretrained model, or a tiny one built from config), the
train / held-out prompt split, gold-judged held-out pairs (reward-model accuracy) and the initial
policy's gold score. Then each round N writes ``round-N/<stage>/``:

1. ``candidates``: the current policy samples ``num_candidates`` responses for each of
   ``prompts_per_round`` training prompts (fresh prompts every round, seeded by (seed, N));
2. ``select``: ``labels_per_round`` of the candidate pairs: the most uncertain under the previous
   round's reward-model ensemble (``loop/selection.py``), or random; round 1 is random for both
   (no ensemble yet), so the two selections share it;
3. ``labels``: simulated labelers (gold + noise), or people in the feedback app (items in project
   ``PREFIX-round-N``, the loop waits for the labels; ``loop/labelers.py``); ``all_pairs.jsonl``
   = every label so far;
4. ``reward``: the ensemble retrained from scratch on all labels (``loop/ensemble.py``);
5. ``policy``: a GRPO or PPO round (the recipes, unchanged) from the current policy against the
   ensemble mean (or, ``ensemble_reward``, its minimum or mean - lambda * variance: conservative
   rewards against over-optimising one member's errors), with KL to the policy the round started
   from (see below); its ``model/`` is the
   new current policy, which generates the next round's candidates (and for the app);
6. ``eval``: gold score of the new policy on the held-out prompts, KL to the initial policy, the
   ensemble's accuracy on the gold-judged held-out pairs.

Resume: each stage is run by ``pipeline.cache.run_stage`` with a fingerprint that contains its
settings and the fingerprints of what it reads (the previous round's policy and ensemble, this
round's labels ...), so a rerun skips every finished stage, continues an interrupted one in place
(the recipes resume from their ``checkpoint-N``; the ensemble keeps its finished members; a
store-labelled round finds its project and waits again) and nothing before it runs twice.
``loop_state.json`` says where the loop is (round, stage, current policy), ``curve.json`` holds
gold score vs number of labels after every round, and ``report.html`` shows them (rewritten after
every round; ``loop/report.py``). Raising ``rounds`` continues a finished loop.
This module is the loop's bookkeeping (its state, the order of the stages, sharing round 1);
the stages themselves are in ``loop/setup.py`` (setup, evaluation) and ``loop/rounds.py``.

KL anchor (``kl_anchor``): ``round`` (the default) regularises each round towards the policy it
starts from (a trust region per round, as in iterated online RLHF where each round's policy is
the next round's reference), so the drift from the initial policy can grow round after round;
``initial`` takes the initial policy as every round's reference (``ref_model`` of the recipes),
one leash for the whole loop, as when an SFT model anchors all of RLHF. Either way the
cumulative drift is reported as the KL to the initial policy in every round's ``eval``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from rlhfkit.loop.config import LoopConfig, apply_quick, check_label_budget
from rlhfkit.loop.layout import ROUND_STAGES, round_dir
from rlhfkit.loop.report import render_loop_report
from rlhfkit.loop.rounds import Loop
from rlhfkit.loop.setup import stage_setup
from rlhfkit.pipeline.cache import run_stage
from rlhfkit.training.run_identity import stage_fingerprint, stage_settings, with_content

__all__ = ["LoopConfig", "run", "share_first_round"]


# ----------------------------------------------------------------------------- the loop
def _write_state(out: Path, state: dict) -> None:
    tmp = out / ".loop_state.json.tmp"
    tmp.write_text(json.dumps(state, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, out / "loop_state.json")


def read_loop_state(out: Path) -> dict | None:
    """The state an earlier run left in ``out/loop_state.json``; None when there is none, or (with a
    warning line) when it is unreadable: it only carries what the stages' records hold too (the
    finished rounds, the current policy), which the loop finds again by their fingerprints."""
    path = out / "loop_state.json"
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(state, dict):
            return state
        problem = f"a JSON {type(state).__name__}, not an object"
    except (OSError, ValueError) as err:  # ValueError: JSONDecodeError and UnicodeDecodeError
        problem = f"{type(err).__name__}: {err}"
    print(
        f"rlhfkit: warning: {path} is unreadable ({problem}); the loop starts its state afresh "
        "(finished stages are still skipped by fingerprint)",
        file=sys.stderr,
        flush=True,
    )
    return None


def run(config: LoopConfig) -> dict:
    """Run (or resume) the loop; returns ``{"curve": [...], "stages": {...}, "summary": {...}}``."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if config.quick:
        from rlhfkit.training.config import describe_quick

        changed, kept = apply_quick(config)
        print(f"loop: {describe_quick(config, changed, kept)}")
        try:
            config.validate()
            check_label_budget(config)
        except ValueError as err:
            from rlhfkit.training.config import ConfigError

            raise ConfigError(f"--quick: {err}") from None
    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    old = read_loop_state(out)
    if old is not None:
        print(
            f"loop: {out}/loop_state.json: last at round {old.get('round')} stage {old.get('stage')} "
            f"({old.get('status')}); finished stages are skipped by fingerprint"
        )
    loop = Loop(config, out)
    t0 = time.perf_counter()
    records: dict[str, dict] = {}
    # what the loop had finished stays in the state until it is redone (the app's live generation
    # follows ``rounds_done``); an earlier run is summed up, not nested, so the file does not grow
    old = old or {}
    state = {
        "name": config.name,
        "selection": config.selection,
        "rounds": config.rounds,
        "round": 0,
        "stage": "setup",
        "status": "running",
        "policy": old.get("policy"),
        "curve": old.get("curve", []),
        "rounds_done": old.get("rounds_done", 0),
        "started": time.time(),
        "runs": int(old.get("runs", 1 if old else 0)) + 1,
        "previous": {k: old.get(k) for k in ("status", "round", "stage", "started", "finished")} if old else None,
    }

    def step(key: str, stage_dir: Path, own, inputs, fn) -> dict:
        r = int(key.split("/")[0]) if "/" in key else 0
        state.update(round=r, stage=key.split("/")[-1], status="running")
        _write_state(out, state)
        fp = stage_fingerprint(f"loop:{key}", own, inputs)
        loop.fps[key] = fp
        rec = run_stage(f"round {key}" if "/" in key else key, stage_dir, fp, fn, prefix="loop")
        loop.outputs[key] = rec.get("outputs") or {}
        records[key] = rec
        return rec

    own = {
        "init": stage_settings(config.init)
        if config.init.kind == "tiny"
        else {"model": with_content(config.init.model)},
        "prompts": with_content(config.prompts),
        "prompt_words": config.prompt_words,
        "n_eval_prompts": config.n_eval_prompts,
        "max_train_prompts": config.max_train_prompts,
        "seed": config.seed,
        "gold": config.gold,
        "eval_samples": config.eval_samples,
        "max_new_tokens": config.max_new_tokens,
        "temperature": config.temperature,
    }
    if config.heldout_samples != 2:  # only when set, so loops run before the field existed stay cached
        own["heldout_samples"] = config.heldout_samples
    step("setup", out / "setup", own, {}, lambda d: stage_setup(config, d))
    ev0 = loop.outputs["setup"]["eval"]
    curve = [{"round": 0, "labels": 0, "gold": ev0["gold"], "kl": 0.0, "rm_accuracy": None}]
    for r in range(1, config.rounds + 1):
        for stage in ROUND_STAGES:
            s_own, s_inputs = loop.spec(r, stage)
            step(f"{r}/{stage}", loop.rdir(r) / stage, s_own, s_inputs, lambda d, r=r, s=stage: getattr(loop, s)(r, d))
        ev = loop.outputs[f"{r}/eval"]
        curve.append(
            {
                "round": r,
                "labels": ev["labels"],
                "gold": ev["gold"],
                "kl": ev["kl"],
                "rm_accuracy": ev.get("rm_accuracy"),
            }
        )
        state.update(policy=loop.outputs[f"{r}/policy"]["model"], curve=curve, rounds_done=r)
        _write_state(out, state)
        (out / "curve.json").write_text(json.dumps(curve, indent=1), encoding="utf-8")
        render_loop_report(out)
    state.update(status="done", stage="done", finished=time.time())
    _write_state(out, state)
    (out / "curve.json").write_text(json.dumps(curve, indent=1), encoding="utf-8")
    render_loop_report(out)
    print(f"loop: report {out / 'report.html'}")
    summary = {
        "name": config.name,
        "selection": config.selection,
        "seconds": round(time.perf_counter() - t0, 2),
        "ran": [k for k, v in records.items() if v["ran"]],
        "skipped": [k for k, v in records.items() if not v["ran"]],
        "policy": state["policy"],
        "curve": curve,
    }
    (out / "loop.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    print("loop: gold vs labels: " + ", ".join(f"{p['labels']}: {p['gold']:.4f}" for p in curve))
    print(f"loop: done in {summary['seconds']:.1f} s; current policy {state['policy']}")
    return {"curve": curve, "stages": records, "summary": summary}


def share_first_round(random_dir: str | Path, active_dir: str | Path) -> list[str]:
    """Start a loop in ``active_dir`` from another loop's finished ``setup/`` and ``round-1/`` (a
    comparison of selections: round 1 selects at random whatever ``selection`` says, since there
    is no ensemble yet, so two loops that differ only in ``selection`` have the same fingerprints
    for them and computing them twice only costs time).

    Only a folder whose every stage is ``done`` is shared (an unfinished stage would be resumed
    in place, writing through the links). Files are hard links, not copies of the models; each
    ``stage.json`` is written anew (not through its link) with every recorded path under
    ``random_dir``, as given or absolute, renamed to the same path under ``active_dir``; a record
    that would still name ``random_dir`` stops the sharing. If the settings do differ, the loop
    in ``active_dir`` empties and reruns only its own folders. A folder already in ``active_dir``
    is left alone. Returns the folders shared."""
    import re

    random_dir, active_dir = Path(random_dir), Path(active_dir)
    # the folder's spellings, each only as a whole path component run ("runs/a" is not in "runs/a_sft")
    absolute = random_dir.resolve()
    spellings = sorted({str(random_dir), str(absolute), os.path.relpath(absolute)}, key=len, reverse=True)
    pattern = re.compile("(?<![\\w./-])(?:" + "|".join(re.escape(x) for x in spellings) + ")(?![\\w.-])")
    active_dir.mkdir(parents=True, exist_ok=True)
    shared = []
    for name in ("setup", round_dir(random_dir, 1).name):
        src, dst = random_dir / name, active_dir / name
        records = sorted(src.rglob("stage.json")) if src.is_dir() else []
        if dst.exists() or not records or any((read_json(r) or {}).get("status") != "done" for r in records):
            continue
        tmp = active_dir / f".{name}.sharing"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp, copy_function=os.link)
        for record in tmp.rglob("stage.json"):
            text = pattern.sub(lambda m: str(active_dir), record.read_text(encoding="utf-8"))
            if pattern.search(text):
                raise RuntimeError(f"{record}: still names {random_dir} after renaming")
            record.unlink()  # a hard link: writing in place would change the other loop's record
            record.write_text(text, encoding="utf-8")
        os.replace(tmp, dst)
        shared.append(name)
    return shared


def read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: JSONDecodeError and UnicodeDecodeError
        return None
    return value if isinstance(value, dict) else None
