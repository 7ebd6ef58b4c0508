"""Robustness to bad users: per-user caps and consensus weights (pure functions, no I/O).

A round first cuts each user's verdicts to ``max_per_user`` (the earliest kept: a flood is cut,
and the cut is counted in the lineage). Then each user's verdicts are checked against a
consensus:

- the previous round's reward model, when it agrees with at least ``min_consensus_agreement`` of
  the round's verdicts (a model that agrees with nobody is no consensus): a thumbs-up agrees
  when the model scores the reply above the round's median score, a rating above the scale's
  middle likewise, a choice or an edit when the model scores the picked / written reply higher;
- else (the first round, or a previous model the round disagrees with) a cross-fitted consensus:
  the round's users are dealt into ``folds`` folds by a hash of their pseudonymous id
  (:func:`crossfit_folds`), a reward model is trained on the other folds' verdicts (the round's
  own reward recipe and settings) and each held-out user's verdicts are checked against it by
  the same rules (the median threshold per fold, as the fold models' scales differ); trusted,
  like the previous model, only when it agrees with ``min_consensus_agreement`` of the verdicts
  (a model that learned nothing would otherwise mark every user as chance). Users judge only
  their own replies in a deployment, so this is what checks them before any model exists;
- else the leave-one-user-out majority on items several users judged (the same reply, or the
  same two replies): a verdict agrees when it matches the other users' majority (ties: no
  evidence);
- else there is no evidence, and every weight stays 1.

A user's weight is the posterior probability that they are honest, with three kinds of user at
even prior odds: an honest user agrees with the consensus at rate ``q``, a careless (random) one
at 1/2, an inverted one at ``1 - q``; ``q`` is a reward-model consensus's own pooled agreement with
the round's verdicts, capped at ``honest_agreement`` (the users' majority: the cap) (a weak consensus agrees with honest users little
more than with anyone, and must not be taken for more). For ``k`` of ``n`` verdicts agreeing:

    w = q^k (1-q)^(n-k) / (q^k (1-q)^(n-k) + (1/2)^n + (1-q)^k q^(n-k))

Evidence grows with ``n``: a flood of coin flips is found out (50 random verdicts at q = 0.65
weigh about 0.08), while a few unlucky verdicts of an honest user under a weak consensus cost
part of their weight, not all of it (judging against 1/2 and a fixed full-trust agreement set a
fifth of the honest users to 0 in the 100-user simulation, docs/BENCHMARKS.md). Only relative
weights matter to the reward model's Adam steps, so honest users with few verdicts at about 1/2
lose nothing against each other. The evidence is the user's, not the round's: a round multiplies
in the likelihoods of the user's checked verdicts of every earlier round (each against its own
round's consensus and ``q``; ``learn.inputs.judged_before``), so a user judged on 2-5 verdicts a
round is judged on all of them, and a round without a consensus still weighs users it has seen
before. A user whose Wilson 95% upper bound on their pooled agreement is below 1/2 is marked
``inverted`` (weight 0). Users with fewer than ``min_judged`` checked verdicts in all keep weight
1 (no evidence against them), as does everyone when no consensus ever agreed with more than half
the verdicts (it says nothing).
The weights multiply each example's term in the reward model's loss; the prompts only users
at weight 0 sent are left out of the policy's training prompts and the gate's held-out prompts
(:func:`usable_prompts`): an adversary must not choose what the policy trains or is judged on.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from statistics import median
from typing import Callable, Iterable, Sequence


def cap_per_user(events: Sequence[dict], max_per_user: int) -> tuple[list[dict], dict[str, int]]:
    """``(kept, {user: verdicts cut})``: each user's first ``max_per_user`` verdicts by id (0: all)."""
    seen: dict[str, int] = defaultdict(int)
    kept, cut = [], defaultdict(int)
    for e in sorted(events, key=lambda e: e["id"]):
        u = e["end_user"]
        if max_per_user and seen[u] >= max_per_user:
            cut[u] += 1
            continue
        seen[u] += 1
        kept.append(e)
    return kept, dict(cut)


