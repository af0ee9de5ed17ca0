"""Log output for every Tuneboard process: plain text on a laptop, one JSON object per line for a fleet.

`configure_logging` is called once by the web app's lifespan and by the worker's Celery `setup_logging`
signal; `log_context` adds fields (job_id, team_id...) to every line logged inside it. Stdlib logging only.
Must not import torch or `workers`.
"""

from __future__ import annotations

import contextvars
import json
import logging
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

ACCESS_LOGGER = "app.access"
TEXT_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s"

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("tuneboard_log_context", default=None)
# Every attribute a bare LogRecord has; anything else on a record came from `extra=` and is logged as a field.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add these fields to every log line emitted inside the block (this thread or task only)."""
    token = _context.set({**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def add_log_fields(**fields: Any) -> None:
    """Add fields to the enclosing `log_context` block (e.g. a job's team, known once the job is read)."""
    _context.set({**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}})


class JsonFormatter(logging.Formatter):
    """One JSON object per record: timestamp, level, logger, message, then context and `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_context.get() or {})
        entry.update({k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES and not k.startswith("_")})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: a stray object in `extra` must not cost the line.
        return json.dumps(entry, default=str, ensure_ascii=False)


def _disconnect_types() -> tuple[type[BaseException], ...]:
    """What a request raises when its client went away: a browser closing a page, a reload, a dropped upload."""
    found: list[type[BaseException]] = [ConnectionResetError, BrokenPipeError]
    try:
        from starlette.requests import ClientDisconnect
        from uvicorn.protocols.utils import ClientDisconnected

        found += [ClientDisconnect, ClientDisconnected]
    except ImportError:  # a worker without the web extra logs no requests
        pass
    return tuple(found)


def _server_stopping() -> bool:
    """Whether the uvicorn server of this process has been asked to stop (it handles SIGTERM / SIGINT itself)."""
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return bool(getattr(server, "should_exit", False))


class QuietClientDisconnects(logging.Filter):
    """Drops uvicorn's "Exception in ASGI application" traceback when the exception only says the client left,
    and its note on a response left incomplete while the server stops (a live stream still open then)."""

    INCOMPLETE = "ASGI callable returned without completing response."

    def __init__(self) -> None:
        super().__init__()
        self.disconnects = _disconnect_types()

    def _is_disconnect(self, exc: BaseException | None) -> bool:
        if isinstance(exc, BaseExceptionGroup):  # from a task group: every part must be a disconnect
            return all(self._is_disconnect(part) for part in exc.exceptions)
        return isinstance(exc, self.disconnects)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and self._is_disconnect(record.exc_info[1]):
            return False
        return not (record.msg == self.INCOMPLETE and _server_stopping())


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time, so a swapped stream (test capture) is never stale."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure_logging(log_format: str, level: int | str = logging.INFO) -> None:
    """Send every logger's records to stderr as text or JSON lines; safe to call again."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)  # ours from an earlier call; handlers others added (pytest) stay
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
    json_lines = log_format == "json"
    # uvicorn gives its loggers their own text handlers; for JSON they go through ours instead.
    for name in ("uvicorn", "uvicorn.error"):
        if json_lines:
            logging.getLogger(name).handlers = []
            logging.getLogger(name).propagate = True
    # One access line per request: in JSON the middleware's structured line replaces uvicorn's; in text mode
    # (a laptop, where `tuneboard up` keeps uvicorn quiet) neither is written unless uvicorn is asked to.
    logging.getLogger("uvicorn.access").disabled = json_lines
    # A client that leaves mid-request, or a page left open while the server stops, is normal: not an error.
    server_errors = logging.getLogger("uvicorn.error")
    for stale in [f for f in server_errors.filters if isinstance(f, QuietClientDisconnects)]:
        server_errors.removeFilter(stale)
    server_errors.addFilter(QuietClientDisconnects())
    # HTTP clients (the S3 store's, the terminal client's) log every request at INFO: noise, not operations.
    for name in ("httpx", "httpx2", "httpcore", "botocore", "boto3", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.INFO if json_lines else logging.WARNING)
