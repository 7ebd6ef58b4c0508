"""End users' feedback on served completions, kept in the feedback app's store.

Every completion the server (or ``rlhfkit chat``) returns is stored as an item of a thumbs project
(``{prefix}-thumbs``, default ``serve-thumbs``): its conversation (``messages``), the reply, the
model name and ``external_id = completion_id``. Feedback then becomes an ordinary label:

- ``thumbs`` up / down -> a thumbs label on that item: ``rlhfkit feedback export --project
  serve-thumbs --kind thumbs`` gives ``ThumbsRecord`` JSONL (KTO / binary reward-model data);
- ``rating`` 1-7 -> the item is copied into ``{prefix}-ratings`` (a rating project, scale 1-7) and
  rated there: ``--kind ratings`` gives ``RatingRecord`` JSONL;
- ``comment`` is kept in the label's payload (``payload["comment"]``) next to the verdict, and
  the caller's ``user`` string (OpenAI's end-user id) as ``payload["end_user"]``.

Both projects are created inactive, so the app's labelling queue never hands end-user traffic to
labelers; their dashboards and exports work as for any project. Labels are written for one
labeler account, ``enduser`` (created with a random password nobody knows): a completion was
served to one caller, so it holds at most one verdict of each kind, and giving feedback again on
it replaces the earlier one (people change their minds). The ``user`` string is the caller's
claim, so it names no account: one account per claimed name would let a caller stack votes on a
completion and grow the users table without bound. Only public pieces of ``rlhfkit.feedback`` are used: the store and its
tables, ``tasks.parse_item``, ``queue.add_items`` / ``queue.submit_label`` and ``auth.create_user``.
"""
from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any, Sequence

__all__ = ["FeedbackLog", "FeedbackError"]


class FeedbackError(ValueError):
    """Feedback that cannot be stored (unknown completion, bad value); ``status`` is the HTTP code,
    ``param`` the request field at fault (OpenAI's error ``param``)."""

    def __init__(self, message: str, status: int = 422, param: str | None = None):
        super().__init__(message)
        self.status, self.param = status, param