def wilson_upper(k: int, n: int, z: float = 1.96) -> float:
    """Upper end of the Wilson score interval of a proportion k / n (1 for n = 0)."""
    if n == 0:
        return 1.0
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre + spread) / (1 + z * z / n)


# a user at or above it is more likely honest than not: "trusted" here, counted so in the lineage
# and the report, and kept by the direct methods (learn.policy_update)
TRUSTED_WEIGHT = 0.5


def counted(before: Sequence[tuple[int, int, float]]) -> list[tuple[int, int, float]]:
    """The earlier rounds' ``(agreed, judged, q)`` that are evidence: some verdicts judged, by a
    consensus that said more than chance."""
    return [(a, j, q) for a, j, q in before if j and q > 0.5]


def user_weight(
    k: int, n: int, agreement: float, min_judged: int, before: Sequence[tuple[int, int, float]] = ()
) -> tuple[float, str]:
    """``(weight, status)`` of a user with ``k`` of ``n`` verdicts agreeing with a consensus that
    honest users agree with at rate ``agreement`` (module docstring), and ``before``, the
    ``(agreed, judged, q)`` of their checked verdicts in earlier rounds, each against its own
    round's consensus; status ``trusted`` when honest is at least as likely as not."""
    tallies = counted(before)
    if agreement > 0.5:
        tallies.append((k, n, agreement))
    agreed, judged = sum(t[0] for t in tallies), sum(t[1] for t in tallies)
    if judged == 0 or judged < min_judged:
        return 1.0, "unchecked"
    if wilson_upper(agreed, judged) < 0.5:
        return 0.0, "inverted"
    # the three log-likelihoods, summed over the rounds and normalised in logs (n in the
    # thousands must not underflow)
    logs = [0.0, 0.0, 0.0]
    for a, j, q in tallies:
        logs[0] += a * math.log(q) + (j - a) * math.log(1 - q)
        logs[1] += j * math.log(0.5)
        logs[2] += a * math.log(1 - q) + (j - a) * math.log(q)
    top = max(logs)
    w = math.exp(logs[0] - top) / sum(math.exp(x - top) for x in logs)
    return w, "trusted" if w >= TRUSTED_WEIGHT else "down-weighted"


def rm_verdict_agreement(event: dict, scores: Sequence[float], threshold: float) -> bool | None:
    """Whether the reward model's ``scores`` (one per reply of ``event``, an edit's: [original,
    edit]) agree with the user's verdict; None when the verdict says nothing to compare."""
    kind, value = event["kind"], event["value"]
    if kind in ("thumbs", "rating") and scores[0] == threshold:
        return None  # a reply scored exactly at the median is neither above nor below it
    if kind == "thumbs":
        return (scores[0] > threshold) == bool(value)
    if kind == "rating":
        lo, hi = event["scale"]
        mid = (lo + hi) / 2
        if value == mid:
            return None
        return (scores[0] > threshold) == (value > mid)
    if kind in ("choice", "edit") and scores[0] == scores[1]:
        return None  # the model cannot tell the two replies apart: no evidence either way
    if kind == "choice":
        return scores[int(value)] > scores[1 - int(value)]
    if kind == "edit":
        return scores[1] > scores[0]
    return None


def rm_agreements(events: Sequence[dict], scores: dict[int, Sequence[float]]) -> dict[int, bool]:
    """``{event id: agrees}`` for every event the reward model's ``scores`` can judge; the
    threshold of thumbs and ratings is the median score of the replies they judge."""
    single = [scores[e["id"]][0] for e in events if e["kind"] in ("thumbs", "rating") and e["id"] in scores]
    threshold = median(single) if single else 0.0
    out = {}
    for e in events:
        if e["id"] in scores:
            a = rm_verdict_agreement(e, scores[e["id"]], threshold)
            if a is not None:
                out[e["id"]] = a
    return out


