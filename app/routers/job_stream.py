"""REST: `GET /v1/fine_tuning/jobs/{id}/stream`, a job's live updates as Server-Sent Events.

Each SSE id is the Redis stream id of the update, so EventSource's automatic reconnect (which sends
Last-Event-ID) resumes exactly after the last update the browser saw. Touches only Redis while
streaming; the database is read once, to check the job exists. Viewers of a job share one Redis reader
(app.stream_hub), and a user holds at most `max_streams_per_user` streams per process (429 past it).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import AsyncIterator

from fastapi import APIRouter, Header, Query, Request
from sse_starlette.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from app import stream_hub, streams
from app.api_errors import ErrorEnvelope, error_response
from app.auth import PrincipalDep
from app.db import new_session
from app.models import TERMINAL_STATUSES, Job
from app.settings import get_settings

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])
_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
_STREAM_ID_PART_MAX = 2**64 - 1  # Redis refuses larger parts
BLOCK_MS = stream_hub.BLOCK_MS


def _job_status(job_id: str, team_id: str) -> str | None:
    with new_session() as session:
        job = session.get(Job, job_id)
        return job.status if job is not None and job.team_id == team_id else None


class _Cursor:
    """Where one viewer is: the last entry sent, the step bar, and whether the job has ended."""

    def __init__(self, last_id: str, finished: bool, after_step: int | None):
        self.last_id, self.finished, self.after_step = last_id, finished, after_step

    def event(self, entry: streams.StreamEntry, encoded: bytes | None = None) -> bytes | None:
        """The SSE frame to send for a new entry (None when the client has it already); advances the cursor."""
        self.last_id = entry.id
        if entry.type == "status" and entry.data.get("status") in TERMINAL_STATUSES:
            self.finished = True
        if self.after_step is not None:
            if entry.type == "rewind":
                # A resumed run logs the steps after its checkpoint again: those are new to the client.
                self.after_step = min(self.after_step, int(entry.data.get("step", 0)))
            elif entry.type == "metric" and int(entry.data.get("step", self.after_step + 1)) <= self.after_step:
                return None  # the client has this step already (from the stored metrics)
        return encoded if encoded is not None else stream_hub.frame(entry)


async def _updates(request: Request, hub: stream_hub.StreamHub, job_id: str, team_id: str,
                   cursor: _Cursor) -> AsyncIterator[ServerSentEvent | bytes]:
    viewer = None if cursor.finished else await hub.join(job_id)
    try:
        # What the client missed, from Redis; then what the job's one reader fans out to every viewer.
        async for entry in hub.since(job_id, cursor.last_id):
            if (event := cursor.event(entry)) is not None:
                yield event
        while not cursor.finished:
            if viewer.lagging and viewer.queue.empty():
                viewer.lagging = False  # fed again from now on; what was dropped meanwhile comes from Redis
                async for entry in hub.since(job_id, cursor.last_id):
                    if (event := cursor.event(entry)) is not None:
                        yield event
                continue
            batch = await viewer.next_batch(BLOCK_MS / 1000)
            if not batch:
                if await request.is_disconnected():
                    return
                # Nothing for a while: the job may have ended while its stream was flushed.
                cursor.finished = await run_in_threadpool(_job_status, job_id, team_id) in TERMINAL_STATUSES
                continue
            # Everything that was waiting goes out as one write.
            frames = [cursor.event(entry, encoded) for entry, encoded in batch
                      if stream_hub.stream_id(entry.id) > stream_hub.stream_id(cursor.last_id)]  # else sent already
            if any(frames):
                yield b"".join(f for f in frames if f is not None)
        if viewer is not None:
            hub.leave(job_id, viewer)
            viewer = None
        async for entry in hub.since(job_id, cursor.last_id):
            if (event := cursor.event(entry)) is not None:
                yield event
        yield ServerSentEvent(data="{}", event="end")
    finally:
        if viewer is not None:
            hub.leave(job_id, viewer)


def _is_stream_id(value: str) -> bool:
    return _STREAM_ID.fullmatch(value) is not None and all(int(part) <= _STREAM_ID_PART_MAX
                                                           for part in value.split("-"))


@router.get("/{job_id}/stream", summary="Live updates of a job (Server-Sent Events; Tuneboard extension)",
            responses={404: {"model": ErrorEnvelope}, 429: {"model": ErrorEnvelope},
                       200: {"content": {"text/event-stream": {}},
                             "description": "Events `metric`, `event`, `status`, `rewind`, then `end`."}})
async def stream_job(request: Request, job_id: str, principal: PrincipalDep,
                     last_event_id: str | None = Header(None, alias="Last-Event-ID"),
                     after: str | None = Query(None, description="Resume after this stream id."),
                     after_step: int | None = Query(None, ge=-1, description=(
                         "Leave out metric points up to this step, which the client already has (e.g. from "
                         "`/metrics`); a `rewind` below it lowers the bar to the rewind's step."))):
    """Every update after Last-Event-ID (or `after`), then live ones until the job ends."""
    status = await run_in_threadpool(_job_status, job_id, principal.team.id)
    if status is None:
        return error_response(404, f"No fine-tuning job with id {job_id!r}.", param="fine_tuning_job_id",
                              code="job_not_found")
    start = last_event_id or after or streams.START
    if not _is_stream_id(start):
        return error_response(400, f"Last-Event-ID {start!r} is not a stream id like 1712345678901-0",
                              param="Last-Event-ID", code="invalid_cursor")
    settings = get_settings()
    hub = stream_hub.hub_for(settings.effective_redis_url)
    user_id = principal.user.id
    if not hub.try_open(user_id, settings.max_streams_per_user):
        return error_response(
            429, f"You already have {settings.max_streams_per_user} live job streams open in this server process; "
            f"the limit is {settings.max_streams_per_user} per user (max_streams_per_user, "
            "TUNEBOARD_MAX_STREAMS_PER_USER). Close other job pages or streams and retry.",
            type_="rate_limit_error", param=None, code="too_many_streams")
    cursor = _Cursor(start, status in TERMINAL_STATUSES, after_step)
    updates = _counted(_updates(request, hub, job_id, principal.team.id, cursor), lambda: hub.closed(user_id))
    return EventSourceResponse(updates, ping=10, headers={"X-Accel-Buffering": "no"})


def _counted(updates: AsyncIterator[ServerSentEvent], release) -> AsyncIterator[ServerSentEvent]:
    """`updates`, calling `release` exactly once when the stream ends, fails, or is dropped unstarted."""
    released = False

    def once() -> None:
        nonlocal released
        if not released:
            released = True
            release()

    async def run() -> AsyncIterator[ServerSentEvent]:
        try:
            async for event in updates:
                yield event
        finally:
            once()
            await updates.aclose()

    wrapped = run()
    weakref.finalize(wrapped, once)  # a response cancelled before it began never runs the generator's finally
    return wrapped
