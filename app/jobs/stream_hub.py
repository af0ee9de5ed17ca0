"""Live job streams in one web process: one Redis reader per job, fanned out to every viewer of that job.

Without it every open SSE connection held a Redis connection in a 15 s blocking XREAD of its own, so one
user with a hundred tabs starved the shared pool and each published point cost one XREAD per viewer. A
`JobFeed` is an asyncio task that XREADs the job's stream and puts each entry in the queue of every
`Viewer` of the job; it starts with the first viewer and ends with the last. A joining (or lagging)
viewer catches up with XRANGE from its own Last-Event-ID, and entries it then also gets from the feed
are skipped by id, so nothing is lost or repeated. Also counts each user's open streams for the cap.
While Redis is away every read waits and retries (one warning per outage), so viewers stay connected.
Must not import torch or `workers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import redis
import redis.asyncio as aioredis
from sse_starlette.sse import ServerSentEvent

from app.jobs import streams

log = logging.getLogger(__name__)

BLOCK_MS = 15_000
# Longer than the blocking read, or the client gives up on a quiet stream (redis-py 8 defaults to 5 s).
SOCKET_TIMEOUT_S = BLOCK_MS / 1000 + 10
# A viewer this far behind (a slow client) stops being fed and catches up from Redis when it drains.
QUEUE_LIMIT = 5_000
_RETRY_S = 1.0
# Short: a Redis that is down refuses at once, and one that does not answer must not hold a viewer's page.
CONNECT_TIMEOUT_S = 5
HEALTH_CHECK_S = 30
# How far back a resumed stream looks for the last step its client holds (a few events sit between steps).
STEP_LOOKBACK = 200
T = TypeVar("T")


async def until_redis_answers(what: str, call: Callable[[], Awaitable[T]]) -> T:
    """call()'s result, retried every second while Redis is away (a viewer that leaves cancels the wait)."""
    warned = False
    while True:
        try:
            return await call()
        except redis.RedisError as exc:
            if not warned:
                log.warning("%s: Redis did not answer (%s); retrying until it does", what, exc)
                warned = True
            await asyncio.sleep(_RETRY_S)


def frame(entry: streams.StreamEntry) -> bytes:
    """The entry as one SSE event on the wire: encoded once per entry, however many viewers get it."""
    return ServerSentEvent(data=json.dumps(entry.data, separators=(",", ":")), event=entry.type,
                           id=entry.id).encode()


def stream_id(entry_id: str) -> tuple[int, int]:
    """A Redis stream id as a comparable pair."""
    millis, _, sequence = entry_id.partition("-")
    return int(millis), int(sequence or 0)


