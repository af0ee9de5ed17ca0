"""when a job's task was last sent to the broker, so the reaper can send again what the broker lost

Revision ID: 0006_job_sent_at
Revises: 0005_invitations
Create Date: 2026-12-01 16:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_job_sent_at"
down_revision = "0005_invitations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("sent_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("sent_at")