def _item_and_verdict(e: dict) -> tuple[tuple, object] | None:
    kind = e["kind"]
    if kind == "thumbs":
        return ("reply", e["prompt"], e["responses"][0]), bool(e["value"])
    if kind == "rating":
        lo, hi = e["scale"]
        mid = (lo + hi) / 2
        return None if e["value"] == mid else (("reply", e["prompt"], e["responses"][0]), e["value"] > mid)
    if kind == "choice":
        pair = tuple(sorted(e["responses"]))
        return ("pair", e["prompt"], pair), e["responses"][int(e["value"])]
    return None


def majority_agreements(events: Sequence[dict]) -> dict[int, bool]:
    """``{event id: agrees}``: each verdict against the majority of the other users' verdicts on
    the same item (only where others judged it and their majority is strict)."""
    by_item: dict[tuple, list[tuple[str, object, int]]] = defaultdict(list)
    for e in events:
        iv = _item_and_verdict(e)
        if iv is not None:
            by_item[iv[0]].append((e["end_user"], iv[1], e["id"]))
    out = {}
    for verdicts in by_item.values():
        for user, verdict, eid in verdicts:
            others = [v for u, v, _ in verdicts if u != user]
            if not others:
                continue
            counts: dict = defaultdict(int)
            for v in others:
                counts[v] += 1
            top = sorted(counts.values(), reverse=True)
            if len(top) > 1 and top[0] == top[1]:
                continue
            out[eid] = verdict == max(counts, key=counts.get)
    return out


def user_weights(
    events: Sequence[dict],
    agreements: dict[int, bool],
    honest_agreement: float,
    min_judged: int,
    consensus_agreement: float | None = None,
    history: dict[str, Sequence[tuple[int, int, float]]] | None = None,
) -> tuple[dict[str, dict], float | None]:
    """``({user: {"n", "judged", "agreed", "agreement", "weight", "status"[, "judged_before",
    "agreed_before"]}}, q)`` for every user of ``events``: ``q``, the agreement assumed of an honest
    user, is ``consensus_agreement`` (a reward model's pooled agreement with the round) capped at
    ``honest_agreement``; without one (the users' majority, whose pooled agreement counts only the
    verdicts it could judge) the cap. None without any agreement. ``history``: each user's
    ``(agreed, judged, q)`` of earlier rounds (:func:`user_weight`'s ``before``): a user's weight
    rests on all their checked verdicts, not on the two to five of one round."""
    if not agreements:
        q = None
    else:
        q = honest_agreement if consensus_agreement is None else min(honest_agreement, consensus_agreement)
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for e in events:
        t = tally[e["end_user"]]
        t[0] += 1
        if e["id"] in agreements:
            t[1] += 1
            t[2] += int(agreements[e["id"]])
    out = {}
    for user, (n, judged, agreed) in sorted(tally.items()):
        before = counted((history or {}).get(user, ()))
        w, status = user_weight(agreed, judged, q if q is not None else 0.5, min_judged, before)
        out[user] = {
            "n": n,
            "judged": judged,
            "agreed": agreed,
            "agreement": round(agreed / judged, 6) if judged else None,
            "weight": round(w, 6),
            "status": status,
        }
        if before:
            out[user].update(judged_before=sum(b[1] for b in before), agreed_before=sum(b[0] for b in before))
    return out, q


def crossfit_folds(users: Iterable[str], folds: int) -> dict[str, int]:
    """``{user: fold}``: the users ordered by the SHA-256 of their (pseudonymous) id and dealt
    round-robin into ``folds`` folds: fixed by the ids, and as even as the count allows (a hash
    modulo ``folds`` could leave a fold of a small round empty, its users unchecked)."""
    order = sorted(set(users), key=lambda u: hashlib.sha256(u.encode("utf-8")).hexdigest())
    return {u: i % folds for i, u in enumerate(order)}


