"""partial index on open assignments for reclaiming abandoned tasks (lease)

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # only open rows are indexed: it stays tiny however many tasks are done
    op.create_index(
        "ix_assignments_open_lease",
        "assignments",
        ["project_id", "created_at"],
        sqlite_where=sa.text("status = 'open'"),
        postgresql_where=sa.text("status = 'open'"),
    )


def downgrade() -> None:
    op.drop_index("ix_assignments_open_lease", table_name="assignments")
