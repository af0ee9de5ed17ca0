"""pending team invitations, and what lets a sign-in link or a password reset expire

Revision ID: 0005_invitations
Revises: 0004_notes_tags
Create Date: 2026-12-01 15:20:00
"""

import time

import sqlalchemy as sa
from alembic import op

revision = "0005_invitations"
down_revision = "0004_notes_tags"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("team_invitations",
                    sa.Column("id", sa.String(length=64), nullable=False),
                    sa.Column("team_id", sa.String(length=64), nullable=False),
                    sa.Column("user_id", sa.String(length=64), nullable=False),
                    sa.Column("role", sa.String(length=16), nullable=False),
                    sa.Column("invited_by", sa.String(length=64), nullable=True),
                    sa.Column("created_at", sa.Float(), nullable=False),
                    sa.ForeignKeyConstraint(["team_id"], ["teams.id"], ondelete="CASCADE"),
                    sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
                    sa.ForeignKeyConstraint(["invited_by"], ["users.id"], ondelete="SET NULL"),
                    sa.PrimaryKeyConstraint("id"),
                    sa.UniqueConstraint("team_id", "user_id", name="uq_team_invitations_team_user"))
    op.create_index("ix_team_invitations_user_id", "team_invitations", ["user_id"], unique=False)
    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(sa.Column("password_set_at", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("signed_in_at", sa.Float(), nullable=True))
    with op.batch_alter_table("browser_sessions") as batch_op:
        batch_op.add_column(sa.Column("password_reset_until", sa.Float(), nullable=True))
    # Users who have a password, or ever signed in, own their accounts: links made for them before today
    # stop working, and no invitation may carry a link that signs in as them.
    connection = op.get_bind()
    moment = time.time()
    connection.execute(sa.text("UPDATE users SET password_set_at = :now WHERE password_hash IS NOT NULL"),
                       {"now": moment})
    connection.execute(sa.text(
        "UPDATE users SET signed_in_at = :now WHERE password_hash IS NOT NULL "
        "OR id IN (SELECT user_id FROM sign_in_links WHERE used_at IS NOT NULL) "
        "OR id IN (SELECT user_id FROM browser_sessions)"), {"now": moment})


def downgrade() -> None:
    with op.batch_alter_table("browser_sessions") as batch_op:
        batch_op.drop_column("password_reset_until")
    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_column("signed_in_at")
        batch_op.drop_column("password_set_at")
    op.drop_index("ix_team_invitations_user_id", table_name="team_invitations")
    op.drop_table("team_invitations")
