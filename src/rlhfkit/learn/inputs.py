"""A round's fixed inputs: the feedback with ids up to a watermark, read once and written first.

``rounds/round-N/inputs.json`` holds everything the round trains and gates on, so a round killed
anywhere and started again reads the same data (ids only grow in the store: ``feedback.enduser``).
The round trains on the verdicts after the previous round's watermark (its reward model starts
from the last one), except after a ``forget``: when a verdict some earlier round trained on has
left the store, the reward model is rebuilt from its first backbone on every verdict still
there, so an erased user's feedback has no part in anything trained from then on, and the
erased verdicts are taken out of the earlier rounds' saved inputs too, and the erased user's
pseudonymous id out of the defences' figures and the versions' lineage (:func:`scrub_records`).

Held-out prompts: a fixed share of the prompts users sent (by a keyed hash of the text, so a prompt
is held out in every round or in none) is kept out of training; the gate samples on them (the
first ``gate.max_prompts`` in the order of their hash that the round keeps). The key is a secret
of the learner's folder (``holdout.key``, random, made on first use): with a plain hash anyone
could compute offline which prompts land in the gate's set, and first in its order, and send
those to choose what a candidate is judged on. ``prompt_senders`` names
who sent each prompt, so the round can leave out the prompts only users at weight 0 sent
(``learn.defence.usable_prompts``, with :func:`latest_weights` for users not in the round).
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path
from typing import Iterable

from rlhfkit.models.versions import atomic_write_json, fsync_dir, read_json_object

STATE_FILE = "learn_state.json"


def event_record(event) -> dict:
    """The fields of a ``feedback.enduser.FeedbackEvent`` a round uses, JSON-ready."""
    return {
        "id": int(event.id),
        "kind": event.kind,
        "completion_id": event.completion_id,
        "prompt": event.prompt,
        "responses": list(event.responses),
        "value": event.value,
        "end_user": event.end_user or "(anonymous)",
        "scale": list(event.scale) if event.scale else None,
    }


KEY_FILE = "holdout.key"


def new_key_hex() -> str:
    return secrets.token_hex(32)


def holdout_key(learn_dir: Path) -> bytes:
    """The learner's held-out secret (``LEARN_DIR/holdout.key``, 32 random bytes in hex, mode
    0600), made on first use: written whole to a fresh temporary file, then published with a hard
    link (which fails if another process published first: theirs is the key) and the folder
    synced. A folder made before keyed draws gets its key at its next round, whose prompts are
    then split afresh. A key file that is not 64 hex digits is refused, never used."""
    import tempfile

    from rlhfkit.data.errors import DataError

    path = Path(learn_dir) / KEY_FILE
    if not path.is_file():
        fd, tmp = tempfile.mkstemp(dir=learn_dir, prefix=f".{KEY_FILE}.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(new_key_hex())
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
        fsync_dir(Path(learn_dir))
    text = path.read_text(encoding="ascii", errors="replace").strip()
    if len(text) != 64 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise DataError(f"{path}: not a held-out key (64 hex digits); restore it from a backup")
    return bytes.fromhex(text)


def prompt_rank(prompt: str, key: bytes) -> bytes:
    """HMAC-SHA256 of the prompt under the learner's key: the held-out draw and the gate's order."""
    return hmac.new(key, prompt.encode("utf-8"), "sha256").digest()


def held_out(prompt: str, share: float, key: bytes) -> bool:
    """Whether ``prompt`` belongs to the gate's share: the first 8 bytes of its keyed hash as a
    fraction of 2^64 below ``share`` (the same answer in every round and process of one folder)."""
    return int.from_bytes(prompt_rank(prompt, key)[:8], "big") / 2.0**64 < share


def id_ranges(ids: Iterable[int]) -> list[list[int]]:
    """``[1, 2, 3, 7, 9, 10] -> [[1, 3], [7, 7], [9, 10]]`` (the lineage names ids this way)."""
    out: list[list[int]] = []
    for i in sorted({int(x) for x in ids}):
        if out and i == out[-1][1] + 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return out


def ids_of_ranges(ranges: Iterable) -> set[int]:
    return {i for a, b in ranges for i in range(int(a), int(b) + 1)}


def read_state(learn_dir: Path) -> dict:
    """``learn_state.json``: ``{"watermark", "rounds_done", "trained": id ranges}`` (zeros when new)."""
    path = Path(learn_dir) / STATE_FILE
    if not path.is_file():
        return {"watermark": 0, "rounds_done": 0, "trained": [], "reward_model": None}
    return read_json_object(path)


def write_state(learn_dir: Path, state: dict) -> None:
    atomic_write_json(Path(learn_dir) / STATE_FILE, state)


def new_verdicts(store: str, prefix: str, watermark: int, enough: int) -> int:
    """How many verdicts arrived after ``watermark``, counted up to ``enough`` (what starts a
    round; a poll reads no more rows than that)."""
    from rlhfkit.feedback.enduser import feedback_events, last_event_id

    if last_event_id(store, prefix=prefix) <= watermark:
        return 0
    return len(feedback_events(store, watermark, None, prefix=prefix, limit=enough))


def verdict_key(e: dict) -> tuple:
    """What a changed mind keeps: the same reply (or pair), user and kind. The store gives the new
    verdict a new id and deletes the old one, as a ``forget`` deletes a user's."""
    return (e["completion_id"], e["kind"], e["end_user"], tuple(e["responses"]))


