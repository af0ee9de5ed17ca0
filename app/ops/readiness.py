"""Readiness: can this web process reach its database, its Redis and its artifact store right now?

Each check runs in a small thread pool of its own and is given CHECK_TIMEOUT_SECONDS, so a dependency that
hangs (a blackholed host, a stuck mount) makes /readyz answer "timed out" instead of hanging the probe.
Must not import torch or `workers`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from functools import cache
from typing import Any

import redis
from sqlalchemy import text

from app.db import engine_for
from app.settings import Settings
from app.storage import artifacts

CHECK_TIMEOUT_SECONDS = 2.0
# Bounded: a check stuck past its timeout keeps its thread until the OS gives up on it, and probes
# arriving meanwhile queue behind it (and time out) rather than piling up threads.
_pool = ThreadPoolExecutor(max_workers=6, thread_name_prefix="readyz")


@cache
def _probe_client(url: str) -> redis.Redis:
    # Not the shared client: a probe needs its own short limits, below the shared client's socket timeout.
    return redis.Redis.from_url(url, socket_timeout=CHECK_TIMEOUT_SECONDS,
                                socket_connect_timeout=CHECK_TIMEOUT_SECONDS)


def check_database(settings: Settings) -> None:
    """SELECT 1 on the configured database."""
    with engine_for(settings.effective_database_url).connect() as connection:
        connection.execute(text("SELECT 1"))


def check_redis(settings: Settings) -> None:
    """PING the broker / live-metrics Redis."""
    _probe_client(settings.effective_redis_url).ping()


def check_store(settings: Settings) -> None:
    """The artifact store accepts writes."""
    artifacts.ping(settings)


CHECKS: dict[str, Callable[[Settings], None]] = {"database": check_database, "redis": check_redis,
                                                 "store": check_store}


def readiness(settings: Settings) -> tuple[bool, dict[str, Any]]:
    """Run every check at once; (all passed, body naming each check with its outcome and, if failed, why)."""
    started = time.monotonic()
    futures = {name: _pool.submit(check, settings) for name, check in CHECKS.items()}
    results: dict[str, dict[str, Any]] = {}
    for name, future in futures.items():
        remaining = max(0.0, started + CHECK_TIMEOUT_SECONDS - time.monotonic())
        try:
            future.result(timeout=remaining)
            results[name] = {"status": "ok"}
        except FutureTimeout:
            results[name] = {"status": "error", "error": f"timed out after {CHECK_TIMEOUT_SECONDS:g} s"}
        except Exception as exc:  # any failure means not ready; say which and why
            results[name] = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:500]}
    ready = all(result["status"] == "ok" for result in results.values())
    return ready, {"status": "ok" if ready else "unavailable", "checks": results}
