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

KL anchor (``kl_anchor``): ``round`` (the default) regularises each round towards the policy it
starts from (a trust region per round, as in iterated online RLHF where each round's policy is
the next round's reference), so the drift from the initial policy can grow round after round;
``initial`` takes the initial policy as every round's reference (``ref_model`` of the recipes),
one leash for the whole loop, as when an SFT model anchors all of RLHF. Either way the
cumulative drift is reported as the KL to the initial policy in every round's ``eval``.
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

import torch

from rlhfkit.core.kl import sequence_kl
from rlhfkit.data import write_jsonl
from rlhfkit.data.loading import load_prompts, read_jsonl, tokenizer_corpus
from rlhfkit.loop.config import LoopConfig, apply_quick, check_label_budget
from rlhfkit.loop.ensemble import ensemble_scores
from rlhfkit.loop.layout import ROUND_STAGES, round_dir
from rlhfkit.loop.report import render_loop_report
from rlhfkit.models import load_policy
from rlhfkit.pipeline.cache import run_stage
from rlhfkit.rewards import build_reward
from rlhfkit.rollout import SamplingConfig, make_sampler, repeat_each, rollout, rollout_logprobs, step_seed
from rlhfkit.training.run_identity import stage_fingerprint, stage_settings, with_content

__all__ = ["LoopConfig", "run", "share_first_round", "ROUND_STAGES"]

WIRED_REWARD = {"data", "eval_data", "seed", "eval_fraction"}
# (max_prompts is overwritten too but stays in the fingerprint: loops run before stay cached)
WIRED_POLICY = {"model", "ref_model", "prompts", "reward", "gold_reward", "seed"}


def _step_seed(*parts) -> int:
    return step_seed(*parts)


# ----------------------------------------------------------------------------- setup
def stage_setup(c: LoopConfig, d: Path) -> dict:
    if c.init.kind == "tiny":
        from rlhfkit.models import tiny_causal_lm, tiny_tokenizer

        tok = tiny_tokenizer(tokenizer_corpus(c.prompts), vocab_size=c.init.vocab_size)
        model = tiny_causal_lm(
            tok,
            hidden_size=c.init.hidden_size,
            num_layers=c.init.num_layers,
            num_heads=c.init.num_heads,
            seed=c.init.seed,
        )
        model.save_pretrained(d / "model")
        tok.save_pretrained(d / "model")
        init_model = str(d / "model")
    else:
        init_model = c.init.model
    pool = load_prompts(c.prompts, c.prompt_words, unique=True)
    random.Random(c.seed).shuffle(pool)
    held, train = pool[: c.n_eval_prompts], pool[c.n_eval_prompts :]
    if c.max_train_prompts:
        train = train[: c.max_train_prompts]
    write_jsonl(d / "train_prompts.jsonl", [{"prompt": p} for p in train])
    write_jsonl(d / "eval_prompts.jsonl", [{"prompt": p} for p in held])
    # gold-judged held-out pairs (no noise): every pair of heldout_samples samples of the initial
    # policy per held-out prompt whose gold scores differ, the better one as chosen
    gold = build_reward(c.gold)
    samples = []
    for j in range(c.heldout_samples):
        texts = _sample(c, init_model, held, seed=_step_seed(c.seed, 0, 61 + j))
        samples.append(list(zip(texts, gold(held, texts).tolist())))
    pairs = []
    for i, p in enumerate(held):
        for a in range(c.heldout_samples):
            for b in range(a + 1, c.heldout_samples):
                (x, sx), (y, sy) = samples[a][i], samples[b][i]
                if sx != sy and x != y:
                    pairs.append({"prompt": p, "chosen": x if sx > sy else y, "rejected": y if sx > sy else x})
    write_jsonl(d / "heldout_pairs.jsonl", pairs)
    ev = evaluate_policy(c, init_model, init_model, held, members=None, heldout=None)
    print(
        f"loop: setup: {len(train)} training / {len(held)} held-out prompts, {len(pairs)} gold held-out pairs, "
        f"initial gold {ev['gold']:.4f}"
    )
    return {
        "model": init_model,
        "train_prompts": len(train),
        "eval_prompts": len(held),
        "heldout_pairs": len(pairs),
        "eval": ev,
    }


def _sample(c: LoopConfig, model_path: str, prompts: list[str], seed: int) -> list[str]:
    model, tok = load_policy(model_path)
    gen = make_sampler(
        model,
        SamplingConfig(max_new_tokens=c.max_new_tokens, temperature=c.temperature),
        tok.eos_token_id,
        tok.pad_token_id,
    )
    with torch.no_grad():
        return list(
            rollout(gen, model, tok, prompts, seed=seed, max_prompt_length=64, behaviour_logprobs=False).responses
        )


def evaluate_policy(
    c: LoopConfig,
    policy_path: str,
    init_path: str,
    prompts: list[str],
    members: list[str] | None,
    heldout: list[dict] | None,
) -> dict:
    """Gold score of the policy's samples on the held-out prompts (``eval_samples`` each, the same
    sampling seed every round), KL to the initial policy (k1 summed over the response, mean over
    samples: ``core.kl.sequence_kl`` with the initial policy's log-probs from
    ``rollout.rollout_logprobs``, as ``rlhfkit eval`` measures it), and the ensemble mean's
    accuracy on the gold-judged held-out pairs."""
    model, tok = load_policy(policy_path)
    gen = make_sampler(
        model,
        SamplingConfig(max_new_tokens=c.max_new_tokens, temperature=c.temperature),
        tok.eos_token_id,
        tok.pad_token_id,
    )
    with torch.no_grad():
        ro = rollout(
            gen, model, tok, repeat_each(prompts, c.eval_samples), seed=_step_seed(c.seed, 0, 77), max_prompt_length=64
        )
        gold = build_reward(c.gold)(ro.prompts, ro.responses).float()
        if policy_path == init_path:
            kl = 0.0
        else:
            ref, _ = load_policy(init_path)
            kl = float(sequence_kl(ro.logprobs, rollout_logprobs(ref, ro, c.temperature), ro.response_mask).mean())
    out = {
        "gold": float(gold.mean()),
        "gold_std": float(gold.std()) if len(gold) > 1 else 0.0,
        "kl": kl,
        "samples": len(ro),
    }
    if members and heldout:
        s = ensemble_scores(
            members,
            [p["prompt"] for p in heldout] * 2,
            [p["chosen"] for p in heldout] + [p["rejected"] for p in heldout],
            max_length=c.reward.max_length,
        ).mean(0)
        n = len(heldout)
        out["rm_accuracy"] = float((s[:n] > s[n:]).float().mean())
    return out


# ----------------------------------------------------------------------------- round stages
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
        prompts = random.Random(_step_seed(c.seed, r, 5)).sample(train, n)
        model, tok = load_policy(self.policy_before(r))
        gen = make_sampler(
            model,
            SamplingConfig(max_new_tokens=c.max_new_tokens, temperature=c.temperature),
            tok.eos_token_id,
            tok.pad_token_id,
        )
        with torch.no_grad():
            ro = rollout(
                gen,
                model,
                tok,
                repeat_each(prompts, c.num_candidates),
                seed=_step_seed(c.seed, r, 21),
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
            seed=_step_seed(c.seed, r, 31),
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
                _step_seed(c.seed, r, 13),
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
        return {"members": members, "pairs": len(pairs), "spec": _ensemble_spec(members)}

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


def _ensemble_spec(members: list[str]) -> str:
    from rlhfkit.loop.ensemble import ensemble_spec

    return ensemble_spec(members)


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
