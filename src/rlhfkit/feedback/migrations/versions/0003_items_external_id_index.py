"""index on (project_id, external_id) of items: `rlhfkit serve` finds a completion's item by id

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # every /v1/feedback call looks its completion up by external_id; without this index the
    # lookup scans the whole project, which grows with every completion served
    op.create_index("ix_items_project_external_id", "items", ["project_id", "external_id"])


def downgrade() -> None:
    op.drop_index("ix_items_project_external_id", table_name="items")
