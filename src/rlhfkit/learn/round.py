"""One round of the learner: cached, resumable stages, then promotion or refusal.

``rounds/round-N/`` holds one folder per stage, each run through ``pipeline.cache.run_stage``
(``stage.json`` with a fingerprint of the stage's settings and of what it reads; a stage killed
while running resumes in its folder, the trainers from their newest checkpoint):

1. ``inputs``: the feedback snapshot (``learn.inputs``), written first, with the parent (the
   promoted version at the round's start; the adapter is trained on it, or on v0 after a
   forget) and the candidate's name fixed in it;
2. ``defence``: per-user caps and consensus weights (``learn.defence``) -> ``defence.json``;
3. ``reward``: the reward model refit on the weighted verdicts (``learn.reward_update``);
4. ``policy``: the adapter (``learn.policy_update``);
5. ``gate``: the candidate against the parent on held-out prompts (``learn.gate``) -> ``gate.json``.

Then, each step idempotent (a kill between two of them is repaired by the next start): the
version folder written whole (``models.versions.save_version``), ``current.json`` replaced
(``promote``) and the outcome logged (``versions.jsonl``), or the refusal logged; ``round.json``;
and last ``learn_state.json`` (watermark, rounds done, ids trained on, reward model), so a round
counts once and its feedback is never counted twice.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

from rlhfkit.learn import inputs as inputs_mod
from rlhfkit.learn import lineage
from rlhfkit.learn.config import FOLLOW_FIELDS, LearnConfig
from rlhfkit.models import versions
from rlhfkit.pipeline.cache import run_stage
from rlhfkit.training.run_identity import file_digest
from rlhfkit.training.run_identity import stage_fingerprint as fingerprint
from rlhfkit.training.run_identity import stage_settings as settings

STAGES = ("inputs", "defence", "reward", "policy", "gate")


_stage_callbacks: list[Callable[[str], None]] = []


def add_stage_end_callback(callback: Callable[[str], None]) -> Callable[[], None]:
    """Call ``callback(name)`` after each stage of a round is recorded done (``inputs``,
    ``defence``, ``reward``, ``policy``, ``gate``) and once the new version is written but not yet
    current (``version``), as ``training.callbacks`` does after training steps: for code that runs
    the learner in its own process (progress reports, snapshots; the resume tests SIGKILL it
    there). Returns a function that removes it again."""
    _stage_callbacks.append(callback)
    return lambda: _stage_callbacks.remove(callback) if callback in _stage_callbacks else None


def _stage_ended(name: str) -> None:
    for callback in list(_stage_callbacks):
        callback(name)


def round_seed(seed: int, round_no: int) -> int:
    return int(seed) * 1_000_003 + int(round_no)


def next_version_name(learn_dir: Path) -> str:
    numbers = [
        int(m.group(1)) for v in versions.list_versions(learn_dir) if (m := re.fullmatch(r"v(\d+)", v["version"]))
    ]
    return f"v{max(numbers, default=0) + 1}"


def _write(path: Path, obj: dict) -> str:
    versions.atomic_write_json(path, obj)
    return str(path)


def run_round(config: LearnConfig, learn_dir: Path, state: dict, round_no: int, log=print) -> dict:
    """Run (or resume, or finish recording) round ``round_no``; returns ``round.json``."""
    from rlhfkit.learn import defence as defence_mod
    from rlhfkit.learn.gate import run_gate
    from rlhfkit.learn.policy_update import train_policy
    from rlhfkit.learn.reward_update import crossfit_scores_fn, examples_of, score_events_fn, train_reward_model

    rdir = learn_dir / "rounds" / f"round-{round_no}"
    if (rdir / "round.json").is_file():  # finished, but the state was not written: record it now
        return _advance_state(learn_dir, state, versions.read_json_object(rdir / "round.json"))
    seed = round_seed(config.seed, round_no)
    own = settings(config, wired=FOLLOW_FIELDS)

    def inputs_fn(d: Path) -> dict:
        key = inputs_mod.holdout_key(learn_dir)
        earlier = inputs_mod.saved_records(learn_dir, round_no)
        snap, stored = inputs_mod.snapshot(
            config.store, config.prefix, state, round_no, config.gate.holdout_share, key, earlier
        )
        parent = versions.current_version(learn_dir)
        # after a forget the round starts over from v0 (reward model from its backbone, adapter on
        # v0): the versions since were trained with the erased feedback
        snap.update(
            parent=parent,
            candidate=next_version_name(learn_dir),
            adapter_on="v0" if snap["rebuild"] else parent,
            previous_reward_model=None if snap["rebuild"] else state.get("reward_model"),
        )
        # an erasure reaches the earlier rounds' saved copies every round, not only when it forces
        # a rebuild (a user whose verdicts were all on held-out prompts trained nothing, but is
        # named in who sent what); ids go only with a rebuild (a changed mind's old verdict stays
        # on record as what that round trained on)
        inputs_mod.scrub_saved_inputs(
            learn_dir, round_no, stored["ids"] if snap["rebuild"] else None, stored["prompts"], stored["users"]
        )
        return {"inputs": _write(d / "inputs.json", snap)}

    # the snapshot depends on these alone: changing a later stage's settings before a restart
    # reruns that stage on the same inputs, not the round on newer feedback
    snap_settings = {
        "round": round_no,
        "prefix": config.prefix,
        "holdout_share": config.gate.holdout_share,
        "base": own.get("model"),
    }
    rec = run_stage("inputs", rdir / "inputs", fingerprint("inputs", snap_settings, {}), inputs_fn, log=log)
    _stage_ended("inputs")
    snap = versions.read_json_object(rec["outputs"]["inputs"])
    fps = {
        "inputs": file_digest(rec["outputs"]["inputs"]),
        "learner": fingerprint("learner", {"seed": config.seed, "model": own.get("model")}, {}),
    }

    base = versions.version_info(learn_dir, "v0")["base"]
    prev = snap["previous_reward_model"]
    # the reward update's start: the last round's reward model, else the backbone
    reward_start = str(learn_dir / prev) if prev else (config.reward.model or base)

    # a user's weight rests on their checked verdicts of every earlier round, too (a rebuild
    # judges every stored verdict itself: the earlier tallies would count them twice)
    history = {} if snap["rebuild"] else inputs_mod.judged_before(learn_dir, round_no)

    def defence_fn(d: Path) -> dict:
        score = score_events_fn(reward_start, config.reward.max_length) if prev else None
        s = config.defence
        crossfit = crossfit_scores_fn(reward_start, config.reward, seed, d, config.threads, s.crossfit_max_steps)
        result = defence_mod.defend(
            snap["train"],
            s.max_per_user,
            s.honest_agreement,
            s.min_judged,
            s.min_consensus_agreement,
            score,
            crossfit_fn=crossfit,
            folds=s.crossfit_folds,
            history=history,
        )
        kept_ids = [e["id"] for e in result.pop("kept")]
        return {"defence": _write(d / "defence.json", {**result, "kept_ids": kept_ids})}

    # the cross-fitted consensus trains with the reward section's recipe: its settings count
    fps["defence"] = fingerprint(
        "defence",
        {**settings(config.defence), "reward": settings(config.reward), **({"history": history} if history else {})},
        fps,
    )
    rec = run_stage("defence", rdir / "defence", fps["defence"], defence_fn, log=log)
    _stage_ended("defence")
    defence = versions.read_json_object(rec["outputs"]["defence"])
    kept_ids = set(defence["kept_ids"])
    kept = [e for e in snap["train"] if e["id"] in kept_ids]
    weights = {u: v["weight"] for u, v in defence["per_user"].items()}
    # prompts only users at weight 0 sent (in this round, or when they last took part) are left
    # out of training and of the gate: an adversary must not choose what the policy trains on
    senders = snap.get("prompt_senders") or {}
    judged = {**inputs_mod.latest_weights(learn_dir, round_no), **weights}
    train_prompts = defence_mod.usable_prompts(snap["train_prompts"], senders, judged)
    holdout_usable = defence_mod.usable_prompts(snap["holdout_prompts"], senders, judged)
    holdout_prompts = holdout_usable[: config.gate.max_prompts]
    left_out = len(snap["train_prompts"]) + len(snap["holdout_prompts"]) - len(train_prompts) - len(holdout_usable)
    prompts_lineage = {"train": len(train_prompts), "holdout": len(holdout_prompts), "left_out": left_out}

    def reward_fn(d: Path) -> dict:
        examples = examples_of(kept, weights, config.reward.thumbs_weight, config.reward.rating_weight)
        trained = train_reward_model(reward_start, examples, d, config.reward, seed, config.threads)
        return {**trained, "start": reward_start}

    fps["reward"] = fingerprint("reward", settings(config.reward), fps)
    rec = run_stage("reward", rdir / "reward", fps["reward"], reward_fn, log=log)
    _stage_ended("reward")
    reward_model = rec["outputs"]["model"]
    # the state and the lineage name it inside LEARN_DIR, so the folder can move
    reward_in_dir = os.path.relpath(reward_model, learn_dir)

    def policy_fn(d: Path) -> dict:
        return train_policy(
            config.method,
            learn_dir,
            snap["adapter_on"],
            base,
            reward_model,
            train_prompts,
            kept,
            weights,
            config.policy,
            d,
            seed,
            config.threads,
        )

    # the prompts hang on earlier rounds' weights too (latest_weights): they count, not only the inputs
    fps["policy"] = fingerprint(
        "policy", {"method": config.method, **settings(config.policy), "prompts": train_prompts}, fps
    )
    rec = run_stage("policy", rdir / "policy", fps["policy"], policy_fn, log=log)
    _stage_ended("policy")
    policy = rec["outputs"]

    def gate_fn(d: Path) -> dict:
        if policy.get("adapter") is None:
            figures = {"passed": False, "reasons": [policy.get("why", "no candidate")]}
        else:
            figures = run_gate(
                learn_dir,
                snap["parent"],
                policy["adapter"],
                reward_model,
                holdout_prompts,
                config.gate,
                config.policy,
                seed,
                adapter_on=snap["adapter_on"],
            )
        return {"gate": _write(d / "gate.json", figures)}

    fps["gate"] = fingerprint("gate", {**settings(config.gate), "prompts": holdout_prompts}, fps)
    rec = run_stage("gate", rdir / "gate", fps["gate"], gate_fn, log=log)
    _stage_ended("gate")
    gate = versions.read_json_object(rec["outputs"]["gate"])

    feedback = lineage.feedback_lineage(kept, defence, inputs_mod.id_ranges)
    outcome = {
        "round": round_no,
        "watermark": snap["watermark"],
        "parent": snap["parent"],
        "candidate": snap["candidate"],
        "reward_model": reward_in_dir,
        "trained_ids": inputs_mod.id_ranges(e["id"] for e in snap["train"]),
        "rebuild": snap["rebuild"],
        "prompts": prompts_lineage,
    }
    logged = lineage.logged_round(learn_dir, round_no)
    reasons = None if gate.get("passed") else (gate.get("reasons") or [])
    if logged is not None and logged["event"] == "refused":  # recorded before a kill
        reasons = logged.get("reasons") or []
    elif reasons is None and logged is None:
        reasons = _served_moved(learn_dir, snap)
    if reasons is None:
        name = snap["candidate"]
        folder = versions.version_dir(learn_dir, name)
        if not folder.exists():
            info = {
                "round": round_no,
                "method": config.method,
                "feedback": feedback,
                "prompts": prompts_lineage,
                "gate": gate,
                "reward_model": reward_in_dir,
                "policy": {k: v for k, v in policy.items() if k != "adapter"},
            }
            versions.save_version(
                learn_dir,
                name,
                parent=snap["parent"],
                adapter=policy["adapter"],
                info={**info, "adapter_on": snap["adapter_on"]},
            )
            _stage_ended("version")  # written, not yet current
        elif versions.version_info(learn_dir, name).get("round") != round_no:
            raise versions.VersionError(f"{folder}: exists, written by another round than {round_no}")
        if logged is None:
            reasons = _promote_over(learn_dir, snap)
            if reasons is None:
                record = {"event": "promoted", "round": round_no, "version": name, "parent": snap["parent"]}
                lineage.append_log(learn_dir, {**record, "gate": gate, "feedback_count": feedback["count"]})
    if reasons is None:
        outcome.update(outcome="promoted", version=snap["candidate"])
        log(
            f"learn: round {round_no}: {snap['candidate']} promoted (RM win rate "
            f"{gate['reward_model']['win_rate']:.3f}, KL to v0 {gate['kl_to_v0']:.3f})"
        )
    else:
        if lineage.logged_round(learn_dir, round_no) is None:
            record = {"event": "refused", "round": round_no, "version": None, "parent": snap["parent"]}
            lineage.append_log(
                learn_dir, {**record, "gate": gate, "reasons": reasons, "feedback_count": feedback["count"]}
            )
        outcome.update(outcome="refused", version=None, reasons=reasons)
        log(f"learn: round {round_no}: candidate refused: {'; '.join(reasons)}")
    _prune(rdir)
    _write(rdir / "round.json", outcome)
    return _advance_state(learn_dir, state, outcome)


def _served_moved(learn_dir: Path, snap: dict) -> list[str] | None:
    """The refusal's reason when the served version is no longer the round's parent (a
    ``learn rollback`` while the round ran): the candidate, trained on the parent, is not promoted
    over what the operator chose; the next round starts from the version served then. None while
    the parent (or the candidate, promoted before a kill) is current."""
    current = versions.current_version(learn_dir)
    if current in (snap["parent"], snap["candidate"]):
        return None
    return [
        f"the served version changed while the round ran ({snap['parent']} -> {current}, e.g. a rollback): "
        f"{snap['candidate']} was trained on {snap['parent']} and is not promoted over it"
    ]


def _promote_over(learn_dir: Path, snap: dict) -> list[str] | None:
    """Make the candidate current if its parent still is (one step under the folder's lock, so
    a rollback between the check and the replacement cannot be overwritten); the refusal's
    reason otherwise. A candidate an operator has already rolled back (promoted, then the learner
    killed before it logged the promotion, then ``learn rollback``) stays rolled back."""
    if any(r.get("event") == "rollback" and r.get("from") == snap["candidate"] for r in lineage.read_log(learn_dir)):
        return [f"{snap['candidate']} was rolled back by an operator after it was made current; not promoted again"]
    if versions.current_version(learn_dir) == snap["candidate"]:  # promoted before a kill
        return None
    try:
        versions.promote(learn_dir, snap["candidate"], expect_current=snap["parent"])
    except versions.CurrentMoved:
        return _served_moved(learn_dir, snap) or [f"{snap['parent']} was no longer current"]
    return None


def _prune(rdir: Path) -> None:
    """Drop what only served the round while it ran: merged model copies (the version keeps its
    adapter) and the data files written for the recipes (copies of users' text)."""
    import shutil

    policy = rdir / "policy"
    for p in [policy / "start", *policy.glob("*/model"), *policy.glob("*/reference_logps.pt")]:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    for p in policy.glob("*.jsonl"):
        p.unlink(missing_ok=True)


def _advance_state(learn_dir: Path, state: dict, outcome: dict) -> dict:
    if int(state.get("rounds_done", 0)) < outcome["round"]:
        trained = inputs_mod.ids_of_ranges(state.get("trained", [])) if not outcome.get("rebuild") else set()
        trained |= inputs_mod.ids_of_ranges(outcome["trained_ids"])
        inputs_mod.write_state(
            learn_dir,
            {
                "watermark": outcome["watermark"],
                "rounds_done": outcome["round"],
                "trained": inputs_mod.id_ranges(trained),
                "reward_model": outcome["reward_model"],
            },
        )
    return outcome