def saved_records(learn_dir: Path, before_round: int) -> dict[int, dict]:
    """``{id: event record}`` of the verdicts the rounds before ``before_round`` saved as inputs."""
    out: dict[int, dict] = {}
    for path in Path(learn_dir, "rounds").glob("round-*/inputs/inputs.json"):
        data = read_json_object(path)
        if int(data.get("round", 0)) < before_round:
            out.update({int(e["id"]): e for e in data.get("train", [])})
    return out


def snapshot(
    store: str, prefix: str, state: dict, round_no: int, holdout_share: float, key: bytes, earlier: dict[int, dict]
) -> tuple[dict, dict]:
    """Round ``round_no``'s inputs, read from the store now, and what the store holds:
    ``({"round", "watermark", "previous_watermark", "rebuild", "forgotten", "replaced", "train"
    (event records), "train_prompts", "holdout_prompts" (every one, in the order of their hash),
    "prompt_senders"}, {"ids", "prompts", "users"})``. A verdict an earlier round trained on that
    is gone was either replaced by its user (a new verdict on the same reply and kind, ``earlier``
    holding the old one's record: ``replaced``) or erased (``forgotten``); ``rebuild`` is true when
    any was erased: the round then trains on every verdict still there. A changed mind is no
    erasure: the new verdict trains this round like any new one."""
    from rlhfkit.feedback.enduser import feedback_events, last_event_id

    watermark = last_event_id(store, prefix=prefix)
    previous = int(state["watermark"])
    events = [event_record(e) for e in feedback_events(store, 0, watermark, prefix=prefix)]
    present = {e["id"] for e in events}
    gone = ids_of_ranges(state.get("trained", [])) - present
    now = {verdict_key(e) for e in events}
    replaced = {i for i in gone if i in earlier and verdict_key(earlier[i]) in now}
    forgotten = sorted(gone - replaced)
    rebuild = bool(forgotten)
    chosen = events if rebuild else [e for e in events if e["id"] > previous]
    prompts = list(dict.fromkeys(e["prompt"] for e in events))
    held = {p for p in prompts if held_out(p, holdout_share, key)}  # one keyed hash a prompt
    train = [e for e in chosen if e["prompt"] not in held]
    holdout = sorted(held, key=lambda p: prompt_rank(p, key))
    senders: dict[str, set[str]] = {}
    for e in events:
        senders.setdefault(e["prompt"], set()).add(e["end_user"])
    train_prompts = [p for p in prompts if p not in held]
    snap = {
        "round": round_no,
        "watermark": watermark,
        "previous_watermark": previous,
        "rebuild": rebuild,
        "forgotten": len(forgotten),
        "replaced": len(replaced),
        "train": train,
        "train_prompts": train_prompts,
        "holdout_prompts": holdout,
        "prompt_senders": {p: sorted(users) for p, users in senders.items()},
    }
    return snap, {"ids": present, "prompts": set(prompts), "users": {e["end_user"] for e in events}}


def _earlier_defences(learn_dir: Path, before_round: int) -> list[tuple[int, dict]]:
    """``(round, defence.json)`` of each round before ``before_round``, in round order."""
    found = []
    for path in Path(learn_dir, "rounds").glob("round-*/defence/defence.json"):
        n = path.parent.parent.name.removeprefix("round-")
        if n.isdigit() and int(n) < before_round:
            found.append((int(n), path))
    return [(n, read_json_object(path)) for n, path in sorted(found)]


def latest_weights(learn_dir: Path, before_round: int) -> dict[str, float]:
    """``{user: weight}`` from the defences of the rounds before ``before_round``, a later round's
    over an earlier one's: what a user who sent nothing in this round last weighed."""
    out: dict[str, float] = {}
    for _, data in _earlier_defences(learn_dir, before_round):
        out.update({u: float(v.get("weight", 1.0)) for u, v in data.get("per_user", {}).items()})
    return out


