"""End users' feedback on served completions, kept in the feedback app's store.

This is the end-user side of the feedback store: ``rlhfkit serve`` and ``rlhfkit chat`` write
through ``FeedbackLog``, a learner reads with ``feedback_events``, and ``rlhfkit feedback
forget`` erases one person. Everything is an ordinary feedback-app project, item and label, so
the app's dashboards and ``rlhfkit feedback export`` work on it as on any project:

==================  =========  ================================================================
project             type       item / label
==================  =========  ================================================================
``PREFIX-thumbs``   thumbs     every served reply (one item per choice: conversation, reply,
                               ``external_id`` = completion id); label: thumbs up / down
``PREFIX-ratings``  rating     a copy of the rated reply; label: the rating (1-5 by default; a
                               project that exists keeps its own scale)
``PREFIX-edits``    rewrite    a copy of the edited reply; label: the better reply the user wrote
``PREFIX-choices``  pairwise   a comparison's two replies; label: which one the user picked
==================  =========  ================================================================

Each stored reply (``items.responses[i]``) carries ``text``, ``model``, ``version`` (the policy
version that produced it), ``end_user`` (the caller's ``user``, an HMAC under ``redact``) and,
for completions with several choices, ``index`` and ``choices``, and ``comparison: true`` for the
two replies a comparison showed. A label's payload holds the verdict, ``reason`` (the user's
optional words; older stores call it ``comment``) and the ``end_user`` who gave it.

Exports: ``--project serve-thumbs --kind thumbs`` (KTO / binary reward data), ``serve-ratings
--kind ratings``, ``serve-edits --kind rewrites`` (or ``sft``: the conversation with the better
reply), ``serve-choices --kind pairs`` (preference pairs).

The projects are created inactive, so the app's labelling queue never hands end-user traffic to
labelers. Labels are written for one labeler account, ``enduser`` (created with a random
password nobody knows): a reply was served to one caller, so it holds at most one verdict of each
kind, and giving feedback again replaces the earlier one (people change their minds) -- as a new
label with a new id, so label ids only grow and a reader holding "every id <= X" never sees one
of them change (migration 0005 keeps SQLite from reusing ids). The ``user`` string is the
caller's claim, so it names no account. Only public pieces of ``rlhfkit.feedback`` are used: the
store and its tables, ``tasks.parse_item``, ``queue.add_items`` / ``queue.submit_label`` and
``auth.create_user``.
"""
from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

__all__ = ["FeedbackLog", "FeedbackError", "FeedbackEvent", "feedback_events", "last_event_id", "EndUserKeyError",
           "end_user_key", "hashed_user", "key_id", "EVENT_KINDS", "CHAT_SOURCE", "MAX_REASON_CHARS", "MAX_EDIT_CHARS"]

EVENT_KINDS = ("thumbs", "rating", "edit", "choice")
# the feedback-app task type that holds each kind, and the project name's suffix
_TASK_TYPE = {"thumbs": "thumbs", "rating": "rating", "edit": "rewrite", "choice": "pairwise"}
_SUFFIX = {"thumbs": "thumbs", "rating": "ratings", "edit": "edits", "choice": "choices"}
_KIND_OF_TYPE = {t: k for k, t in _TASK_TYPE.items()}
_INSTRUCTIONS = {"thumbs": "Thumbs up / down given by end users of the served model.",
                 "rating": "Ratings given by end users of the served model.",
                 "edit": "Better replies written by end users of the served model (rewrites of its reply).",
                 "choice": "The reply end users picked when the served model showed them two."}
MAX_REASON_CHARS = 10_000
MAX_EDIT_CHARS = 100_000  # what a rewrite label holds at most (feedback.tasks)
MAX_COMPLETION_ID_CHARS = 200  # items.external_id


class FeedbackError(ValueError):
    """Feedback that cannot be stored (unknown completion, bad value); ``status`` is the HTTP code,
    ``param`` the request field at fault (OpenAI's error ``param``)."""

    def __init__(self, message: str, status: int = 422, param: str | None = None):
        super().__init__(message)
        self.status, self.param = status, param


def project_names(prefix: str) -> dict[str, str]:
    """The project of each feedback kind: ``{"thumbs": "serve-thumbs", "rating": "serve-ratings", ...}``."""
    return {kind: f"{prefix}-{suffix}" for kind, suffix in _SUFFIX.items()}