class Viewer:
    """One open SSE connection's side of its job's feed."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[streams.StreamEntry, bytes]] = asyncio.Queue()
        self.lagging = False

    def offer(self, entry: streams.StreamEntry, encoded: bytes) -> None:
        """Take an entry (and its SSE frame) from the feed, unless this viewer is too far behind to keep up."""
        if self.lagging:
            return
        if self.queue.qsize() >= QUEUE_LIMIT:
            self.lagging = True
            return
        self.queue.put_nowait((entry, encoded))

    async def next_batch(self, timeout: float) -> list[tuple[streams.StreamEntry, bytes]]:
        """Every entry waiting (at least one, unless `timeout` passes first: then none)."""
        if self.queue.empty():
            try:
                async with asyncio.timeout(timeout):  # no task per wait, unlike wait_for
                    first = await self.queue.get()
            except TimeoutError:
                return []
            batch = [first]
        else:
            batch = []
        while not self.queue.empty():
            batch.append(self.queue.get_nowait())
        return batch


class JobFeed:
    """The one XREAD loop of a job in this process."""

    def __init__(self, hub: StreamHub, job_id: str, last_id: str):
        self.hub, self.job_id, self.last_id = hub, job_id, last_id
        self.viewers: set[Viewer] = set()
        self.task: asyncio.Task | None = None

    async def run(self) -> None:
        key = streams.stream_key(self.job_id)
        failing = False
        while True:
            try:
                batch = await self.hub.reader.xread({key: self.last_id}, block=BLOCK_MS, count=1000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: viewers keep waiting, the feed retries
                if not failing:  # one line per outage, not a traceback once a second
                    log.warning("live stream of job %s: reading Redis failed (%s); retrying until it answers",
                                self.job_id, exc, exc_info=not isinstance(exc, redis.RedisError))
                failing = True
                await asyncio.sleep(_RETRY_S)
                continue
            failing = False
            for entry in streams.decode(batch[0][1]) if batch else []:
                self.last_id = entry.id
                encoded = frame(entry)
                for viewer in self.viewers:
                    viewer.offer(entry, encoded)


class StreamHub:
    """The feeds of this process (one per viewed job) and each user's open stream count."""

    def __init__(self, redis_url: str):
        self.redis_url = redis_url
        self.loop = asyncio.get_running_loop()
        # Blocking reads, one connection per viewed job, apart from the pool short commands share.
        self.reader = aioredis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=SOCKET_TIMEOUT_S,
                                              socket_connect_timeout=CONNECT_TIMEOUT_S,
                                              health_check_interval=HEALTH_CHECK_S)
        self.commands = aioredis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=SOCKET_TIMEOUT_S,
                                                socket_connect_timeout=CONNECT_TIMEOUT_S,
                                                health_check_interval=HEALTH_CHECK_S)
        self.feeds: dict[str, JobFeed] = {}
        self.open_streams: dict[str, int] = defaultdict(int)
        self._joining: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    # ---------------------------------------------------------------- per-user cap
    def try_open(self, user_id: str, limit: int) -> bool:
        """Count one more stream of this user, unless they already hold `limit`."""
        if self.open_streams[user_id] >= limit:
            return False
        self.open_streams[user_id] += 1
        return True

    def closed(self, user_id: str) -> None:
        """Count one stream of this user less."""
        self.open_streams[user_id] -= 1
        if self.open_streams[user_id] <= 0:
            del self.open_streams[user_id]

    # ---------------------------------------------------------------- feeds
    async def join(self, job_id: str) -> Viewer:
        """A new viewer of the job, fed from now on (entries after the feed's position)."""
        viewer = Viewer()
        async with self._joining[job_id]:
            feed = self.feeds.get(job_id)
            if feed is None:
                # Start after the stream's current last entry: the viewer's XRANGE covers everything up to it.
                key = streams.stream_key(job_id)
                newest = await until_redis_answers(f"live stream of job {job_id}",
                                                   lambda: self.commands.xrevrange(key, count=1))
                feed = self.feeds[job_id] = JobFeed(self, job_id, newest[0][0] if newest else streams.START)
                feed.task = asyncio.create_task(feed.run(), name=f"stream feed {job_id}")
            feed.viewers.add(viewer)
        return viewer

    def leave(self, job_id: str, viewer: Viewer) -> None:
        """Stop feeding this viewer; the last one out stops the job's reader."""
        feed = self.feeds.get(job_id)
        if feed is None:
            return
        feed.viewers.discard(viewer)
        if not feed.viewers:
            del self.feeds[job_id]
            self._joining.pop(job_id, None)
            if feed.task is not None:
                feed.task.cancel()

    async def since(self, job_id: str, last_id: str) -> AsyncIterator[streams.StreamEntry]:
        """Every stored entry after last_id, oldest first (XRANGE in pages)."""
        key = streams.stream_key(job_id)
        while True:
            after = f"({last_id}" if last_id != streams.START else "-"
            raw = await until_redis_answers(f"live stream of job {job_id}",
                                            lambda after=after: self.commands.xrange(key, min=after, count=1000))
            if not raw:
                return
            for entry in streams.decode(raw):
                last_id = entry.id
                yield entry

    async def step_at(self, job_id: str, entry_id: str) -> int | None:
        """The highest step a client that saw the stream up to entry_id holds: that of the newest metric (or rewind)
        at or before it; None when the stream no longer has such an entry (recreated, or trimmed)."""
        raw = await until_redis_answers(
            f"live stream of job {job_id}",
            lambda: self.commands.xrevrange(streams.stream_key(job_id), max=entry_id, count=STEP_LOOKBACK))
        for entry in streams.decode(raw):
            if entry.type in ("metric", "rewind") and isinstance(entry.data.get("step"), int):
                return entry.data["step"]
        return None

    async def close(self) -> None:
        """Stop every feed and drop the connections (at shutdown)."""
        for feed in list(self.feeds.values()):
            if feed.task is not None:
                feed.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await feed.task
        self.feeds.clear()
        await self.reader.aclose()
        await self.commands.aclose()


_hubs: dict[int, StreamHub] = {}


def hub_for(redis_url: str) -> StreamHub:
    """This event loop's hub (a loop's connections and tasks cannot serve another loop)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(id(loop))
    # The hub keeps its loop alive, so a loop id is never reused while its hub is registered.
    if hub is None or hub.loop is not loop or hub.redis_url != redis_url:
        hub = _hubs[id(loop)] = StreamHub(redis_url)
    return hub
