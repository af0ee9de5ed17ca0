"""Bring a database to the newest schema with Alembic (used by `tuneboard up`, workers and tests)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from app.settings import REPO_ROOT


def alembic_config(url: str | None = None) -> Config:
    """Alembic's config for this repository, optionally aimed at a given database URL."""
    config = Config(str(REPO_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    if url:
        config.attributes["url"] = url
    return config


def upgrade_database(url: str | None = None) -> None:
    """Apply every migration not yet applied (idempotent)."""
    command.upgrade(alembic_config(url), "head")
