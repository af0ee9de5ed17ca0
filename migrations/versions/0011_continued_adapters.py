"""A job that continues another job's adapter (supervised, then DPO) records which: jobs.parent_job_id

Revision ID: 0011_continued_adapters
Revises: 0010_preference_metrics
Create Date: 2026-12-02 20:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_continued_adapters"
down_revision = "0010_preference_metrics"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("parent_job_id", sa.String(64), nullable=True))
        batch.create_index("ix_jobs_parent_job_id", ["parent_job_id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_parent_job_id")
        batch.drop_column("parent_job_id")
