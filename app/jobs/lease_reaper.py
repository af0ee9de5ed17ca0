"""The lease reaper: a background thread that requeues jobs whose worker stopped renewing its lease,
fails them after their last attempt, sends again the queued jobs whose message the broker lost, and times the
wait of jobs on several GPUs (`app.jobs.gpu_wait`).
It runs in every worker and in the web app, so a job cannot stay "running" or "queued" forever even
when no worker is left or Redis forgot its queue; each pass is a few conditional UPDATEs, so any
number of reapers may run at once. Must not import torch or `workers`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis
from kombu.exceptions import OperationalError

from app import redis_client
from app.db import new_session
from app.jobs import gpu_wait, lifecycle
from app.settings import get_settings

log = logging.getLogger(__name__)


def reap_once() -> tuple[list[str], list[str]]:
    """One pass over expired leases: (requeued, ended) job ids."""
    settings = get_settings()
    with new_session() as session:
        return lifecycle.reap_expired(session, redis_client.get_redis(), settings)


def resend_once() -> list[str]:
    """One pass over queued jobs the broker no longer holds: the ids sent again."""
    with new_session() as session:
        return lifecycle.resend_stranded(session, redis_client.get_redis(), get_settings(),
                                         grace_seconds=resend_grace_seconds())


def gpu_wait_once() -> list[str]:
    """One pass over multi-GPU jobs waiting for a worker with their GPUs: the ids failed for waiting too long."""
    with new_session() as session:
        return gpu_wait.check_gpu_waits(session, redis_client.get_redis(), get_settings())


def interval_seconds() -> float:
    """How often to reap: a third of the lease, between 0.5 and 10 s."""
    return max(0.5, min(get_settings().lease_seconds / 3, 10.0))


def resend_grace_seconds() -> float:
    """How long after its last send a queued job must be missing from the broker to be sent again: three
    reaper passes, far longer than a message takes from the queue's list to a worker's unacked set."""
    return 3 * interval_seconds()


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
                self._resend()
                self._time_gpu_waits()
            except Exception:  # keep reaping after a transient DB or Redis error
                log.exception("reaper pass failed")
            self.stopped.wait(interval_seconds())

    def _resend(self) -> None:
        try:
            resent = resend_once()
        except (redis.RedisError, OperationalError) as exc:  # the broker is down: the next pass tries again
            log.warning("reaper: cannot compare queued jobs with the broker: %s", exc)
            return
        if resent:
            log.warning("reaper: sent again %s, whose messages the broker had lost", resent)

    def _time_gpu_waits(self) -> None:
        try:
            failed = gpu_wait_once()
        except redis.RedisError as exc:  # no live workers to judge by: every job keeps waiting
            log.warning("reaper: cannot read the live workers for jobs waiting on GPUs: %s", exc)
            return
        if failed:
            log.warning("reaper: failed %s, which waited too long for a worker with their GPUs", failed)
