"""playground conversations saved to share with the team

Revision ID: 0008_conversations
Revises: 0007_drop_checkpoint_metrics
Create Date: 2026-12-02 05:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_conversations"
down_revision = "0007_drop_checkpoint_metrics"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("conversations",
                    sa.Column("id", sa.String(length=64), nullable=False),
                    sa.Column("team_id", sa.String(length=64), nullable=False),
                    sa.Column("created_by", sa.String(length=64), nullable=True),
                    sa.Column("title", sa.String(length=200), nullable=False),
                    sa.Column("data", sa.JSON(), nullable=False),
                    sa.Column("created_at", sa.Float(), nullable=False),
                    sa.ForeignKeyConstraint(["team_id"], ["teams.id"], ondelete="CASCADE"),
                    sa.ForeignKeyConstraint(["created_by"], ["users.id"], ondelete="SET NULL"),
                    sa.PrimaryKeyConstraint("id"))
    op.create_index("ix_conversations_team_created", "conversations", ["team_id", "created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_conversations_team_created", table_name="conversations")
    op.drop_table("conversations")
