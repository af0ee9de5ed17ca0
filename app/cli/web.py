"""`tuneboard web`: only the web app (a fleet's web container); Redis, the database and the workers run
elsewhere. Must not import torch or `workers`.
"""

from __future__ import annotations

import argparse

from app.cli.accounts import first_run_link
from app.cli.common import fail, prepare_database
from app.settings import get_settings


def cmd_web(args: argparse.Namespace) -> int:
    """Serve only the web app; Redis, the database and the workers are configured to run elsewhere."""
    import uvicorn

    settings = get_settings()
    host, port = args.host or settings.host, args.port or settings.port
    # The first-run link needs the schema: migrate here when the app would (the lifespan's second run is a
    # no-op); a fleet migrates beforehand and turns TUNEBOARD_MIGRATE_ON_START off.
    if settings.migrate_on_start and (problem := prepare_database(settings)):
        return fail(problem)
    shown_host = "localhost" if host in ("0.0.0.0", "::") else host
    if link := first_run_link(f"http://{shown_host}:{port}"):
        print(f"First start: sign in as the admin with this one-time link:\n    {link}", flush=True)
    # The app itself decides which proxies to believe (TUNEBOARD_TRUSTED_PROXIES), not uvicorn's default.
    uvicorn.run("app.main:app", host=host, port=port, proxy_headers=False)
    return 0
