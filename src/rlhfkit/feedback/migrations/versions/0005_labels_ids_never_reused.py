"""label ids are never reused (SQLite AUTOINCREMENT on labels)

A reader that keeps a watermark of label ids (``feedback.enduser.feedback_events``: a learner
reads "every label with id > X") needs ids that only grow. PostgreSQL's sequences never hand out
an id twice; SQLite without AUTOINCREMENT gives a new row the largest id + 1, so deleting the
newest label (``rlhfkit feedback forget``, a changed verdict) would hand its id to the next one,
which such a reader would never see. SQLite cannot add AUTOINCREMENT to a table: it is rebuilt
(alembic's batch mode copies the rows, keeping their ids; ``sqlite_sequence`` starts at the
largest). Nothing references labels, so the rebuild touches no other table.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-20
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table("labels", recreate="always", table_kwargs={"sqlite_autoincrement": True}):
        pass


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table("labels", recreate="always", table_kwargs={"sqlite_autoincrement": False}):
        pass
