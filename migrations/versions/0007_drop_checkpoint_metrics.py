"""drop checkpoints.metrics: never written; a checkpoint's metrics are the logged metrics of its step

Revision ID: 0007_drop_checkpoint_metrics
Revises: 0006_job_sent_at
Create Date: 2026-12-02 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_drop_checkpoint_metrics"
down_revision = "0006_job_sent_at"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch_op:
        batch_op.drop_column("metrics")


def downgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch_op:
        batch_op.add_column(sa.Column("metrics", sa.JSON(), nullable=True))
