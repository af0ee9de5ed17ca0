"""DPO's curves beside the loss: implicit rewards of the chosen and rejected answers, margin and accuracy

Revision ID: 0010_preference_metrics
Revises: 0009_held_out_samples_exports
Create Date: 2026-12-02 17:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_preference_metrics"
down_revision = "0009_held_out_samples_exports"
branch_labels = None
depends_on = None

COLUMNS = ("rewards_chosen", "rewards_rejected", "reward_margin", "reward_accuracy", "eval_reward_margin",
           "eval_reward_accuracy")


def upgrade() -> None:
    with op.batch_alter_table("metrics") as batch:
        for name in COLUMNS:
            batch.add_column(sa.Column(name, sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("metrics") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