def judged_before(learn_dir: Path, before_round: int) -> dict[str, list[list]]:
    """``{user: [[agreed, judged, q], ...]}``: each earlier round's checked verdicts of a user and
    the agreement ``q`` its consensus assumed of an honest user (``learn.defence.user_weight``'s
    ``before``; rounds without a consensus add nothing). From the latest earlier rebuild on: a
    rebuild round judged every verdict still stored (its tallies hold the rounds before it), and
    the rounds before it were judged by consensuses the erased feedback had shaped. A forgotten
    user's figures left with their entries (:func:`scrub_records`). A verdict its user later
    replaced stays counted where it was judged (a changed mind is evidence the user gave)."""
    rounds = Path(learn_dir, "rounds")
    start = 0
    for n in range(before_round - 1, 0, -1):
        # round.json (a finished round's outcome, a kilobyte) names a rebuild as its inputs do
        # (hundreds of kilobytes of users' text)
        done = rounds / f"round-{n}" / "round.json"
        if done.is_file() and read_json_object(done).get("rebuild"):
            start = n
            break
    out: dict[str, list[list]] = {}
    for n, data in _earlier_defences(learn_dir, before_round):
        q = data.get("honest_agreement")
        if q is None or n < start:
            continue
        for user, v in data.get("per_user", {}).items():
            if v.get("judged"):
                out.setdefault(user, []).append([int(v["agreed"]), int(v["judged"]), float(q)])
    return out


def scrub_saved_inputs(
    learn_dir: Path,
    before_round: int,
    present_ids: set[int] | None,
    present_prompts: set[str],
    present_users: set[str] | None = None,
) -> int:
    """Take verdicts that left the store (and prompts no stored verdict has any more, and users
    not in ``present_users``) out of the saved inputs of rounds before ``before_round``: the
    erasure reaches the learner's copies. Returns how many verdicts went."""
    gone = 0
    for path in sorted(Path(learn_dir, "rounds").glob("round-*/inputs/inputs.json")):
        data = read_json_object(path)
        if int(data.get("round", 0)) >= before_round:
            continue
        kept = [
            e
            for e in data.get("train", [])
            if (present_ids is None or e["id"] in present_ids)
            and (present_users is None or e["end_user"] in present_users)
        ]
        prompts = {
            k: [p for p in data.get(k, []) if p in present_prompts] for k in ("train_prompts", "holdout_prompts")
        }
        senders = {
            p: [u for u in users if present_users is None or u in present_users]
            for p, users in data.get("prompt_senders", {}).items()
            if p in present_prompts
        }
        changed = senders != data.get("prompt_senders", {})
        if (
            changed
            or len(kept) != len(data.get("train", []))
            or any(len(v) != len(data.get(k, [])) for k, v in prompts.items())
        ):
            gone += len(data.get("train", [])) - len(kept)
            extra = {"prompt_senders": senders} if "prompt_senders" in data else {}
            atomic_write_json(path, {**data, "train": kept, **prompts, **extra})
    if present_users is not None:
        scrub_records(learn_dir, before_round, present_ids, present_users)
    return gone


def scrub_records(learn_dir: Path, before_round: int, present_ids: set[int] | None, present_users: set[str]) -> None:
    """The learner's other copies of who took part, for rounds before ``before_round``: the
    defences' per-user figures (``defence.json``, which :func:`latest_weights` reads), the verdict
    ids the defence kept and the cross-fitted scores by verdict id, and each version's lineage
    (``version.json``'s ``feedback.per_user``). A forgotten pseudonymous id is left nowhere."""

    def before(path: Path, up: int) -> bool:
        n = path.parents[up].name.removeprefix("round-")
        return n.isdigit() and int(n) < before_round

    def keep_users(per_user: dict) -> dict:
        return {u: v for u, v in per_user.items() if u in present_users}

    rounds = Path(learn_dir, "rounds")
    for path in sorted(rounds.glob("round-*/defence/defence.json")):
        if before(path, 1):
            data = read_json_object(path)
            kept = [i for i in data.get("kept_ids", []) if present_ids is None or i in present_ids]
            per_user = keep_users(data.get("per_user", {}))
            if per_user != data.get("per_user", {}) or len(kept) != len(data.get("kept_ids", [])):
                atomic_write_json(path, {**data, "per_user": per_user, "kept_ids": kept})
    for path in sorted(rounds.glob("round-*/defence/crossfit-*/scores.json")):
        if before(path, 2):
            scores = read_json_object(path)
            left = {k: v for k, v in scores.items() if present_ids is None or int(k) in present_ids}
            if len(left) != len(scores):
                atomic_write_json(path, left)
    for path in sorted(Path(learn_dir, "versions").glob("v*/version.json")):
        info = read_json_object(path)
        feedback = info.get("feedback") or {}
        if "per_user" in feedback and keep_users(feedback["per_user"]) != feedback["per_user"]:
            atomic_write_json(path, {**info, "feedback": {**feedback, "per_user": keep_users(feedback["per_user"])}})
