"""job notes and tags, and the indexes behind the team's job history

Revision ID: 0004_notes_tags
Revises: 36b1909b68b4
Create Date: 2026-11-26 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_notes_tags"
down_revision = "36b1909b68b4"
branch_labels = None
depends_on = None

# (name, columns) of the history's indexes: each filter walks its own one in created_at, id order.
HISTORY_INDEXES = (
    ("ix_jobs_team_created", ["team_id", "created_at", "id"]),
    ("ix_jobs_team_status_created", ["team_id", "status", "created_at", "id"]),
    ("ix_jobs_team_model_created", ["team_id", "model", "created_at", "id"]),
    ("ix_jobs_team_user_created", ["team_id", "created_by", "created_at", "id"]),
)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        # Server defaults fill the rows that exist already.
        batch_op.add_column(sa.Column("notes", sa.Text(), server_default="", nullable=False))
        batch_op.add_column(sa.Column("tags", sa.JSON(), server_default=sa.text("'[]'"), nullable=False))
        # The old (team_id, created_at) index left ties on created_at to a sort; the new one carries id.
        batch_op.drop_index("ix_jobs_team_created")
        for name, columns in HISTORY_INDEXES:
            batch_op.create_index(name, columns, unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        for name, _columns in reversed(HISTORY_INDEXES):
            batch_op.drop_index(name)
        batch_op.create_index("ix_jobs_team_created", ["team_id", "created_at"], unique=False)
        batch_op.drop_column("tags")
        batch_op.drop_column("notes")
