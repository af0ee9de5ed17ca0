"""`tuneboard migrate`: upgrade the configured database to the newest schema. Must not import torch or `workers`."""

from __future__ import annotations

import argparse

from app.cli.common import fail, prepare_database, shown_url
from app.settings import get_settings


def cmd_migrate(_args: argparse.Namespace) -> int:
    """Upgrade the configured database to the newest schema."""
    settings = get_settings()
    if problem := prepare_database(settings):
        return fail(problem)
    print(f"database at {shown_url(settings.effective_database_url)} is up to date")
    return 0
