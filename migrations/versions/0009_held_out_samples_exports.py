"""held-out answers of the base and the adapter, and merged-model exports

Revision ID: 0009_held_out_samples_exports
Revises: 0008_conversations
Create Date: 2026-12-02 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_held_out_samples_exports"
down_revision = "0008_conversations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("held_out_samples",
                    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True,
                              nullable=False),
                    sa.Column("job_id", sa.String(length=64), nullable=False),
                    sa.Column("step", sa.Integer(), nullable=False),
                    sa.Column("position", sa.Integer(), nullable=False),
                    sa.Column("line", sa.Integer(), nullable=False),
                    sa.Column("prompt", sa.JSON(), nullable=False),
                    sa.Column("reference", sa.Text(), nullable=False),
                    sa.Column("base_answer", sa.Text(), nullable=False),
                    sa.Column("adapter_answer", sa.Text(), nullable=False),
                    sa.Column("created_at", sa.Float(), nullable=False),
                    sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
                    sa.PrimaryKeyConstraint("id"),
                    sa.UniqueConstraint("job_id", "step", "position", name="uq_held_out_samples_job_step_position"))
    op.create_table("exports",
                    sa.Column("id", sa.String(length=64), nullable=False),
                    sa.Column("job_id", sa.String(length=64), nullable=False),
                    sa.Column("team_id", sa.String(length=64), nullable=False),
                    sa.Column("kind", sa.String(length=32), nullable=False),
                    sa.Column("status", sa.String(length=32), nullable=False),
                    sa.Column("progress", sa.Float(), nullable=False),
                    sa.Column("stage", sa.String(length=500), nullable=False),
                    sa.Column("storage_key", sa.String(length=512), nullable=True),
                    sa.Column("files", sa.JSON(), nullable=True),
                    sa.Column("error_message", sa.Text(), nullable=True),
                    sa.Column("worker", sa.String(length=255), nullable=True),
                    sa.Column("lease_expires_at", sa.Float(), nullable=True),
                    sa.Column("created_at", sa.Float(), nullable=False),
                    sa.Column("started_at", sa.Float(), nullable=True),
                    sa.Column("finished_at", sa.Float(), nullable=True),
                    sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
                    sa.ForeignKeyConstraint(["team_id"], ["teams.id"], ondelete="CASCADE"),
                    sa.PrimaryKeyConstraint("id"),
                    sa.UniqueConstraint("job_id", "kind", name="uq_exports_job_kind"))


def downgrade() -> None:
    op.drop_table("exports")
    op.drop_table("held_out_samples")
