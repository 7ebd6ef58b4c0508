"""initial schema: users, sessions, projects, items, assignments, labels

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("username", name="uq_users_username"),
    )
    op.create_table(
        "sessions",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("token_hash", name="pk_sessions"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_sessions_user_id_users", ondelete="CASCADE"),
    )
    op.create_index("ix_sessions_user_id", "sessions", ["user_id"])
    op.create_table(
        "projects",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("task_type", sa.String(16), nullable=False),
        sa.Column("instructions", sa.Text, nullable=False),
        sa.Column("overlap", sa.Integer, nullable=False),
        sa.Column("gold_rate", sa.Float, nullable=False),
        sa.Column("scale_min", sa.Integer, nullable=False),
        sa.Column("scale_max", sa.Integer, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("n_items", sa.Integer, nullable=False),
        sa.Column("n_labels", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_projects"),
        sa.UniqueConstraint("name", name="uq_projects_name"),
    )
    op.create_table(
        "items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("project_id", sa.Integer, nullable=False),
        sa.Column("external_id", sa.String(200), nullable=True),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("messages", sa.JSON, nullable=True),
        sa.Column("responses", sa.JSON, nullable=False),
        sa.Column("is_gold", sa.Boolean, nullable=False),
        sa.Column("gold", sa.JSON, nullable=True),
        sa.Column("n_assigned", sa.Integer, nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_items"),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name="fk_items_project_id_projects", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_items_project_id_is_gold_n_assigned_id", "items", ["project_id", "is_gold", "n_assigned", "id"])
    op.create_table(
        "assignments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("project_id", sa.Integer, nullable=False),
        sa.Column("item_id", sa.Integer, nullable=False),
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("display_order", sa.JSON, nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_assignments"),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name="fk_assignments_project_id_projects", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["item_id"], ["items.id"], name="fk_assignments_item_id_items", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_assignments_user_id_users", ondelete="CASCADE"),
        sa.UniqueConstraint("item_id", "user_id", name="uq_assignments_item_id_user_id"),
    )
    op.create_index("ix_assignments_user_id_project_id_status", "assignments", ["user_id", "project_id", "status"])
    op.create_table(
        "labels",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("assignment_id", sa.Integer, nullable=False),
        sa.Column("project_id", sa.Integer, nullable=False),
        sa.Column("item_id", sa.Integer, nullable=False),
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("is_gold", sa.Boolean, nullable=False),
        sa.Column("correct", sa.Boolean, nullable=True),
        sa.Column("duration_ms", sa.Integer, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_labels"),
        sa.ForeignKeyConstraint(
            ["assignment_id"], ["assignments.id"], name="fk_labels_assignment_id_assignments", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name="fk_labels_project_id_projects", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["item_id"], ["items.id"], name="fk_labels_item_id_items", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_labels_user_id_users", ondelete="CASCADE"),
        sa.UniqueConstraint("assignment_id", name="uq_labels_assignment_id"),
        sa.UniqueConstraint("item_id", "user_id", name="uq_labels_item_id_user_id"),
    )
    op.create_index("ix_labels_project_id", "labels", ["project_id"])
    op.create_index("ix_labels_user_id", "labels", ["user_id"])


def downgrade() -> None:
    for t in ("labels", "assignments", "items", "projects", "sessions", "users"):
        op.drop_table(t)
