"""The six stages of one round of ``rlhfkit loop`` (``Loop``): what each stage's fingerprint
covers (``Loop.spec``) and the function that runs it, reading what the stages before it wrote.

    candidates -> select -> labels -> reward -> policy -> eval

``loop/run.py`` runs them round after round (its docstring says what each stage does) and keeps
the loop's state; ``loop/setup.py`` holds the ``setup`` stage and the evaluation.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import torch

from rlhfkit.data import write_jsonl
from rlhfkit.data.loading import read_jsonl
from rlhfkit.loop.config import LoopConfig
from rlhfkit.loop.ensemble import ensemble_scores, ensemble_spec
from rlhfkit.loop.layout import round_dir
from rlhfkit.loop.setup import evaluate_policy, loop_sampler
from rlhfkit.models import load_policy
from rlhfkit.rewards import build_reward
from rlhfkit.rollout import repeat_each, rollout, step_seed
from rlhfkit.training.run_identity import stage_settings

WIRED_REWARD = {"data", "eval_data", "seed", "eval_fraction"}
# (max_prompts is overwritten too but stays in the fingerprint: loops run before stay cached)
WIRED_POLICY = {"model", "ref_model", "prompts", "reward", "gold_reward", "seed"}


class Loop:
    def __init__(self, c: LoopConfig, out: Path):
        self.c, self.out = c, out
        self.fps: dict[str, str] = {}
        self.outputs: dict[str, dict] = {}

    def rdir(self, r: int) -> Path:
        return round_dir(self.out, r)

    def policy_before(self, r: int) -> str:
        return self.outputs["setup"]["model"] if r == 1 else self.outputs[f"{r - 1}/policy"]["model"]

    def members_before(self, r: int) -> list[str] | None:
        return None if r == 1 else self.outputs[f"{r - 1}/reward"]["members"]

    # each stage: (own settings, inputs) for its fingerprint, and the function
    def spec(self, r: int, stage: str):
        c, fps = self.c, self.fps
        prev_policy = fps["setup"] if r == 1 else fps[f"{r - 1}/policy"]
        if stage == "candidates":
            own = {
                "round": r,
                "prompts_per_round": c.prompts_per_round,
                "k": c.num_candidates,
                "max_new_tokens": c.max_new_tokens,
                "temperature": c.temperature,
                "seed": c.seed,
            }
            return own, {"setup": fps["setup"], "policy": prev_policy}
        if stage == "select":
            method = c.selection if r > 1 else "random"
            own = {"round": r, "method": method, "n": c.labels_per_round, "cap": c.max_pairs_per_prompt, "seed": c.seed}
            inputs = {"candidates": fps[f"{r}/candidates"]}
            if method == "uncertainty":
                own["measure"] = c.uncertainty
                inputs["reward"] = fps[f"{r - 1}/reward"]
            return own, inputs
        if stage == "labels":
            if c.labeler == "simulated":
                own = {
                    "labeler": "simulated",
                    "judge": c.labeler_judge or c.gold,
                    "noise": c.label_noise,
                    "seed": c.seed,
                }
            else:
                own = {
                    "labeler": "store",
                    "db": self._db(),
                    "project": self._project(r),
                    "overlap": c.overlap,
                    "required": c.labels_required,
                }
            inputs = {"select": fps[f"{r}/select"]}
            if r > 1:
                inputs["labels"] = fps[f"{r - 1}/labels"]
            return own, inputs
        if stage == "reward":
            own = {
                **stage_settings(c.reward, WIRED_REWARD),
                "ensemble_size": c.ensemble_size,
                "bootstrap": c.bootstrap,
                "seed": c.seed,
                "round": r,
            }
            return own, {"labels": fps[f"{r}/labels"], "setup": fps["setup"]}
        if stage == "policy":
            own = {
                "algorithm": c.algorithm,
                **stage_settings(getattr(c, c.algorithm), WIRED_POLICY),
                "gold": c.gold,
                "seed": c.seed,
                "round": r,
            }
            if c.kl_anchor != "round" and r > 1:  # round 1's reference is the initial policy either way; only
                own["kl_anchor"] = c.kl_anchor  # when set, so loops run before the field existed stay cached
            if c.ensemble_reward != "mean":  # the same: only when set
                own["ensemble_reward"] = c.ensemble_reward
            return own, {"reward": fps[f"{r}/reward"], "policy": prev_policy, "setup": fps["setup"]}
        if stage == "eval":
            own = {
                "gold": c.gold,
                "eval_samples": c.eval_samples,
                "max_new_tokens": c.max_new_tokens,
                "temperature": c.temperature,
                "seed": c.seed,
            }
            return own, {"policy": fps[f"{r}/policy"], "reward": fps[f"{r}/reward"], "setup": fps["setup"]}
        raise KeyError(stage)

    def _db(self) -> str:
        return self.c.db or str(self.out / "feedback.db")

    def _project(self, r: int) -> str:
        return f"{self.c.project_prefix or self.c.name}-round-{r}"

    # --------------------------------------------------------------- stage functions
    def candidates(self, r: int, d: Path) -> dict:
        c = self.c
        train = [x["prompt"] for x in read_jsonl(self.out / "setup" / "train_prompts.jsonl")]
        n = min(c.prompts_per_round, len(train))
        prompts = random.Random(step_seed(c.seed, r, 5)).sample(train, n)
        model, tok = load_policy(self.policy_before(r))
        gen = loop_sampler(c, model, tok)
        with torch.no_grad():
            ro = rollout(
                gen,
                model,
                tok,
                repeat_each(prompts, c.num_candidates),
                seed=step_seed(c.seed, r, 21),
                max_prompt_length=64,
                behaviour_logprobs=False,
            )  # texts only
        rows = [
            {"group": i // c.num_candidates, "prompt": p, "response": resp}
            for i, (p, resp) in enumerate(zip(ro.prompts, ro.responses))
        ]
        write_jsonl(d / "candidates.jsonl", rows)
        return {"prompts": n, "candidates": len(rows), "policy": self.policy_before(r)}

    def select(self, r: int, d: Path) -> dict:
        from rlhfkit.loop.selection import candidate_pairs, pair_uncertainty, select_pairs

        c = self.c
        cand = read_jsonl(self.rdir(r) / "candidates" / "candidates.jsonl")
        groups, texts = [x["group"] for x in cand], [x["response"] for x in cand]
        pairs = candidate_pairs(groups, texts)
        method = c.selection if r > 1 else "random"
        members = self.members_before(r)
        scores = None
        if members:  # also for random: the uncertainty of what was picked is logged for comparison
            scores = ensemble_scores(members, [x["prompt"] for x in cand], texts, max_length=c.reward.max_length)
        chosen = select_pairs(
            pairs,
            c.labels_per_round,
            method,
            seed=step_seed(c.seed, r, 31),
            scores=scores,
            groups=groups,
            measure=c.uncertainty,
            max_per_group=c.max_pairs_per_prompt,
        )
        u = (
            pair_uncertainty(scores, pairs, c.uncertainty, groups).tolist()
            if scores is not None and len(members) > 1 and pairs
            else None
        )
        rows = []
        for i in chosen:
            a, b = pairs[i]
            rows.append(
                {
                    "pair": i,
                    "prompt": cand[a]["prompt"],
                    "a": cand[a]["response"],
                    "b": cand[b]["response"],
                    "uncertainty": None if u is None else u[i],
                }
            )
        write_jsonl(d / "selected.jsonl", rows)
        stats = {"method": method, "candidate_pairs": len(pairs), "selected": len(rows)}
        if u is not None:
            stats["mean_uncertainty_selected"] = sum(u[i] for i in chosen) / max(len(chosen), 1)
            stats["mean_uncertainty_all"] = sum(u) / len(u)
        print(f"loop: round {r}: select: {json.dumps(stats)}")
        return stats

    def labels(self, r: int, d: Path) -> dict:
        c = self.c
        sel = read_jsonl(self.rdir(r) / "select" / "selected.jsonl")
        stats: dict = {"labeler": c.labeler}
        if c.labeler == "simulated":
            from rlhfkit.loop.labelers import simulated_labels

            rows = simulated_labels(
                [x["prompt"] for x in sel],
                [x["a"] for x in sel],
                [x["b"] for x in sel],
                build_reward(c.labeler_judge or c.gold),
                c.label_noise,
                step_seed(c.seed, r, 13),
            )
            decided = [x for x in rows if x["gold_chosen"] != x["gold_rejected"]]
            stats["agreement_with_gold"] = (
                sum(x["gold_chosen"] > x["gold_rejected"] for x in decided) / len(decided) if decided else None
            )
            # the pairs the share rests on: pairs the gold judge scores equal have no right answer
            stats["agreement_pairs"], stats["gold_tie_pairs"] = len(decided), len(rows) - len(decided)
        else:
            from rlhfkit.feedback import db
            from rlhfkit.loop.labelers import ensure_project, export_pairs, wait_for_labels

            store = db.Store(self._db())
            try:
                items = [
                    {"id": f"r{r}-p{x['pair']}", "prompt": x["prompt"], "responses": [x["a"], x["b"]]} for x in sel
                ]
                pid = ensure_project(
                    store,
                    self._project(r),
                    items,
                    overlap=c.overlap,
                    instructions="Which continuation of the movie review is better?",
                )
                required = c.labels_required or len(items) * c.overlap
                print(
                    f"loop: round {r}: waiting for {required} labels in feedback project {self._project(r)!r} "
                    f"(id {pid}) of {self._db()}"
                )
                stats["labels_received"] = wait_for_labels(store, pid, required, c.label_timeout, c.poll_seconds)
                rows = export_pairs(store, pid)
                stats["project"], stats["project_id"] = self._project(r), pid
            finally:
                store.close()
        prev = read_jsonl(self.rdir(r - 1) / "labels" / "all_pairs.jsonl") if r > 1 else []
        write_jsonl(d / "labels.jsonl", rows)
        write_jsonl(d / "all_pairs.jsonl", prev + rows)
        stats.update(
            {
                "pairs": len(rows),
                "total_pairs": len(prev) + len(rows),
                "labels_total": self.labels_spent(r - 1) + len(sel),
            }
        )
        print(f"loop: round {r}: labels: {json.dumps(stats)}")
        return stats

    def labels_spent(self, r: int) -> int:
        """Labels asked for in rounds 1..r (the budget; a tie or 'both bad' spends one too)."""
        return 0 if r == 0 else self.outputs[f"{r}/labels"]["labels_total"]

    def reward(self, r: int, d: Path) -> dict:
        from rlhfkit.loop.ensemble import train_ensemble

        pairs = read_jsonl(self.rdir(r) / "labels" / "all_pairs.jsonl")
        pairs = [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]
        cfg = copy.deepcopy(self.c.reward)
        if cfg.model == "init":  # a sequence classifier on the initial policy's backbone
            cfg.model = self.outputs["setup"]["model"]
        members = train_ensemble(
            pairs,
            d,
            cfg,
            self.c.ensemble_size,
            seed=self.c.seed * 100 + r,
            bootstrap=self.c.bootstrap,
            threads=self.c.threads,
        )
        return {"members": members, "pairs": len(pairs), "spec": ensemble_spec(members)}

    def policy(self, r: int, d: Path) -> dict:
        import importlib

        c = self.c
        cfg = copy.deepcopy(getattr(c, c.algorithm))
        cfg.model, cfg.prompts = self.policy_before(r), str(self.out / "setup" / "train_prompts.jsonl")
        cfg.reward, cfg.gold_reward = self.outputs[f"{r}/reward"]["spec"], c.gold
        if c.ensemble_reward != "mean":  # a conservative combination of the members (rewards.EnsembleSource)
            cfg.reward = f"ensemble:{c.ensemble_reward}:" + ",".join(self.outputs[f"{r}/reward"]["members"])
        cfg.output_dir, cfg.seed = str(d), c.seed * 100 + r
        cfg.max_prompts = 0
        # round 1 starts from the initial policy, so both anchors are the same model there
        cfg.ref_model = self.outputs["setup"]["model"] if c.kl_anchor == "initial" and r > 1 else ""
        if c.threads:
            cfg.threads = c.threads
        metrics = importlib.import_module(f"rlhfkit.recipes.{c.algorithm}").run(cfg)
        return {
            "model": str(d / "model"),
            "metrics": {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))},
        }

    def eval(self, r: int, d: Path) -> dict:
        held = [x["prompt"] for x in read_jsonl(self.out / "setup" / "eval_prompts.jsonl")]
        heldout = read_jsonl(self.out / "setup" / "heldout_pairs.jsonl")
        ev = evaluate_policy(
            self.c,
            self.outputs[f"{r}/policy"]["model"],
            self.outputs["setup"]["model"],
            held,
            self.outputs[f"{r}/reward"]["members"],
            heldout,
        )
        ev["labels"] = self.labels_spent(r)
        (d / "eval.json").write_text(json.dumps(ev, indent=1), encoding="utf-8")
        print(
            f"loop: round {r}: eval: gold {ev['gold']:.4f}, KL to init {ev['kl']:.3f}, "
            f"RM held-out accuracy {ev.get('rm_accuracy', float('nan')):.3f}, labels {ev['labels']}"
        )
        return ev
