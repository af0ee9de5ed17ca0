"""accounts and team ownership

Revision ID: 36b1909b68b4
Revises: 3ade3bfaa90e
Create Date: 2026-11-25 14:59:34.380739
"""

import time

import sqlalchemy as sa
from alembic import op

revision = '36b1909b68b4'
down_revision = '3ade3bfaa90e'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('teams',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('users',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=True),
    sa.Column('is_active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('email')
    )
    op.create_table('api_tokens',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.String(length=64), nullable=False),
    sa.Column('team_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('hint', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('last_used_at', sa.Float(), nullable=True),
    sa.Column('revoked_at', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['team_id'], ['teams.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('digest')
    )
    op.create_table('browser_sessions',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.String(length=64), nullable=False),
    sa.Column('team_id', sa.String(length=64), nullable=False),
    sa.Column('csrf_token', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['team_id'], ['teams.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('digest')
    )
    op.create_table('memberships',
    sa.Column('user_id', sa.String(length=64), nullable=False),
    sa.Column('team_id', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['team_id'], ['teams.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('user_id', 'team_id')
    )
    op.create_table('sign_in_links',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.String(length=64), nullable=False),
    sa.Column('team_id', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.Column('used_at', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['team_id'], ['teams.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('digest')
    )
    # Files and jobs made before teams existed go to a "Default" team, which the first admin joins.
    for table in ("files", "jobs"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column("team_id", sa.String(length=64), nullable=True))
            batch_op.add_column(sa.Column("created_by", sa.String(length=64), nullable=True))
    connection = op.get_bind()
    has_rows = any(connection.execute(sa.text(f"SELECT 1 FROM {t} LIMIT 1")).first() for t in ("files", "jobs"))
    if has_rows:
        connection.execute(sa.text("INSERT INTO teams (id, name, created_at) VALUES ('team-default', 'Default', "
                                   ":now)"), {"now": time.time()})
        for table in ("files", "jobs"):
            connection.execute(sa.text(f"UPDATE {table} SET team_id = 'team-default'"))
    with op.batch_alter_table("files") as batch_op:
        batch_op.alter_column("team_id", existing_type=sa.String(length=64), nullable=False)
        batch_op.create_index("ix_files_team_id", ["team_id"], unique=False)
        batch_op.create_foreign_key("fk_files_team_id_teams", "teams", ["team_id"], ["id"])
        batch_op.create_foreign_key("fk_files_created_by_users", "users", ["created_by"], ["id"], ondelete="SET NULL")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.alter_column("team_id", existing_type=sa.String(length=64), nullable=False)
        batch_op.create_index("ix_jobs_team_created", ["team_id", "created_at"], unique=False)
        batch_op.create_foreign_key("fk_jobs_team_id_teams", "teams", ["team_id"], ["id"])
        batch_op.create_foreign_key("fk_jobs_created_by_users", "users", ["created_by"], ["id"], ondelete="SET NULL")


def downgrade() -> None:
    for table, index in (("jobs", "ix_jobs_team_created"), ("files", "ix_files_team_id")):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_constraint(f"fk_{table}_created_by_users", type_="foreignkey")
            batch_op.drop_constraint(f"fk_{table}_team_id_teams", type_="foreignkey")
            batch_op.drop_index(index)
            batch_op.drop_column("created_by")
            batch_op.drop_column("team_id")
    op.drop_table("sign_in_links")
    op.drop_table("memberships")
    op.drop_table("browser_sessions")
    op.drop_table("api_tokens")
    op.drop_table("users")
    op.drop_table("teams")
