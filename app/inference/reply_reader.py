"""Reading a chat completion's reply from Redis on the web side, and knowing when to stop waiting for it.

While its client listens the reader keeps the request's `wanted` key alive (without it the worker drops or stops
the request). It waits `inference_wait_seconds` for a worker to take the request, then as long as the worker's
heartbeat says it is on it (loading a large base takes minutes): a worker that died mid-reply is noticed within
seconds, not after a timeout. Closing the reader (the client left) abandons the request. Must not import torch or
`workers`.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import redis.asyncio as aioredis

from app.inference import replies
from app.inference.replies import ReplyEntry
from app.settings import Settings

BLOCK_MS = 1000
# Longer than any blocking read it makes (redis-py's own default would cut a 1 s XREAD on a slow host).
SOCKET_TIMEOUT_S = 10.0


class NoWorker(Exception):
    """No inference worker took the request in time, or the one that took it stopped."""


class ReplyReader:
    """The entries of one request's reply, in order, ending with `end` or `error`."""

    def __init__(self, settings: Settings, request_id: str):
        self.settings, self.request_id = settings, request_id
        self.client = aioredis.Redis.from_url(settings.effective_redis_url, decode_responses=True,
                                              socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=3.0)
        self.position = "0-0"
        self.started = False
        self.finished = False

    async def want(self) -> None:
        """Say that the client waits (before the request is sent, then every few seconds)."""
        await self.client.set(replies.wanted_key(self.request_id), "1", ex=replies.WANTED_TTL_SECONDS)

    async def entries(self) -> AsyncIterator[ReplyEntry]:
        """The reply's entries as they arrive; NoWorker when none will come."""
        waiting_since = last_seen = time.monotonic()
        wanted_at = time.monotonic()
        while not self.finished:
            now = time.monotonic()
            if now - wanted_at >= replies.WANTED_REFRESH_SECONDS:
                await self.want()
                wanted_at = now
            if not self.started and now - waiting_since > self.settings.inference_wait_seconds:
                raise NoWorker(f"no inference worker took the request within "
                               f"{self.settings.inference_wait_seconds:g} s (TUNEBOARD_INFERENCE_WAIT_SECONDS): "
                               f"is one running on the queue {self.settings.inference_queue!r} "
                               "(`tuneboard worker --inference`), and free?")
            if self.started and now - last_seen > replies.ALIVE_TTL_SECONDS and not await self.client.exists(
                    replies.alive_key(self.request_id)):
                raise NoWorker("the inference worker answering this request stopped before it finished")
            found = await self.client.xread({replies.reply_key(self.request_id): self.position}, block=BLOCK_MS)
            for _key, raw in found or []:
                for entry_id, fields in raw:
                    self.position = entry_id
                    entry = ReplyEntry(entry_id, fields["k"], json.loads(fields["d"]))
                    last_seen = time.monotonic()
                    self.started = True
                    self.finished = entry.kind in ("end", "error")
                    yield entry

    async def close(self) -> None:
        """Stop reading; a reply not read to its end is abandoned, so its worker stops generating."""
        try:
            await self.client.delete(replies.wanted_key(self.request_id), replies.reply_key(self.request_id))
        finally:
            await self.client.aclose()