class FeedbackLog:
    """Completions and end-user feedback in a feedback store (SQLite file or SQLAlchemy URL).
    ``scale``: the rating scale of a ratings project made here (one that exists keeps its own)."""

    def __init__(self, db_url: str, prefix: str = "serve", scale: tuple[int, int] = (1, 5), redact: bool = False,
                 create: bool = True):
        from rlhfkit.feedback import db

        self.redact = bool(redact)
        # the key of the end-user id hashes: needed to store under redact, optional to forget
        self.user_key = end_user_key(db_url, required=self.redact)
        self.store = db.Store(db_url)
        self.create = create
        self.db_url = db_url
        self.prefix = prefix
        self.names = project_names(prefix)
        self.thumbs_project, self.ratings_project = self.names["thumbs"], self.names["rating"]
        self.edits_project, self.choices_project = self.names["edit"], self.names["choice"]
        self.scale = (int(scale[0]), int(scale[1]))
        if not self.scale[0] < self.scale[1]:
            self.store.close()
            raise ValueError(f"the rating scale must go up: got {self.scale[0]} to {self.scale[1]}")
        try:
            self._pids, scale_found = self.store.write(self._ensure_projects)
        except BaseException:
            self.store.close()
            raise
        self.scale = scale_found or self.scale
        if self.redact:  # a new key under a store of ids hashed with an old one would never match them
            try:
                self.check_key()
            except BaseException:
                self.store.close()
                raise

    def close(self) -> None:
        self.store.close()

    @property
    def projects(self) -> dict[str, int]:
        """The store's project ids of this log by task type (``thumbs``, ``rating``, ``rewrite``,
        ``pairwise``); only those that exist when the log was opened with ``create=False``."""
        return dict(self._pids)

    # ------------------------------------------------------------------ set-up
    def _ensure_projects(self, conn) -> tuple[dict[str, int], tuple[int, int] | None]:
        from sqlalchemy import insert, select

        from rlhfkit.feedback import db

        P = db.projects
        out, scale = {}, None
        for kind, name in self.names.items():
            ttype = _TASK_TYPE[kind]
            row = conn.execute(select(P.c.id, P.c.task_type, P.c.scale_min, P.c.scale_max)
                               .where(P.c.name == name)).first()
            if row is not None:
                if row.task_type != ttype:
                    raise ValueError(f"project {name!r} exists with task type {row.task_type}, expected {ttype}")
                out[ttype] = int(row.id)
                if kind == "rating":
                    scale = (int(row.scale_min), int(row.scale_max))
                continue
            if not self.create:
                continue
            out[ttype] = int(conn.execute(insert(P).values(
                name=name, task_type=ttype, instructions=_INSTRUCTIONS[kind], overlap=1, gold_rate=0.0,
                scale_min=self.scale[0], scale_max=self.scale[1], active=False, n_items=0, n_labels=0,
                created_at=time.time())).inserted_primary_key[0])
        return out, scale

    def _user_id(self, conn) -> int:
        from sqlalchemy import select

        from rlhfkit.feedback import db
        from rlhfkit.feedback.auth import create_user

        name = "enduser"
        uid = conn.execute(select(db.users.c.id).where(db.users.c.username == name)).scalar()
        if uid is None:  # an account nobody can log into (random password, never shown)
            uid = create_user(conn, name, secrets.token_urlsafe(24), "labeler")
        return int(uid)

    # ------------------------------------------------------------------ completions
    def log_completion(self, completion_id: str, messages: Sequence[dict], completion: str,
                       model: str | None = None, user: str | None = None, version: str | None = None) -> int:
        """Store a served reply to ``messages``; returns the item id. ``user`` (the request's
        end-user id) is kept with the reply (``responses[0]["end_user"]``) so that ``forget``
        finds what was served to that person; ``version`` names the policy version that wrote it."""
        return self.log_choices(completion_id, messages, [completion], model, user, [version])[0]

    def log_choices(self, completion_id: str, messages: Sequence[dict], replies: Sequence[str],
                    model: str | None = None, user: str | None = None,
                    versions: Sequence[str | None] | None = None, comparison: bool = False,
                    conversation: str | None = None) -> list[int]:
        """Store the replies of one completion (``n`` choices, or the two replies of a comparison:
        ``comparison=True``), one thumbs item each; returns their item ids. ``versions[i]`` is the
        version that wrote reply ``i``. ``conversation``: the web chat's conversation id (kept with
        each reply, the items' ``source`` is ``chat``), which ``conversations`` groups by."""
        from rlhfkit.feedback.queue import add_items
        from rlhfkit.feedback.tasks import parse_item

        replies = list(replies)
        versions = list(versions) if versions is not None else [None] * len(replies)
        if not replies or len(versions) != len(replies):
            raise ValueError("give one version per reply, and at least one reply")
        if comparison and len(replies) != 2:
            raise ValueError("a comparison shows two replies")
        # the store's items hold no empty text; an empty turn is legal in a request (an empty
        # system prompt, a blank user turn) and must not fail the storing of a reply already made.
        # It keeps its place, shown as "(empty message)": leaving an empty system turn out would
        # change what a template renders (SmolLM2's adds its default system prompt when the
        # conversation has none), so the stored conversation would not be the one answered.
        stored_messages = [dict(role=m["role"], content=_shown(self._private(m["content"]), "(empty message)"))
                           for m in messages]
        end_user = self._end_user(user)
        items = []
        for i, (reply, version) in enumerate(zip(replies, versions)):
            item = parse_item({"messages": stored_messages, "completion": _shown(self._private(reply), "(empty response)"),
                               "model": model, "id": completion_id}, "thumbs", self.scale)
            response = item["responses"][0]
            response["version"] = version
            if end_user:
                response["end_user"] = end_user
            if len(replies) > 1:
                response.update(index=i, choices=len(replies))
            if comparison:
                response["comparison"] = True
            if conversation:
                response["conversation"] = conversation
            items.append(item)
        pid = self._pids["thumbs"]

        def job(conn):
            add_items(conn, pid, items, source=CHAT_SOURCE if conversation else "serve")
            return [self._item(conn, pid, completion_id, i)["id"] for i in range(len(items))]
        return self.store.write(job)

    def stored_key_ids(self) -> dict[str, int]:
        """How many stored end-user ids were hashed under each key id (this prefix's projects)."""
        from sqlalchemy import select

        from rlhfkit.feedback import db

        pids = list(self._pids.values())
        counts: dict[str, int] = {}

        def note(user) -> None:
            if isinstance(user, str) and user.startswith("hmac:"):
                kid = user.split(":")[1] if user.count(":") == 2 else "(unnamed)"
                counts[kid] = counts.get(kid, 0) + 1
        with self.store.read() as conn:
            for r in conn.execute(select(db.items.c.responses).where(db.items.c.project_id.in_(pids))):
                note(_served_to(r.responses))
            for r in conn.execute(select(db.labels.c.payload).where(db.labels.c.project_id.in_(pids))):
                note((r.payload or {}).get("end_user"))
        return counts

    def check_key(self) -> None:
        """Refuse (``EndUserKeyError``) when stored end-user ids were hashed with another key than
        the one at hand, or when there are hashed ids and no key."""
        counts = self.stored_key_ids()
        mine = key_id(self.user_key) if self.user_key else None
        other = {k: n for k, n in counts.items() if k != mine}
        if other:
            where = f"${END_USER_KEY_ENV} or the key file beside the store"
            have = f"this key's id is {mine}" if mine else "no key was found"
            raise EndUserKeyError(
                f"{sum(other.values())} end-user ids in {_shown_url(self.db_url)} were hashed with another key (key id "
                f"{', '.join(sorted(other))}) and {have}: give that key ({where}); nothing was changed")

    def _end_user(self, user: str | None) -> str | None:
        """The stored form of an end-user id: trimmed to 64 characters, hashed under ``redact``."""
        user = (user or "").strip()[:64] or None
        return hashed_user(user, self.user_key) if user and self.redact else user

    def _private(self, text: str) -> str:
        if not self.redact:
            return text
        from rlhfkit.privacy import redact_text

        return redact_text(text)[0]

    def _items(self, conn, project_id: int, completion_id: str) -> list[dict]:
        """The items of one completion in a project, by choice index."""
        from sqlalchemy import select

        from rlhfkit.feedback import db

        rows = conn.execute(select(db.items).where(db.items.c.project_id == project_id,
                                                   db.items.c.external_id == str(completion_id))
                            .order_by(db.items.c.id)).mappings().all()
        return sorted((dict(r) for r in rows), key=lambda r: _index(r["responses"][0]))

    def _item(self, conn, project_id: int, completion_id: str, index: int = 0) -> dict | None:
        return next((r for r in self._items(conn, project_id, completion_id) if _index(r["responses"][0]) == index),
                    None)

    def completion(self, completion_id: str, index: int = 0) -> dict | None:
        """The stored reply ``index`` of a completion ``{"id", "prompt", "messages", "responses",
        ...}`` (its thumbs item), or None."""
        with self.store.read() as conn:
            return self._item(conn, self._pids["thumbs"], completion_id, index)

    def served_to(self, completion_id: str, user: str | None) -> bool:
        """Whether the completion was served to ``user`` (compared in its stored form: hashed
        under ``redact``); False for an unknown completion or one served to no one named."""
        stored = self._end_user(user)
        if stored is None:
            return False
        item = self.completion(completion_id) if isinstance(completion_id, str) else None
        return item is not None and _served_to(item["responses"]) == stored

    def conversations(self, user: str) -> list[dict]:
        """The web chat's conversations served to ``user``, newest first: ``{"id", "title",
        "updated", "turns"}`` where ``turns`` is the transcript (see ``_transcript``). Another
        user's conversations never appear (they are matched on the stored end-user id); erased
        ones (``forget``) are gone with their completions. It reads the chat's completions
        (items of ``source`` chat): enough for a deployment of thousands of them."""
        from sqlalchemy import select

        from rlhfkit.feedback import db

        stored = self._end_user(user)
        if stored is None:
            return []
        I = db.items
        with self.store.read() as conn:
            rows = conn.execute(select(I.c.id, I.c.external_id, I.c.messages, I.c.responses, I.c.created_at)
                                .where(I.c.project_id == self._pids["thumbs"], I.c.source == CHAT_SOURCE)
                                .order_by(I.c.id)).all()
        by_conversation: dict[str, list] = {}
        for r in rows:
            response = r.responses[0]
            if _served_to(r.responses) == stored and response.get("conversation"):
                by_conversation.setdefault(response["conversation"], []).append(r)
        out = []
        for cid, items in by_conversation.items():
            turns = _transcript(items)
            first = next((t["content"] for t in turns if t["role"] == "user"), "")
            out.append({"id": cid, "title": " ".join(first.split())[:60], "updated": max(r.created_at for r in items),
                        "turns": turns})
        return sorted(out, key=lambda c: -c["updated"])

    # ------------------------------------------------------------------ feedback
    def _label(self, conn, project_id: int, item: dict, user_id: int, body: dict, extra: dict) -> int:
        """Store a verdict on ``item`` (in screen terms with the identity order); one already
        there is replaced by a new label (a new, larger id), so stored label ids never change
        meaning."""
        from sqlalchemy import delete, insert, select, update

        from rlhfkit.feedback import db
        from rlhfkit.feedback.queue import submit_label

        A, L, P = db.assignments, db.labels, db.projects
        prev = conn.execute(select(L.c.id, L.c.assignment_id).where(L.c.item_id == item["id"],
                                                                    L.c.user_id == user_id)).first()
        if prev is not None:  # a changed mind: the old verdict goes, the task is open again
            conn.execute(delete(L).where(L.c.id == prev.id))
            conn.execute(update(A).where(A.c.id == prev.assignment_id).values(status="open", finished_at=None))
            conn.execute(update(P).where(P.c.id == project_id).values(n_labels=P.c.n_labels - 1))
            aid = int(prev.assignment_id)
        else:
            order = list(range(len(item["responses"])))
            aid = int(conn.execute(insert(A).values(project_id=project_id, item_id=item["id"], user_id=user_id,
                                                    display_order=order, status="open", created_at=time.time()))
                      .inserted_primary_key[0])
            conn.execute(update(db.items).where(db.items.c.id == item["id"])
                         .values(n_assigned=db.items.c.n_assigned + 1))
        res = submit_label(conn, user_id, aid, body, duration_ms=0)
        if extra:
            payload = conn.execute(select(L.c.payload).where(L.c.id == res["label_id"])).scalar()
            conn.execute(update(L).where(L.c.id == res["label_id"]).values(payload={**payload, **extra}))
        return int(res["label_id"])

    def _copy(self, conn, kind: str, completion_id: str, sources: list[dict]) -> dict:
        """The item of ``kind``'s project for these thumbs items (one reply, or a comparison's
        two), made on first use."""
        from rlhfkit.feedback.queue import add_items

        pid = self._pids[_TASK_TYPE[kind]]
        index = _index(sources[0]["responses"][0]) if len(sources) == 1 else 0
        item = self._item(conn, pid, completion_id, index)
        if item is None:
            copy = {k: sources[0][k] for k in ("prompt", "messages", "external_id")}
            copy["responses"] = [s["responses"][0] for s in sources]
            add_items(conn, pid, [dict(copy, is_gold=False, gold=None)], source="serve")
            item = self._item(conn, pid, completion_id, index)
        return item

    def feedback(self, completion_id: str, thumbs: Any = None, rating: Any = None, comment: str | None = None,
                 user: str | None = None, *, reason: str | None = None, edit: str | None = None,
                 choice: Any = None, choice_index: Any = None) -> dict:
        """Store an end user's feedback on a stored completion, any of:

        - ``thumbs``: ``"up"`` / ``"down"`` / bool, with an optional ``reason`` (``comment`` is
          the same field under its older name);
        - ``rating``: an integer on the ratings project's scale (1-5 unless it was made with
          another);
        - ``edit``: a better reply (a rewrite of the served one);
        - ``choice``: 0 or 1, the reply picked from a completion with two replies (a comparison,
          or ``n = 2``): a preference pair.

        ``choice_index`` says which reply of a completion with several choices thumbs / rating /
        edit judge (default: the one picked by ``choice`` when given, else 0). ``reason`` is kept
        with every verdict of the call. Returns ``{"completion_id", "thumbs_label_id",
        "rating_label_id", "edit_label_id", "choice_label_id"}`` (None for kinds not given);
        raises ``FeedbackError`` (404 for an unknown completion, 422 naming the field for a bad
        value) before anything is stored."""
        label = _thumbs(thumbs)
        rating = self._rating(rating)
        reason = _reason(reason, comment)
        edit = _edit(edit)
        choice = _choice(choice)
        if choice_index is not None and (isinstance(choice_index, bool) or not isinstance(choice_index, int)
                                         or choice_index < 0):
            raise FeedbackError("choice_index must be an integer >= 0 (which reply of the completion)",
                                param="choice_index")
        if label is None and rating is None and edit is None and choice is None:
            raise FeedbackError("give thumbs (up / down), a rating, an edit or a choice", param="thumbs")
        if user is not None and not isinstance(user, str):
            raise FeedbackError("user must be a string", param="user")
        if not isinstance(completion_id, str) or not 0 < len(completion_id) <= MAX_COMPLETION_ID_CHARS:
            raise FeedbackError(f"completion_id must be a string of 1 to {MAX_COMPLETION_ID_CHARS} characters",
                                param="completion_id")
        judged = choice_index if choice_index is not None else (choice if choice is not None else 0)
        end_user = self._end_user(user)
        if self.redact:
            reason = reason and self._private(reason)
        extra = {k: v for k, v in (("reason", reason), ("end_user", end_user)) if v}
        pids = self._pids

        def job(conn):
            replies = self._items(conn, pids["thumbs"], completion_id)
            if not replies:
                raise FeedbackError(f"no completion {completion_id!r}", status=404, param="completion_id")
            if choice is not None and len(replies) != 2:
                raise FeedbackError(f"choice picks one of two replies; this completion has {len(replies)}",
                                    param="choice")
            if judged >= len(replies):
                raise FeedbackError(f"the completion has {len(replies)} replies: choice_index must be below that",
                                    param="choice_index")
            item = replies[judged]
            if edit is not None and edit.strip() == item["responses"][0]["text"].strip():
                raise FeedbackError("edit is the served reply unchanged", param="edit")
            uid = self._user_id(conn)
            out = {"completion_id": completion_id, "thumbs_label_id": None, "rating_label_id": None,
                   "edit_label_id": None, "choice_label_id": None}
            if label is not None:
                out["thumbs_label_id"] = self._label(conn, pids["thumbs"], item, uid, {"label": label}, extra)
            if rating is not None:
                out["rating_label_id"] = self._label(conn, pids["rating"], self._copy(conn, "rating", completion_id, [item]),
                                                     uid, {"rating": rating, "flags": []}, extra)
            if edit is not None:
                stored_edit = self._private(edit)
                out["edit_label_id"] = self._label(conn, pids["rewrite"], self._copy(conn, "edit", completion_id, [item]),
                                                   uid, {"rewrite": stored_edit}, extra)
            if choice is not None:
                pair = self._copy(conn, "choice", completion_id, replies)
                out["choice_label_id"] = self._label(conn, pids["pairwise"], pair, uid,
                                                     {"choice": "AB"[choice], "strength": None}, extra)
            return out
        return self.store.write(job)

    def _rating(self, rating: Any) -> int | None:
        if rating is None:
            return None
        if isinstance(rating, float) and rating.is_integer():  # JSON clients send 5 as 5.0 too
            rating = int(rating)
        if isinstance(rating, bool) or not isinstance(rating, int) or not self.scale[0] <= rating <= self.scale[1]:
            raise FeedbackError(f"rating must be an integer from {self.scale[0]} to {self.scale[1]}", param="rating")
        return rating

    def forget(self, user: str) -> dict:
        """Erase what is stored about one end user (the right to erasure, GDPR art. 17) in this
        prefix's projects: every completion served to ``user`` (its ``end_user``), every
        completion served to no one named on which ``user`` gave feedback (a completion id goes
        only to the caller it was served to), the copies of those completions in the ratings,
        edits and choices projects, all feedback on them, and ``user``'s feedback on other
        completions. ``user`` matches as given and, when the key is at hand, in its hashed form
        (a store written with ``redact``). The projects' counts follow. Deleted rows are
        overwritten (SQLite ``secure_delete``) and the write-ahead log is emptied when no other
        connection holds it (``wal_truncated``). Returns ``{"items", "labels", "wal_truncated"}``."""
        from sqlalchemy import delete, select, update

        from rlhfkit.feedback import db

        user = (user or "").strip()[:64]
        if not user:
            raise FeedbackError("give the end user's id", param="user")
        self.check_key()  # ids hashed with a key not at hand could not be found: refuse, not "erased 0"
        names = {user} | ({hashed_user(user, self.user_key)} if self.user_key else set())
        pids = list(self._pids.values())
        I, L, A, P = db.items, db.labels, db.assignments, db.projects

        def job(conn):
            if self.store.is_sqlite:  # freed pages are zeroed, not left holding the erased text
                conn.exec_driver_sql("PRAGMA secure_delete=ON")
            rows = conn.execute(select(I.c.id, I.c.external_id, I.c.responses, I.c.project_id, I.c.is_gold)
                                .where(I.c.project_id.in_(pids))).all()
            labels = conn.execute(select(L.c.id, L.c.item_id, L.c.payload, L.c.project_id, L.c.assignment_id,
                                         L.c.is_gold).where(L.c.project_id.in_(pids))).all()
            users_labels = [r for r in labels if (r.payload or {}).get("end_user") in names]
            by_user = {r.item_id for r in users_labels}
            erased = {r.external_id for r in rows if _served_to(r.responses) in names
                      or (_served_to(r.responses) is None and r.id in by_user)}
            item_projects = [r for r in rows if r.external_id in erased]  # with the completions' copies
            items = {r.id for r in item_projects}
            user_label_ids = {r.id for r in users_labels}
            touched = [r for r in labels if r.item_id in items or r.id in user_label_ids]
            gone_labels = {t.id for t in touched}
            if not items and not gone_labels:
                return {"items": 0, "labels": 0}
            conn.execute(delete(L).where(L.c.id.in_(gone_labels)))
            conn.execute(delete(A).where(A.c.id.in_([t.assignment_id for t in touched])))
            for t in touched:  # the feedback left on items that stay
                if t.item_id not in items:
                    conn.execute(update(I).where(I.c.id == t.item_id).values(n_assigned=I.c.n_assigned - 1))
            conn.execute(delete(A).where(A.c.item_id.in_(items)))
            conn.execute(delete(I).where(I.c.id.in_(items)))
            for pid in pids:  # the denormalised counts: non-gold items and their labels
                n_items = sum(1 for r in item_projects if r.project_id == pid and not r.is_gold)
                n_labels = sum(1 for t in touched if t.project_id == pid and not t.is_gold)
                if n_items or n_labels:
                    conn.execute(update(P).where(P.c.id == pid).values(n_items=P.c.n_items - n_items,
                                                                      n_labels=P.c.n_labels - n_labels))
            return {"items": len(erased), "labels": len(gone_labels)}
        gone = self.store.write(job) if pids else {"items": 0, "labels": 0}
        gone["wal_truncated"] = self._truncate_wal()
        return gone

    def _truncate_wal(self) -> bool | None:
        """Checkpoint SQLite's write-ahead log and truncate it to 0 bytes (the erased rows' old
        pages live there until then); False when another connection (a running server) keeps
        it from finishing, None for other databases."""
        if not self.store.is_sqlite:
            return None
        raw = self.store.engine.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            busy = cur.fetchone()[0]
            cur.close()
        finally:
            raw.close()
        return not busy

    def export(self, kind: str) -> list:
        """``rlhfkit.data`` records of everything stored so far: ``thumbs``, ``ratings``,
        ``rewrites`` / ``sft`` (the edits) or ``pairs`` (the choices)."""
        from rlhfkit.feedback.export import export_records

        ttype = {"thumbs": "thumbs", "ratings": "rating", "rewrites": "rewrite", "sft": "rewrite",
                 "pairs": "pairwise"}.get(kind)
        if ttype is None:
            raise ValueError("kind must be thumbs, ratings, rewrites, sft or pairs")
        if ttype not in self._pids:
            return []
        with self.store.read() as conn:
            return export_records(conn, self._pids[ttype], kind)

    def events(self, after_id: int = 0, until_id: int | None = None, limit: int | None = None) -> list["FeedbackEvent"]:
        """``feedback_events`` of this log's projects."""
        return feedback_events(self, after_id, until_id, prefix=self.prefix, limit=limit)