class FeedbackLog:
    """Completions and end-user feedback in a feedback store (SQLite file or SQLAlchemy URL)."""

    def __init__(self, db_url: str, prefix: str = "serve", scale: tuple[int, int] = (1, 7), redact: bool = False,
                 create: bool = True):
        from rlhfkit.feedback import db

        self.redact = bool(redact)
        # the key of the end-user id hashes: needed to store under redact, optional to forget
        self.user_key = end_user_key(db_url, required=self.redact)
        self.store = db.Store(db_url)
        self.create = create
        self.db_url = db_url
        self.thumbs_project = f"{prefix}-thumbs"
        self.ratings_project = f"{prefix}-ratings"
        self.scale = (int(scale[0]), int(scale[1]))
        self._pids = self.store.write(self._ensure_projects)
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
        """The store's project ids of this log by kind (``thumbs``, ``rating``); empty when the
        store has none and the log was opened with ``create=False``."""
        return dict(self._pids)

    # ------------------------------------------------------------------ set-up
    def _ensure_projects(self, conn) -> dict[str, int]:
        from sqlalchemy import insert, select

        from rlhfkit.feedback import db

        out = {}
        for name, ttype, instructions in (
                (self.thumbs_project, "thumbs", "Thumbs up / down given by end users of the served model."),
                (self.ratings_project, "rating", "Ratings given by end users of the served model.")):
            row = conn.execute(select(db.projects.c.id, db.projects.c.task_type)
                               .where(db.projects.c.name == name)).first()
            if row is not None:
                if row.task_type != ttype:
                    raise ValueError(f"project {name!r} exists with task type {row.task_type}, expected {ttype}")
                out[ttype] = int(row.id)
                continue
            if not self.create:
                continue
            out[ttype] = int(conn.execute(insert(db.projects).values(
                name=name, task_type=ttype, instructions=instructions, overlap=1, gold_rate=0.0,
                scale_min=self.scale[0], scale_max=self.scale[1], active=False, n_items=0, n_labels=0,
                created_at=time.time())).inserted_primary_key[0])
        return out

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
                       model: str | None = None, user: str | None = None) -> int:
        """Store a served reply to ``messages``; returns the item id. ``user`` (the request's
        end-user id) is kept with the reply (``responses[0]["end_user"]``) so that ``forget``
        finds what was served to that person."""
        from rlhfkit.feedback.queue import add_items
        from rlhfkit.feedback.tasks import parse_item

        # the store's items hold no empty text; an empty turn is legal in a request (an empty
        # system prompt, a blank user turn) and must not fail the storing of a reply already made.
        # It keeps its place, shown as "(empty message)": leaving an empty system turn out would
        # change what a template renders (SmolLM2's adds its default system prompt when the
        # conversation has none), so the stored conversation would not be the one answered.
        item = parse_item({"messages": [dict(role=m["role"], content=_shown(self._private(m["content"]),
                                                                            "(empty message)"))
                                        for m in messages],
                           "completion": _shown(self._private(completion), "(empty response)"),
                           "model": model, "id": completion_id}, "thumbs", self.scale)
        end_user = self._end_user(user)
        if end_user:
            item["responses"][0]["end_user"] = end_user
        pid = self._pids["thumbs"]

        def job(conn):
            add_items(conn, pid, [item], source="serve")
            return self._item(conn, pid, completion_id)["id"]
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

    def _item(self, conn, project_id: int, completion_id: str) -> dict | None:
        from sqlalchemy import select

        from rlhfkit.feedback import db

        row = conn.execute(select(db.items).where(db.items.c.project_id == project_id,
                                                  db.items.c.external_id == str(completion_id))
                           .order_by(db.items.c.id.desc()).limit(1)).mappings().first()
        return None if row is None else dict(row)

    def completion(self, completion_id: str) -> dict | None:
        """The stored completion ``{"id", "prompt", "messages", "responses", ...}`` or None."""
        with self.store.read() as conn:
            return self._item(conn, self._pids["thumbs"], completion_id)

    # ------------------------------------------------------------------ feedback
    def _label(self, conn, project_id: int, item: dict, user_id: int, body: dict, extra: dict) -> int:
        from sqlalchemy import insert, select, update

        from rlhfkit.feedback import db
        from rlhfkit.feedback.queue import submit_label
        from rlhfkit.feedback.tasks import canonical_label

        A, L = db.assignments, db.labels
        prev = conn.execute(select(L.c.id).where(L.c.item_id == item["id"], L.c.user_id == user_id)).scalar()
        if prev is not None:  # a changed mind: replace the verdict
            payload = {**canonical_label(item["task_type"], body, [0], self.scale), **extra}
            conn.execute(update(L).where(L.c.id == prev).values(payload=payload, created_at=time.time()))
            return int(prev)
        t = time.time()
        aid = int(conn.execute(insert(A).values(project_id=project_id, item_id=item["id"], user_id=user_id,
                                                display_order=[0], status="open", created_at=t))
                  .inserted_primary_key[0])
        conn.execute(update(db.items).where(db.items.c.id == item["id"]).values(n_assigned=db.items.c.n_assigned + 1))
        res = submit_label(conn, user_id, aid, body, duration_ms=0)
        if extra:
            payload = conn.execute(select(L.c.payload).where(L.c.id == res["label_id"])).scalar()
            conn.execute(update(L).where(L.c.id == res["label_id"]).values(payload={**payload, **extra}))
        return int(res["label_id"])

    def feedback(self, completion_id: str, thumbs: Any = None, rating: Any = None, comment: str | None = None,
                 user: str | None = None) -> dict:
        """Store thumbs (``"up"`` / ``"down"`` / bool) and / or a rating for a stored completion.
        Returns ``{"completion_id", "thumbs_label_id", "rating_label_id"}``; raises
        ``FeedbackError`` (404 for an unknown completion, 422 for bad values)."""
        from rlhfkit.feedback.queue import add_items

        label = _thumbs(thumbs)
        if rating is not None:
            if isinstance(rating, float) and rating.is_integer():  # JSON clients send 5 as 5.0 too
                rating = int(rating)
            if isinstance(rating, bool) or not isinstance(rating, int) or not self.scale[0] <= rating <= self.scale[1]:
                raise FeedbackError(f"rating must be an integer from {self.scale[0]} to {self.scale[1]}",
                                    param="rating")
        if label is None and rating is None:
            raise FeedbackError("give thumbs (up / down) and / or a rating", param="thumbs")
        if comment is not None and not isinstance(comment, str):
            raise FeedbackError("comment must be a string", param="comment")
        comment = (comment or "").strip()[:10_000] or None
        if user is not None and not isinstance(user, str):
            raise FeedbackError("user must be a string", param="user")
        end_user = self._end_user(user)
        if self.redact:
            comment = comment and self._private(comment)
        extra = {k: v for k, v in (("comment", comment), ("end_user", end_user)) if v}
        pids = self._pids

        def job(conn):
            item = self._item(conn, pids["thumbs"], completion_id)
            if item is None:
                raise FeedbackError(f"no completion {completion_id!r}", status=404, param="completion_id")
            uid = self._user_id(conn)
            out = {"completion_id": completion_id, "thumbs_label_id": None, "rating_label_id": None}
            if label is not None:
                out["thumbs_label_id"] = self._label(conn, pids["thumbs"], dict(item, task_type="thumbs"), uid,
                                                     {"label": label}, extra)
            if rating is not None:
                rated = self._item(conn, pids["rating"], completion_id)
                if rated is None:
                    copy = {k: item[k] for k in ("prompt", "messages", "responses", "external_id")}
                    add_items(conn, pids["rating"], [dict(copy, is_gold=False, gold=None)], source="serve")
                    rated = self._item(conn, pids["rating"], completion_id)
                out["rating_label_id"] = self._label(conn, pids["rating"], dict(rated, task_type="rating"), uid,
                                                     {"rating": rating, "flags": []}, extra)
            return out
        return self.store.write(job)

    def forget(self, user: str) -> dict:
        """Erase what is stored about one end user (the right to erasure, GDPR art. 17) in this
        prefix's projects: every completion served to ``user`` (its ``end_user``), every
        completion served to no one named on which ``user`` gave feedback (a completion id goes
        only to the caller it was served to), the rating copies of those completions, all
        feedback on them, and ``user``'s feedback on other completions. ``user`` matches as given
        and, when the key is at hand, in its hashed form (a store written with ``redact``). The
        projects' counts follow. Deleted rows are overwritten (SQLite ``secure_delete``) and the
        write-ahead log is emptied when no other connection holds it (``wal_truncated``).
        Returns ``{"items", "labels", "wal_truncated"}``."""
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
            item_projects = [r for r in rows if r.external_id in erased]  # with the completions' rating copies
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
        """``thumbs`` or ``ratings`` records (``rlhfkit.data`` records) of everything stored so far."""
        from rlhfkit.feedback.export import export_records

        pid = {"thumbs": self._pids["thumbs"], "ratings": self._pids["rating"]}.get(kind)
        if pid is None:
            raise ValueError("kind must be thumbs or ratings")
        with self.store.read() as conn:
            return export_records(conn, pid, kind)


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


def _served_to(responses) -> str | None:
    """The end user a stored completion was served to (``log_completion`` keeps it with the reply)."""
    return next((x.get("end_user") for x in responses or [] if isinstance(x, dict) and x.get("end_user")), None)


def _shown(text: str, placeholder: str) -> str:
    return text if text.strip() else placeholder


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