def crossfit_agreements(
    events: Sequence[dict], fold_of: dict[str, int], scores_by_fold: dict[int, dict[int, Sequence[float]]]
) -> dict[int, bool]:
    """``{event id: agrees}``: each fold's verdicts against ``scores_by_fold[fold]``, the scores of
    a reward model trained without that fold (:func:`rm_agreements`' rules, per fold)."""
    out: dict[int, bool] = {}
    for fold, scores in sorted(scores_by_fold.items()):
        out.update(rm_agreements([e for e in events if fold_of.get(e["end_user"]) == fold], scores))
    return out


def usable_prompts(prompts: Sequence[str], senders: dict[str, Sequence[str]], weights: dict[str, float]) -> list[str]:
    """``prompts`` less those whose every sender (``senders[prompt]``) weighs 0 (a sender without
    a weight counts 1; a prompt without known senders is kept), in their order."""
    return [p for p in prompts if not senders.get(p) or any(weights.get(u, 1.0) > 0 for u in senders[p])]


def defend(
    events: Sequence[dict],
    max_per_user: int,
    honest_agreement: float,
    min_judged: int,
    min_consensus_agreement: float,
    score_fn: Callable[[list[dict]], dict[int, list[float]]] | None,
    crossfit_fn: Callable[[list[dict], dict[str, int]], dict[int, dict[int, list[float]]]] | None = None,
    folds: int = 2,
    history: dict[str, Sequence[tuple[int, int, float]]] | None = None,
) -> dict:
    """The whole defence of a round: ``{"kept": events, "per_user": {user: {..., "cut"[, "fold"]}},
    "consensus": "reward_model" | "crossfit" | "majority" | "none", "consensus_agreement",
    "crossfit_agreement", "honest_agreement"}`` (the pooled agreements of the previous model and of
    the cross-fitted ones, None when not computed, and ``q`` of the weights). ``score_fn`` scores the replies of events with the previous
    reward model (None in the first round); ``crossfit_fn(events, {user: fold})`` returns, for
    each fold, the scores of its replies by a model trained on the other folds (None: no cross-fit).
    ``history``: the users' checked verdicts of earlier rounds (:func:`user_weights`)."""
    kept, cut = cap_per_user(events, max_per_user)
    consensus, agreements, pooled, crossfit_pooled, fold_of = "none", {}, None, None, {}
    if score_fn is not None and kept:
        by_rm = rm_agreements(kept, score_fn(kept))
        pooled = sum(by_rm.values()) / len(by_rm) if by_rm else None
        if pooled is not None and pooled >= min_consensus_agreement:
            consensus, agreements = "reward_model", by_rm
    if consensus == "none" and crossfit_fn is not None and folds >= 2 and kept:
        fold_of = crossfit_folds((e["end_user"] for e in kept), folds)
        by_cf = crossfit_agreements(kept, fold_of, crossfit_fn(kept, fold_of))
        crossfit_pooled = sum(by_cf.values()) / len(by_cf) if by_cf else None
        if crossfit_pooled is not None and crossfit_pooled >= min_consensus_agreement:
            consensus, agreements = "crossfit", by_cf
    if consensus == "none":
        by_majority = majority_agreements(kept)
        if by_majority:
            consensus, agreements = "majority", by_majority
    own = {"reward_model": pooled, "crossfit": crossfit_pooled}.get(consensus)
    per_user, q = user_weights(kept, agreements, honest_agreement, min_judged, own, history)
    for user in cut:
        per_user.setdefault(user, {"n": 0, "judged": 0, "agreed": 0, "weight": 1.0, "status": "unchecked"})
    for user in per_user:
        per_user[user]["cut"] = cut.get(user, 0)
        if user in fold_of:
            per_user[user]["fold"] = fold_of[user]
    return {
        "kept": kept,
        "per_user": per_user,
        "consensus": consensus,
        "consensus_agreement": None if pooled is None else round(pooled, 6),
        "crossfit_agreement": None if crossfit_pooled is None else round(crossfit_pooled, 6),
        "honest_agreement": None if q is None else round(q, 6),
    }
