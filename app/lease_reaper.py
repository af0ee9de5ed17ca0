"""The lease reaper: a background thread that requeues jobs whose worker stopped renewing its lease,
and fails them after their last attempt. It runs in every worker and in the web app, so a job cannot
stay "running" forever even when no worker is left; each pass is a few conditional UPDATEs, so any
number of reapers may run at once. Must not import torch or `workers`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from app import jobs, streams
from app.db import new_session
from app.settings import get_settings

log = logging.getLogger(__name__)


def reap_once() -> tuple[list[str], list[str]]:
    """One pass over expired leases: (requeued, ended) job ids."""
    settings = get_settings()
    with new_session() as session:
        return jobs.reap_expired(session, streams.get_redis(), settings)


def interval_seconds() -> float:
    """How often to reap: a third of the lease, between 0.5 and 10 s."""
    return max(0.5, min(get_settings().lease_seconds / 3, 10.0))


class ReaperThread(threading.Thread):
    """Reaps every interval until stopped; `before_pass` runs first each time (a worker announces itself)."""

    def __init__(self, before_pass: Callable[[], None] | None = None):
        super().__init__(name="tuneboard-reaper", daemon=True)
        self.before_pass = before_pass
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                if self.before_pass is not None:
                    self.before_pass()
                requeued, ended = reap_once()
                if requeued or ended:
                    log.warning("reaper: requeued %s, ended %s", requeued, ended)
            except Exception:  # noqa: BLE001 - keep reaping after a transient DB or Redis error
                log.exception("reaper pass failed")
            self.stopped.wait(interval_seconds())