# ---------------------------------------------------------------------------------- the reader
@dataclass(frozen=True)
class FeedbackEvent:
    """One end-user verdict, as a learner reads it (``feedback_events``).

    ``id``: the label id; ids only grow (a changed verdict is a new event with a new id, the old
    one is gone), so "every event with id <= X" is a snapshot a learner can name and read again.
    ``kind``: ``thumbs`` | ``rating`` | ``edit`` | ``choice``. ``messages``: the conversation the
    reply answered (as stored: redacted under ``redact``, empty turns as "(empty message)");
    ``prompt`` the same rendered as exports render it. ``responses``: the reply judged (one), or
    the two replies of a choice; ``versions`` the policy version that wrote each (None for
    completions stored without one); ``choice_indices`` which choices of the completion they are.
    ``value``: thumbs ``True`` (up) / ``False``; rating the integer, on ``scale``; edit the better
    reply; choice the index (0 or 1) into ``responses`` of the reply picked. ``reason``: the user's
    words, if any. ``end_user``: who gave it (the id sent as ``user``, an HMAC under ``redact``;
    the completion's end user when the feedback named none). ``created_at``: when it was stored
    (seconds since the epoch)."""

    id: int
    kind: str
    completion_id: str
    messages: tuple
    prompt: str
    responses: tuple
    versions: tuple
    choice_indices: tuple
    value: Any
    reason: str | None
    end_user: str | None
    created_at: float
    scale: tuple | None = None

    @property
    def response(self) -> str:
        """The reply judged (the first of a choice's two)."""
        return self.responses[0]

    @property
    def version(self) -> str | None:
        return self.versions[0]

    def to_dict(self) -> dict:
        """A JSON-ready dict (lists for the tuples)."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _event_source(source: Any, prefix: str):
    """``(connection context, project ids by task type or None to look up, owned store or None)``."""
    from rlhfkit.feedback import db

    if isinstance(source, FeedbackLog):
        return source.store.read(), source._pids, None
    if isinstance(source, db.Store):
        return source.read(), None, None
    if isinstance(source, str):
        store = db.Store(source)
        return store.read(), None, store
    return _Borrowed(source), None, None  # a SQLAlchemy connection the caller holds


class _Borrowed:
    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        return self.conn

    def __exit__(self, *exc):
        return False


def _project_ids(conn, prefix: str) -> dict[int, str]:
    """``{project id: task type}`` of the end-user projects of ``prefix`` that exist."""
    from sqlalchemy import select

    from rlhfkit.feedback import db

    names = project_names(prefix)
    rows = conn.execute(select(db.projects.c.id, db.projects.c.name, db.projects.c.task_type)
                        .where(db.projects.c.name.in_(list(names.values())))).all()
    kind_of_name = {name: kind for kind, name in names.items()}
    # a project of the right name and another task type is not end-user feedback (FeedbackLog refuses it)
    return {int(r.id): r.task_type for r in rows if _TASK_TYPE[kind_of_name[r.name]] == r.task_type}


def feedback_events(source: Any, after_id: int = 0, until_id: int | None = None, *, prefix: str = "serve",
                    limit: int | None = None) -> list[FeedbackEvent]:
    """Every end-user verdict with ``after_id < id <= until_id`` (``until_id`` None: no bound),
    ordered by id, at most ``limit``. ``source``: a ``FeedbackLog``, a ``feedback.db.Store``, a
    database URL / SQLite path, or an open SQLAlchemy connection (read in its transaction).

    A learner takes a snapshot with ``until_id = last_event_id(...)`` and resumes with
    ``after_id`` = the last id it used: ids only grow, so nothing is read twice or missed. What
    ``forget`` erased is gone from later reads (a snapshot the learner saved keeps it: honour
    erasure there too). Ids are assigned in commit order when one process writes the end-user
    projects (one ``rlhfkit serve``); with several serving processes on one PostgreSQL database
    an id can become visible after a larger one, so read up to an id older than the writers'
    slowest transaction."""
    from sqlalchemy import select

    from rlhfkit.feedback import db
    from rlhfkit.feedback.tasks import render_prompt

    ctx, _, owned = _event_source(source, prefix)
    try:
        with ctx as conn:
            pids = _project_ids(conn, prefix)
            if not pids:
                return []
            L, I, P = db.labels, db.items, db.projects
            q = (select(L.c.id, L.c.project_id, L.c.payload, L.c.created_at, I.c.external_id, I.c.prompt,
                        I.c.messages, I.c.responses, P.c.scale_min, P.c.scale_max)
                 .select_from(L.join(I, I.c.id == L.c.item_id).join(P, P.c.id == L.c.project_id))
                 .where(L.c.project_id.in_(list(pids)), L.c.id > int(after_id)).order_by(L.c.id))
            if until_id is not None:
                q = q.where(L.c.id <= int(until_id))
            if limit is not None:
                q = q.limit(int(limit))
            rows = conn.execute(q).all()
    finally:
        if owned is not None:
            owned.close()
    out = []
    for r in rows:
        kind = _KIND_OF_TYPE[pids[r.project_id]]
        p = r.payload or {}
        responses = list(r.responses or [])
        value = {"thumbs": lambda: bool(p["label"]), "rating": lambda: int(p["rating"]),
                 "edit": lambda: p["rewrite"],
                 "choice": lambda: {"first": 0, "second": 1}.get(p.get("verdict"), p.get("verdict"))}[kind]()
        out.append(FeedbackEvent(
            id=int(r.id), kind=kind, completion_id=r.external_id, messages=tuple(r.messages or ()),
            prompt=render_prompt(r.prompt, r.messages), responses=tuple(x["text"] for x in responses),
            versions=tuple(x.get("version") for x in responses), choice_indices=tuple(_index(x) for x in responses),
            value=value, reason=p.get("reason") or p.get("comment"), end_user=p.get("end_user") or _served_to(responses),
            created_at=float(r.created_at), scale=(int(r.scale_min), int(r.scale_max)) if kind == "rating" else None))
    return out


def last_event_id(source: Any, *, prefix: str = "serve") -> int:
    """The largest event id stored now (0 when there is none): the ``until_id`` of a snapshot."""
    from sqlalchemy import func, select

    from rlhfkit.feedback import db

    ctx, _, owned = _event_source(source, prefix)
    try:
        with ctx as conn:
            pids = _project_ids(conn, prefix)
            if not pids:
                return 0
            return int(conn.execute(select(func.max(db.labels.c.id))
                                    .where(db.labels.c.project_id.in_(list(pids)))).scalar() or 0)
    finally:
        if owned is not None:
            owned.close()


END_USER_KEY_ENV = "RLHFKIT_END_USER_KEY"


def end_user_key(db_url: str, required: bool) -> bytes | None:
    """The secret that end-user ids are hashed with (HMAC-SHA256): ``$RLHFKIT_END_USER_KEY``,
    else the key file beside a SQLite store (``<db>.end_user_key``, 32 random bytes, created
    owner-only when ``required``). Kept out of the database, so that its rows and exports alone
    do not turn a hash back into an id by trying candidate ids (an unkeyed hash of an e-mail
    address would). None when no key exists and none is required."""
    import os

    from rlhfkit.feedback import db

    if os.environ.get(END_USER_KEY_ENV):
        return os.environ[END_USER_KEY_ENV].encode("utf-8")
    path = db.sqlite_file(db_url)
    if path is None:
        if required:
            raise EndUserKeyError(f"set ${END_USER_KEY_ENV}: hashed end-user ids need a secret kept outside the "
                             f"database, and {_shown_url(db_url)!r} is not a file that a key file could sit beside")
        return None
    key_file = path.with_name(path.name + ".end_user_key")
    if not key_file.is_file() and required:
        key_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # made by another process meanwhile
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
    return key_file.read_text(encoding="utf-8").strip().encode("utf-8") if key_file.is_file() else None


def _shown_url(url: str) -> str:
    """A database URL fit for a message: its password replaced by ***."""
    if "://" not in str(url):
        return str(url)
    try:
        from sqlalchemy.engine import make_url

        return make_url(str(url)).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy reads: show nothing of it
        return "(the database URL)"


def key_id(key: bytes) -> str:
    """A short public name of a key (an HMAC of a fixed text): stored ids carry it, so that a store
    read with another key (a key file lost with a copied database, another $RLHFKIT_END_USER_KEY)
    is told apart from one where the person simply left nothing."""
    import hmac

    return hmac.new(key, b"rlhfkit end-user key id", hashlib.sha256).hexdigest()[:8]


def hashed_user(user: str, key: bytes) -> str:
    """``hmac:KEYID:DIGEST``: the first 16 hex digits of HMAC-SHA256(key, user)."""
    import hmac

    return f"hmac:{key_id(key)}:" + hmac.new(key, user.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


class EndUserKeyError(ValueError):
    """The end-user ids in a store were hashed with a key that is not at hand."""


CHAT_SOURCE = "chat"  # items.source of the web chat's completions


def _transcript(items) -> list[dict]:
    """A chat conversation's turns from its stored completions (items in id order, one per
    reply): ``{"role": "user", "content"}`` and ``{"role": "assistant", "completion_id",
    "replies": [text, ...], "versions", "comparison", "picked"}``. A completion asked with the
    first k turns replaces what followed them (a regenerated reply, a new branch); ``picked``
    says which of several replies the conversation went on with (read from the next
    completion's messages; None for the last one). System turns are not shown."""
    completions: dict[str, list] = {}
    for r in items:
        completions.setdefault(r.external_id, []).append(r)
    turns: list[dict] = []
    for cid, rows in completions.items():
        rows = sorted(rows, key=lambda r: _index(r.responses[0]))
        shown = [m for m in (rows[0].messages or []) if m["role"] != "system"]
        if not shown:
            continue
        del turns[len(shown) - 1:]
        if turns and turns[-1]["role"] == "assistant" and len(turns) == len(shown) - 1:
            went_on = shown[-2]["content"] if len(shown) >= 2 else None
            texts = turns[-1]["replies"]
            turns[-1]["picked"] = texts.index(went_on) if went_on in texts else turns[-1]["picked"]
        while len(turns) < len(shown) - 1:  # turns asked before this conversation's first stored reply
            m = shown[len(turns)]
            turns.append({"role": m["role"], "content": m["content"]} if m["role"] == "user" else
                         {"role": "assistant", "completion_id": None, "replies": [m["content"]], "versions": [None],
                          "comparison": False, "picked": 0})
        turns.append({"role": "user", "content": shown[-1]["content"]})
        responses = [r.responses[0] for r in rows]
        turns.append({"role": "assistant", "completion_id": cid, "replies": [x["text"] for x in responses],
                      "versions": [x.get("version") for x in responses],
                      "comparison": bool(responses[0].get("comparison")),
                      "picked": 0 if len(responses) == 1 else None})
    return turns


def _served_to(responses) -> str | None:
    """The end user a stored completion was served to (``log_completion`` keeps it with the reply)."""
    return next((x.get("end_user") for x in responses or [] if isinstance(x, dict) and x.get("end_user")), None)


def _index(response: dict) -> int:
    """Which choice of its completion a stored reply is (0 for a completion of one)."""
    return int(response.get("index", 0)) if isinstance(response, dict) else 0


def _reason(reason: Any, comment: Any) -> str | None:
    """The ``reason`` (or its older name ``comment``), checked: a string of at most
    ``MAX_REASON_CHARS``; blank is none."""
    for name, v in (("reason", reason), ("comment", comment)):
        if v is not None and not isinstance(v, str):
            raise FeedbackError(f"{name} must be a string", param=name)
        if v is not None and len(v) > MAX_REASON_CHARS:
            raise FeedbackError(f"{name} is longer than {MAX_REASON_CHARS} characters", param=name)
    if reason is not None and comment is not None and reason.strip() != comment.strip():
        raise FeedbackError("give reason or comment (its older name), not both", param="comment")
    return ((reason if reason is not None else comment) or "").strip() or None


def _edit(edit: Any) -> str | None:
    if edit is None:
        return None
    if not isinstance(edit, str) or not edit.strip():
        raise FeedbackError("edit must be the better reply: a non-empty string", param="edit")
    if len(edit) > MAX_EDIT_CHARS:
        raise FeedbackError(f"edit is longer than {MAX_EDIT_CHARS} characters", param="edit")
    return edit


def _choice(choice: Any) -> int | None:
    if choice is None:
        return None
    if isinstance(choice, bool) or choice not in (0, 1):
        raise FeedbackError("choice must be 0 or 1: the index of the reply picked", param="choice")
    return int(choice)


def _shown(text: str, placeholder: str) -> str:
    """``text`` as the store keeps it: a placeholder for an empty text, and U+FFFD for what no
    store column holds (a NUL, which PostgreSQL text refuses; a lone surrogate, which is not
    UTF-8). A model may draw such tokens, and a reply already served must still be stored."""
    if not text.strip():
        return placeholder
    return "".join("\ufffd" if c == "\x00" or "\ud800" <= c <= "\udfff" else c for c in text)


def _thumbs(v: Any) -> bool | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("up", "down", "thumbs_up", "thumbs_down", "+1", "-1"):
        return v.lower() in ("up", "thumbs_up", "+1")
    if isinstance(v, int) and v in (1, -1):
        return v == 1
    raise FeedbackError("thumbs must be 'up' or 'down'", param="thumbs")
