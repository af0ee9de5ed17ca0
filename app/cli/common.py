"""What several `tuneboard` commands share: the one-line failure, free-port and writable-folder checks, and
preparing the database (folder, then migration). Must not import torch or `workers`.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path


def fail(message: str) -> int:
    """Print a one-line failure to stderr; returns the exit status for it."""
    print(f"tuneboard: {message}", file=sys.stderr, flush=True)
    return 2


def port_free(host: str, port: int) -> bool:
    """Whether a TCP port on host can be bound now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def writable(directory: Path, what: str = "the data directory") -> str | None:
    """Create the folder and write a file in it; what went wrong, in one line, or None."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        return f"cannot write to {what} {directory}: {exc.strerror}"
    return None


def shown_url(url: str) -> str:
    """A database URL as it may be printed: without its password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def prepare_database(settings) -> str | None:
    """Create the folder a SQLite database lives in, then migrate; what went wrong, in one line, or None."""
    from sqlalchemy.engine import make_url

    from app.ops.migrate import upgrade_database

    url = make_url(settings.effective_database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        # SQLite creates the file but not its folder ("unable to open database file" otherwise).
        problem = writable(settings.data_dir) if settings.database_url is None else \
            writable(Path(url.database).parent, "the database's folder")
        if problem:
            return problem
    try:
        upgrade_database()
    except Exception as exc:  # one line, not a traceback
        cause = str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__]
        return f"cannot prepare the database {shown_url(str(url))}: {cause[0]}"
    return None
