"""The feedback store's schema: SQLAlchemy Core tables on one ``metadata``, the same on SQLite and
PostgreSQL. The alembic migrations in ``rlhfkit/feedback/migrations`` create and upgrade it (a
change here needs a migration there); ``db`` re-exports every table (``db.users``, ...).

Timestamps are UNIX seconds (float), identical on both back ends.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

__all__ = [
    "metadata",
    "users",
    "sessions",
    "projects",
    "items",
    "assignments",
    "labels",
    "login_throttle",
    "project_members",
]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("username", String(64), nullable=False, unique=True),
    # argon2id PHC string ($argon2id$v=19$m=...,t=...,p=...$salt$hash); older rows may hold
    # scrypt$N$r$p$salt$hash until their next log-in rehashes them (see auth.py)
    Column("password_hash", String(255), nullable=False),
    Column("role", String(16), nullable=False),  # "admin" | "labeler"
    Column("active", Boolean, nullable=False, default=True),
    Column("created_at", Float, nullable=False),
)

sessions = Table(
    "sessions",
    metadata,
    # sha256 of the random token: a leaked database does not leak usable sessions
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("csrf_token", String(64), nullable=False),
    Column("kind", String(16), nullable=False),  # "browser" (cookie) | "api" (bearer)
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)

projects = Table(
    "projects",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("task_type", String(16), nullable=False),  # pairwise | ranking | rating | thumbs | rewrite
    Column("instructions", Text, nullable=False, default=""),
    Column("overlap", Integer, nullable=False, default=1),  # labelers per (non-gold) item
    Column("gold_rate", Float, nullable=False, default=0.0),  # chance the next task is a gold item
    Column("scale_min", Integer, nullable=False, default=1),
    Column("scale_max", Integer, nullable=False, default=7),
    Column("active", Boolean, nullable=False, default=True),
    Column("n_items", Integer, nullable=False, default=0),  # non-gold items (denormalised)
    Column("n_labels", Integer, nullable=False, default=0),  # labels on non-gold items
    Column("created_at", Float, nullable=False),
)

items = Table(
    "items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", Integer, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("external_id", String(200), nullable=True),
    Column("prompt", Text, nullable=False),
    Column("messages", JSON, nullable=True),  # conversation context [{role, content}, ...]
    Column("responses", JSON, nullable=False),  # [{"text": str, "model": str | None}, ...]
    Column("is_gold", Boolean, nullable=False, default=False),
    Column("gold", JSON, nullable=True),  # the known answer (canonical form) for gold items
    Column("n_assigned", Integer, nullable=False, default=0),  # open + done assignments
    Column("source", String(32), nullable=False, default="import"),  # import | generated
    Column("created_at", Float, nullable=False),
    # next-task search: equality on (project, gold, n_assigned), rows in id order
    Index(None, "project_id", "is_gold", "n_assigned", "id"),
    # serve's feedback endpoint: the item of a completion id (migration 0003)
    Index("ix_items_project_external_id", "project_id", "external_id"),
)

assignments = Table(
    "assignments",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", Integer, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("item_id", Integer, ForeignKey("items.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("display_order", JSON, nullable=False),  # display position -> response index
    Column("status", String(8), nullable=False),  # open | done | skipped | expired | released
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    # never the same item twice to the same labeler, even under races
    UniqueConstraint("item_id", "user_id"),
    Index(None, "user_id", "project_id", "status"),
    # abandoned-task search (open tasks past their lease): a partial index, only open rows
    Index(
        "ix_assignments_open_lease",
        "project_id",
        "created_at",
        sqlite_where=text("status = 'open'"),
        postgresql_where=text("status = 'open'"),
    ),
)

labels = Table(
    "labels",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("assignment_id", Integer, ForeignKey("assignments.id", ondelete="CASCADE"), nullable=False, unique=True),
    Column("project_id", Integer, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("item_id", Integer, ForeignKey("items.id", ondelete="CASCADE"), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("payload", JSON, nullable=False),  # canonical verdict (response indices, not positions)
    Column("is_gold", Boolean, nullable=False, default=False),
    Column("correct", Boolean, nullable=True),  # gold items only
    Column("duration_ms", Integer, nullable=True),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("item_id", "user_id"),
    # ids only grow, even when the newest label is deleted: readers keep watermarks of them
    # (migration 0005; PostgreSQL sequences never reuse an id anyway)
    sqlite_autoincrement=True,
)


# Failed log-in counters (auth.LoginThrottle), persisted so that a restart does not reset them and
# several server processes share them. ``key`` is the SHA-256 of the bucket's kind, user name and
# address: a row costs the same whatever the name's length, and names/addresses are not stored.
# Rows are pruned once past ``expires_at`` (indexed), so the table holds at most the live windows.
login_throttle = Table(
    "login_throttle",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("hits", Integer, nullable=False),  # attempts counted in the current window
    Column("window_start", Float, nullable=False),
    Column("expires_at", Float, nullable=False, index=True),
)

# A project with members is offered only to them; a project with none is open to every labeler.
project_members = Table(
    "project_members",
    metadata,
    Column("project_id", Integer, ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True),
)
