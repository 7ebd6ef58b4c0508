"""``FeedbackLog``: the writing side of the end-user store (``rlhfkit serve`` and ``rlhfkit chat``).

It stores served replies and end users' verdicts on them as feedback-app items and labels (the
layout is in ``rlhfkit.feedback.enduser``'s docstring), answers what was served to whom (the web
chat's conversations), exports, and erases one person (``forget``, with ``erasure``).
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any, Sequence

from rlhfkit.feedback.enduser import conversations as chat_conversations
from rlhfkit.feedback.enduser import erasure
from rlhfkit.feedback.enduser.keys import (
    END_USER_KEY_ENV,
    EndUserKeyError,
    _shown_url,
    end_user_key,
    hashed_user,
    key_id,
)
from rlhfkit.feedback.enduser.kinds import (
    _INSTRUCTIONS,
    _TASK_TYPE,
    CHAT_SOURCE,
    MAX_COMPLETION_ID_CHARS,
    FeedbackError,
    _choice,
    _edit,
    _index,
    _reason,
    _served_to,
    _shown,
    _thumbs,
    project_names,
)
from rlhfkit.feedback.tasks import parse_item
from rlhfkit.privacy import redact_text

if TYPE_CHECKING:
    from rlhfkit.feedback.enduser.events import FeedbackEvent


class FeedbackLog:
    """Completions and end-user feedback in a feedback store (SQLite file or SQLAlchemy URL).
    ``scale``: the rating scale of a ratings project made here (one that exists keeps its own)."""

    def __init__(
        self,
        db_url: str,
        prefix: str = "serve",
        scale: tuple[int, int] = (1, 5),
        redact: bool = False,
        create: bool = True,
    ):
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
            row = conn.execute(
                select(P.c.id, P.c.task_type, P.c.scale_min, P.c.scale_max).where(P.c.name == name)
            ).first()
            if row is not None:
                if row.task_type != ttype:
                    raise ValueError(f"project {name!r} exists with task type {row.task_type}, expected {ttype}")
                out[ttype] = int(row.id)
                if kind == "rating":
                    scale = (int(row.scale_min), int(row.scale_max))
                continue
            if not self.create:
                continue
            out[ttype] = int(
                conn.execute(
                    insert(P).values(
                        name=name,
                        task_type=ttype,
                        instructions=_INSTRUCTIONS[kind],
                        overlap=1,
                        gold_rate=0.0,
                        scale_min=self.scale[0],
                        scale_max=self.scale[1],
                        active=False,
                        n_items=0,
                        n_labels=0,
                        created_at=time.time(),
                    )
                ).inserted_primary_key[0]
            )
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
    def log_completion(
        self,
        completion_id: str,
        messages: Sequence[dict],
        completion: str,
        model: str | None = None,
        user: str | None = None,
        version: str | None = None,
    ) -> int:
        """Store a served reply to ``messages``; returns the item id. ``user`` (the request's
        end-user id) is kept with the reply (``responses[0]["end_user"]``) so that ``forget``
        finds what was served to that person; ``version`` names the policy version that wrote it."""
        return self.log_choices(completion_id, messages, [completion], model, user, [version])[0]

    def log_choices(
        self,
        completion_id: str,
        messages: Sequence[dict],
        replies: Sequence[str],
        model: str | None = None,
        user: str | None = None,
        versions: Sequence[str | None] | None = None,
        comparison: bool = False,
        conversation: str | None = None,
    ) -> list[int]:
        """Store the replies of one completion (``n`` choices, or the two replies of a comparison:
        ``comparison=True``), one thumbs item each; returns their item ids. ``versions[i]`` is the
        version that wrote reply ``i``. ``conversation``: the web chat's conversation id (kept with
        each reply, the items' ``source`` is ``chat``), which ``conversations`` groups by."""
        from rlhfkit.feedback.queue import add_items

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
        stored_messages = [
            dict(role=m["role"], content=_shown(self._private(m["content"]), "(empty message)")) for m in messages
        ]
        end_user = self._end_user(user)
        items = []
        for i, (reply, version) in enumerate(zip(replies, versions)):
            item = parse_item(
                {
                    "messages": stored_messages,
                    "completion": _shown(self._private(reply), "(empty response)"),
                    "model": model,
                    "id": completion_id,
                },
                "thumbs",
                self.scale,
            )
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
                f"{', '.join(sorted(other))}) and {have}: give that key ({where}); nothing was changed"
            )

    def _end_user(self, user: str | None) -> str | None:
        """The stored form of an end-user id: trimmed to 64 characters, hashed under ``redact``."""
        user = (user or "").strip()[:64] or None
        return hashed_user(user, self.user_key) if user and self.redact else user

    def _private(self, text: str) -> str:
        if not self.redact:
            return text
        return redact_text(text)[0]

    def _items(self, conn, project_id: int, completion_id: str) -> list[dict]:
        """The items of one completion in a project, by choice index."""
        from sqlalchemy import select

        from rlhfkit.feedback import db

        rows = (
            conn.execute(
                select(db.items)
                .where(db.items.c.project_id == project_id, db.items.c.external_id == str(completion_id))
                .order_by(db.items.c.id)
            )
            .mappings()
            .all()
        )
        return sorted((dict(r) for r in rows), key=lambda r: _index(r["responses"][0]))

    def _item(self, conn, project_id: int, completion_id: str, index: int = 0) -> dict | None:
        return next(
            (r for r in self._items(conn, project_id, completion_id) if _index(r["responses"][0]) == index), None
        )

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
        "updated", "turns"}`` where ``turns`` is the transcript (see ``conversations.transcript``). Another
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
            rows = conn.execute(
                select(I.c.id, I.c.external_id, I.c.messages, I.c.responses, I.c.created_at)
                .where(I.c.project_id == self._pids["thumbs"], I.c.source == CHAT_SOURCE)
                .order_by(I.c.id)
            ).all()
        return chat_conversations.grouped(rows, stored)

    # ------------------------------------------------------------------ feedback
    def _label(self, conn, project_id: int, item: dict, user_id: int, body: dict, extra: dict) -> int:
        """Store a verdict on ``item`` (in screen terms with the identity order); one already
        there is replaced by a new label (a new, larger id), so stored label ids never change
        meaning."""
        from sqlalchemy import delete, insert, select, update

        from rlhfkit.feedback import db
        from rlhfkit.feedback.queue import submit_label

        A, L, P = db.assignments, db.labels, db.projects
        prev = conn.execute(
            select(L.c.id, L.c.assignment_id).where(L.c.item_id == item["id"], L.c.user_id == user_id)
        ).first()
        if prev is not None:  # a changed mind: the old verdict goes, the task is open again
            conn.execute(delete(L).where(L.c.id == prev.id))
            conn.execute(update(A).where(A.c.id == prev.assignment_id).values(status="open", finished_at=None))
            conn.execute(update(P).where(P.c.id == project_id).values(n_labels=P.c.n_labels - 1))
            aid = int(prev.assignment_id)
        else:
            order = list(range(len(item["responses"])))
            aid = int(
                conn.execute(
                    insert(A).values(
                        project_id=project_id,
                        item_id=item["id"],
                        user_id=user_id,
                        display_order=order,
                        status="open",
                        created_at=time.time(),
                    )
                ).inserted_primary_key[0]
            )
            conn.execute(
                update(db.items).where(db.items.c.id == item["id"]).values(n_assigned=db.items.c.n_assigned + 1)
            )
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

    def feedback(
        self,
        completion_id: str,
        thumbs: Any = None,
        rating: Any = None,
        comment: str | None = None,
        user: str | None = None,
        *,
        reason: str | None = None,
        edit: str | None = None,
        choice: Any = None,
        choice_index: Any = None,
    ) -> dict:
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
        if choice_index is not None and (
            isinstance(choice_index, bool) or not isinstance(choice_index, int) or choice_index < 0
        ):
            raise FeedbackError(
                "choice_index must be an integer >= 0 (which reply of the completion)", param="choice_index"
            )
        if label is None and rating is None and edit is None and choice is None:
            raise FeedbackError("give thumbs (up / down), a rating, an edit or a choice", param="thumbs")
        if user is not None and not isinstance(user, str):
            raise FeedbackError("user must be a string", param="user")
        if not isinstance(completion_id, str) or not 0 < len(completion_id) <= MAX_COMPLETION_ID_CHARS:
            raise FeedbackError(
                f"completion_id must be a string of 1 to {MAX_COMPLETION_ID_CHARS} characters", param="completion_id"
            )
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
                raise FeedbackError(
                    f"choice picks one of two replies; this completion has {len(replies)}", param="choice"
                )
            if judged >= len(replies):
                raise FeedbackError(
                    f"the completion has {len(replies)} replies: choice_index must be below that", param="choice_index"
                )
            item = replies[judged]
            if edit is not None and edit.strip() == item["responses"][0]["text"].strip():
                raise FeedbackError("edit is the served reply unchanged", param="edit")
            uid = self._user_id(conn)
            out = {
                "completion_id": completion_id,
                "thumbs_label_id": None,
                "rating_label_id": None,
                "edit_label_id": None,
                "choice_label_id": None,
            }
            if label is not None:
                out["thumbs_label_id"] = self._label(conn, pids["thumbs"], item, uid, {"label": label}, extra)
            if rating is not None:
                out["rating_label_id"] = self._label(
                    conn,
                    pids["rating"],
                    self._copy(conn, "rating", completion_id, [item]),
                    uid,
                    {"rating": rating, "flags": []},
                    extra,
                )
            if edit is not None:
                stored_edit = self._private(edit)
                out["edit_label_id"] = self._label(
                    conn,
                    pids["rewrite"],
                    self._copy(conn, "edit", completion_id, [item]),
                    uid,
                    {"rewrite": stored_edit},
                    extra,
                )
            if choice is not None:
                pair = self._copy(conn, "choice", completion_id, replies)
                out["choice_label_id"] = self._label(
                    conn, pids["pairwise"], pair, uid, {"choice": "AB"[choice], "strength": None}, extra
                )
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
        user = (user or "").strip()[:64]
        if not user:
            raise FeedbackError("give the end user's id", param="user")
        self.check_key()  # ids hashed with a key not at hand could not be found: refuse, not "erased 0"
        names = {user} | ({hashed_user(user, self.user_key)} if self.user_key else set())
        pids = list(self._pids.values())
        gone = erasure.erase(self.store, pids, names) if pids else {"items": 0, "labels": 0}
        gone["wal_truncated"] = erasure.truncate_wal(self.store)
        return gone

    def export(self, kind: str) -> list:
        """``rlhfkit.data`` records of everything stored so far: ``thumbs``, ``ratings``,
        ``rewrites`` / ``sft`` (the edits) or ``pairs`` (the choices)."""
        from rlhfkit.feedback.export import export_records

        ttype = {
            "thumbs": "thumbs",
            "ratings": "rating",
            "rewrites": "rewrite",
            "sft": "rewrite",
            "pairs": "pairwise",
        }.get(kind)
        if ttype is None:
            raise ValueError("kind must be thumbs, ratings, rewrites, sft or pairs")
        if ttype not in self._pids:
            return []
        with self.store.read() as conn:
            return export_records(conn, self._pids[ttype], kind)

    def events(self, after_id: int = 0, until_id: int | None = None, limit: int | None = None) -> list["FeedbackEvent"]:
        """``feedback_events`` of this log's projects."""
        # imported here: the reader (events.py) takes a FeedbackLog as a source, so it imports this module
        from rlhfkit.feedback.enduser.events import feedback_events

        return feedback_events(self, after_id, until_id, prefix=self.prefix, limit=limit)
