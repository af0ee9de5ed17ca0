"""The Redis clients every process shares: pooled per URL, with timeouts pinned rather than left to redis-py.

Must not import torch or `workers`.
"""

from __future__ import annotations

from functools import cache

import redis

from app.settings import get_settings

# Pinned, not redis-py's defaults (8.x: 5 s): no command of this client blocks (the live streams' blocking reads
# have their own client, app.jobs.stream_hub), so a reply overdue by 10 s means a dead connection; a Redis that is
# down refuses at once, and one that does not answer must not hold a training step or a request for long.
SOCKET_TIMEOUT_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 3.0
HEALTH_CHECK_SECONDS = 30


@cache
def client_for(url: str) -> redis.Redis:
    """A pooled Redis client per URL (decoded strings)."""
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=SOCKET_TIMEOUT_SECONDS,
                                socket_connect_timeout=CONNECT_TIMEOUT_SECONDS, socket_keepalive=True,
                                health_check_interval=HEALTH_CHECK_SECONDS)


def get_redis() -> redis.Redis:
    """The client for the configured Redis."""
    return client_for(get_settings().effective_redis_url)
