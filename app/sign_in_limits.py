"""Failed sign-ins are rate-limited per email and per client address, counted in Redis with a window.

Must not import torch or `workers`.
"""

from __future__ import annotations

import redis

MAX_FAILURES = 5
WINDOW_SECONDS = 15 * 60


def _keys(email: str, address: str) -> list[str]:
    return [f"tuneboard:signin-failures:email:{email}", f"tuneboard:signin-failures:addr:{address}"]


def blocked_for(client: redis.Redis, email: str, address: str) -> int:
    """Seconds until another attempt is allowed, or 0 when not blocked."""
    waits = []
    for key in _keys(email, address):
        count = client.get(key)
        if count is not None and int(count) >= MAX_FAILURES:
            waits.append(max(1, client.ttl(key)))
    return max(waits, default=0)


def record_failure(client: redis.Redis, email: str, address: str) -> None:
    """Count a failed attempt; the window starts at the first failure."""
    pipe = client.pipeline()
    for key in _keys(email, address):
        pipe.incr(key)
        pipe.expire(key, WINDOW_SECONDS, nx=True)
    pipe.execute()


def clear(client: redis.Redis, email: str) -> None:
    """A successful sign-in forgets the email's failures (not the address's)."""
    client.delete(_keys(email, "")[0])
