"""Bring a database to the newest schema with Alembic (used by `tuneboard up`, workers and tests)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from app.bundled_files import dashboard_files


def alembic_config(url: str | None = None) -> Config:
    """Alembic's config for Tuneboard's migrations (the checkout's or the wheel's), optionally aimed at a given
    database URL."""
    files = dashboard_files()
    config = Config(str(files.alembic_ini))
    config.set_main_option("script_location", str(files.migrations))
    if url:
        config.attributes["url"] = url
    return config


def upgrade_database(url: str | None = None) -> None:
    """Apply every migration not yet applied (idempotent)."""
    command.upgrade(alembic_config(url), "head")
