"""A generation request's reply on its way through Redis: the worker appends to it, the web app reads it.

One Stream per request carries `start` (a worker took the request, and what it had to load), `delta` (text as it
is generated), then `end` (finish reason, token counts, speed) or `error`. Beside it, a key the web side keeps
alive while its client listens: the worker generates only while it exists, so a client that left (or a web
process that died) stops the generation within a second, and a request that waited in the queue past its
client is dropped unread. Both keys expire, so nothing of a request outlives it. Must not import torch or
`workers`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis

from app.settings import get_settings

# Long enough for the slowest reply to be read to its end; past it the stream is gone, never left behind.
REPLY_TTL_SECONDS = 900
# A worker on a request refreshes its heartbeat every few seconds; one silent for longer is gone.
ALIVE_TTL_SECONDS = 10
# The web side refreshes the key every few seconds while its client listens (WANTED_REFRESH_SECONDS).
WANTED_TTL_SECONDS = 15
WANTED_REFRESH_SECONDS = 5


def _key(request_id: str, what: str) -> str:
    return f"{get_settings().redis_key_prefix}gen:{request_id}:{what}"


def alive_key(request_id: str) -> str:
    """The Redis key that exists while a worker is on the request (loading or generating)."""
    return _key(request_id, "alive")


def reply_key(request_id: str) -> str:
    """The Redis key of a request's reply stream."""
    return _key(request_id, "reply")


def wanted_key(request_id: str) -> str:
    """The Redis key that exists while a client still waits for the request's reply."""
    return _key(request_id, "wanted")


@dataclass(frozen=True, slots=True)
class ReplyEntry:
    id: str
    kind: str  # "start", "delta", "end" or "error"
    data: dict[str, Any]


def append(client: redis.Redis, request_id: str, kind: str, data: dict[str, Any]) -> None:
    """Add one entry to the request's reply, renewing its expiry."""
    key = reply_key(request_id)
    pipe = client.pipeline(transaction=False)
    pipe.xadd(key, {"k": kind, "d": json.dumps(data, separators=(",", ":"))})
    pipe.expire(key, REPLY_TTL_SECONDS)
    pipe.execute()


def is_wanted(client: redis.Redis, request_id: str) -> bool:
    """Whether a client still waits for this request."""
    return bool(client.exists(wanted_key(request_id)))


def mark_alive(client: redis.Redis, request_id: str) -> None:
    """Say (again) that a worker is on this request."""
    client.set(alive_key(request_id), "1", ex=ALIVE_TTL_SECONDS)


def clear_alive(client: redis.Redis, request_id: str) -> None:
    """The worker is done with this request."""
    client.delete(alive_key(request_id))
