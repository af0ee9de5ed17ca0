"""cancel deadline and task id

Revision ID: 3ade3bfaa90e
Revises: cc4b5084a759
Create Date: 2026-11-25 14:47:10.207592
"""

import sqlalchemy as sa
from alembic import op

revision = '3ade3bfaa90e'
down_revision = 'cc4b5084a759'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cancel_requested_at', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('task_id', sa.String(length=255), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('task_id')
        batch_op.drop_column('cancel_requested_at')

