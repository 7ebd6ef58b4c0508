"""``FeedbackLog``: the writing side of the end-user store (``rlhfkit serve`` and ``rlhfkit chat``).

It stores served replies and end users' verdicts on them as feedback-app items and labels (the
layout is in ``rlhfkit.feedback.enduser``'s docstring), answers what was served to whom (the web
chat's conversations), exports, and erases one person (``forget``, with ``erasure``). The rows
themselves are written and read by ``store_rows``; this class checks what it is given and holds
the store, the key and the project ids.
"""

from __future__ import annotations

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
    CHAT_SOURCE,
    MAX_COMPLETION_ID_CHARS,
    FeedbackError,
    _choice,
    _edit,
    _reason,
    _served_to,
    _shown,
    _thumbs,
    project_names,
)
from rlhfkit.feedback.enduser.store_rows import (
    completion_item,
    completion_items,
    enduser_account,
    ensure_projects,
    item_copy,
    stored_key_ids,
    write_label,
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
            self._pids, scale_found = self.store.write(
                lambda conn: ensure_projects(conn, self.names, self.scale, self.create)
            )
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
            return [completion_item(conn, pid, completion_id, i)["id"] for i in range(len(items))]

        return self.store.write(job)

    def stored_key_ids(self) -> dict[str, int]:
        """How many stored end-user ids were hashed under each key id (this prefix's projects)."""
        with self.store.read() as conn:
            return stored_key_ids(conn, list(self._pids.values()))

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

    def completion(self, completion_id: str, index: int = 0) -> dict | None:
        """The stored reply ``index`` of a completion ``{"id", "prompt", "messages", "responses",
        ...}`` (its thumbs item), or None."""
        with self.store.read() as conn:
            return completion_item(conn, self._pids["thumbs"], completion_id, index)

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
            replies = completion_items(conn, pids["thumbs"], completion_id)
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
            uid = enduser_account(conn)
            out = {
                "completion_id": completion_id,
                "thumbs_label_id": None,
                "rating_label_id": None,
                "edit_label_id": None,
                "choice_label_id": None,
            }
            if label is not None:
                out["thumbs_label_id"] = write_label(conn, pids["thumbs"], item, uid, {"label": label}, extra)
            if rating is not None:
                out["rating_label_id"] = write_label(
                    conn,
                    pids["rating"],
                    item_copy(conn, pids["rating"], completion_id, [item]),
                    uid,
                    {"rating": rating, "flags": []},
                    extra,
                )
            if edit is not None:
                stored_edit = self._private(edit)
                out["edit_label_id"] = write_label(
                    conn,
                    pids["rewrite"],
                    item_copy(conn, pids["rewrite"], completion_id, [item]),
                    uid,
                    {"rewrite": stored_edit},
                    extra,
                )
            if choice is not None:
                pair = item_copy(conn, pids["pairwise"], completion_id, replies)
                out["choice_label_id"] = write_label(
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
