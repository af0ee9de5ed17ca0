"""REST: `GET /v1/fine_tuning/jobs/{id}/stream`, a job's live updates as Server-Sent Events.

Each SSE id is the Redis stream id of the update, so EventSource's automatic reconnect (which sends
Last-Event-ID) resumes exactly after the last update the browser saw. Viewers of a job share one Redis
reader (app.jobs.stream_hub), and a user holds at most `max_streams_per_user` streams per process (429 past it).

Redis is the fast path and may lose entries (an outage while a worker logged, a restart without
persistence); the database is the truth. Each metric entry names the step its attempt logged before it
(`previous_step`), so when that is past the last step the client holds, the steps between are sent from
the database first; and when the job ends, any stored step the client still lacks follows before `end`.
A resumed stream never silently skips a step the database holds.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import weakref
from collections.abc import AsyncIterator

from fastapi import APIRouter, Header, Query, Request
from sqlalchemy import select
from sse_starlette.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from app.accounts.auth import PrincipalDep
from app.db import new_session
from app.job_status import TERMINAL_STATUSES
from app.jobs import stream_hub, streams
from app.jobs.api_shapes import metric_point
from app.settings import get_settings
from app.tables import Job, Metric
from app.web.api_errors import ErrorEnvelope, error_response

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])
_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
_STREAM_ID_PART_MAX = 2**64 - 1  # Redis refuses larger parts
BLOCK_MS = stream_hub.BLOCK_MS
# How long a gap waits for the worker's next database flush (every metrics_flush_seconds) before sending what is there.
FILL_WAIT_S = 10.0
_FILL_POLL_S = 0.25


def _job_status(job_id: str, team_id: str) -> str | None:
    with new_session() as session:
        job = session.get(Job, job_id)
        return job.status if job is not None and job.team_id == team_id else None


def _stored_points(job_id: str, above: int, below: int | None, through: int | None) -> list[dict] | None:
    """Stored metric points with above < step < below, oldest first; None while the worker has not yet flushed
    the steps up to `through` to the database (its progress column says how far it has)."""
    with new_session() as session:
        if through is not None:
            progress = session.execute(select(Job.step, Job.status).where(Job.id == job_id)).first()
            if progress is not None and (progress.step or 0) < through and progress.status not in TERMINAL_STATUSES:
                return None
        query = select(Metric).where(Metric.job_id == job_id, Metric.step > above)
        if below is not None:
            query = query.where(Metric.step < below)
        rows = session.scalars(query.order_by(Metric.step)).all()
        return [{k: v for k, v in metric_point(m).items() if v is not None} for m in rows]


class _Cursor:
    """Where one viewer is: the last entry sent, the step bar, the last step the client holds, and whether the
    job has ended."""

    def __init__(self, last_id: str, finished: bool, after_step: int | None, have_step: int | None):
        self.last_id, self.finished, self.after_step = last_id, finished, after_step
        self.have_step = have_step  # None: unknown (a cursor older than the stream), so no gap can be told

    def gap(self, entry: streams.StreamEntry) -> tuple[int, int, int] | None:
        """(above, below, through) when the stream skipped steps before this entry: the client holds steps up to
        `above`, the entry is step `below`, and its attempt logged step `through` just before it."""
        if entry.type != "metric" or self.have_step is None:
            return None
        step, previous = entry.data.get("step"), entry.data.get("previous_step")
        if not isinstance(step, int) or not isinstance(previous, int) or previous <= self.have_step:
            return None
        return self.have_step, step, previous

    def event(self, entry: streams.StreamEntry, encoded: bytes | None = None) -> bytes | None:
        """The SSE frame to send for a new entry (None when the client has it already); advances the cursor."""
        self.last_id = entry.id
        if entry.type == "status" and entry.data.get("status") in TERMINAL_STATUSES:
            self.finished = True
        step = entry.data.get("step")
        if entry.type == "rewind" and isinstance(step, int):
            # A resumed run logs the steps after its checkpoint again: those are new to the client.
            if self.after_step is not None:
                self.after_step = min(self.after_step, step)
            if self.have_step is not None:
                self.have_step = min(self.have_step, step)
        elif entry.type == "metric" and isinstance(step, int):
            if self.have_step is not None:
                self.have_step = max(self.have_step, step)
            if self.after_step is not None and step <= self.after_step:
                return None  # the client has this step already (from the stored metrics)
        return encoded if encoded is not None else stream_hub.frame(entry)

    def stored(self, points: list[dict]) -> bytes:
        """Frames for metric points sent from the database; no id, so the client's Last-Event-ID stays the stream
        entry it saw last."""
        frames = []
        for point in points:
            if self.have_step is not None and point["step"] <= self.have_step:
                continue
            self.have_step = point["step"]
            frames.append(ServerSentEvent(data=json.dumps(point, separators=(",", ":")), event="metric").encode())
        return b"".join(frames)


async def _missing(job_id: str, cursor: _Cursor, entry: streams.StreamEntry | None) -> bytes:
    """The stored steps the client lacks before `entry` (or, with None, before the end of a finished job)."""
    if entry is None:
        if cursor.have_step is None:
            return b""
        above, below, through = cursor.have_step, None, None
    else:
        gap = cursor.gap(entry)
        if gap is None:
            return b""
        above, below, through = gap
    deadline = time.monotonic() + FILL_WAIT_S
    while (points := await run_in_threadpool(_stored_points, job_id, above, below, through)) is None:
        if time.monotonic() > deadline:
            through = None  # a worker that stopped flushing: send what the database has
        else:
            await asyncio.sleep(_FILL_POLL_S)
    return cursor.stored(points)


async def _frames(job_id: str, cursor: _Cursor, entry: streams.StreamEntry, encoded: bytes | None = None) -> bytes:
    """What to send for one stream entry: the stored steps it skipped, if any, then the entry itself."""
    missing = await _missing(job_id, cursor, entry)
    return missing + (cursor.event(entry, encoded) or b"")


async def _updates(request: Request, hub: stream_hub.StreamHub, job_id: str, team_id: str,
                   cursor: _Cursor) -> AsyncIterator[ServerSentEvent | bytes]:
    if cursor.last_id != streams.START:
        known = [step for step in (cursor.after_step, await hub.step_at(job_id, cursor.last_id)) if step is not None]
        cursor.have_step = max(known) if known else None
    viewer = None if cursor.finished else await hub.join(job_id)
    try:
        # What the client missed, from Redis; then what the job's one reader fans out to every viewer.
        async for entry in hub.since(job_id, cursor.last_id):
            if frames := await _frames(job_id, cursor, entry):
                yield frames
        while not cursor.finished:
            if viewer.lagging and viewer.queue.empty():
                viewer.lagging = False  # fed again from now on; what was dropped meanwhile comes from Redis
                async for entry in hub.since(job_id, cursor.last_id):
                    if frames := await _frames(job_id, cursor, entry):
                        yield frames
                continue
            batch = await viewer.next_batch(BLOCK_MS / 1000)
            if not batch:
                if await request.is_disconnected():
                    return
                # Nothing for a while: the job may have ended while its stream was flushed.
                cursor.finished = await run_in_threadpool(_job_status, job_id, team_id) in TERMINAL_STATUSES
                continue
            # Everything that was waiting goes out as one write.
            frames = [await _frames(job_id, cursor, entry, encoded) for entry, encoded in batch
                      if stream_hub.stream_id(entry.id) > stream_hub.stream_id(cursor.last_id)]  # else sent already
            if any(frames):
                yield b"".join(frames)
        if viewer is not None:
            hub.leave(job_id, viewer)
            viewer = None
        async for entry in hub.since(job_id, cursor.last_id):
            if frames := await _frames(job_id, cursor, entry):
                yield frames
        # The job has ended, so the database holds every step: any the stream lost go out before the end.
        if frames := await _missing(job_id, cursor, None):
            yield frames
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
                             "description": "Events `metric`, `event`, `status`, `rewind`, then `end`. A "
                                            "`metric` from the live stream carries `previous_step`; one sent from "
                                            "the database to fill a gap the stream lost has no id."}})
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
    # From the start, the client holds nothing but the stored steps it named; a resumed one is looked up in _updates.
    have_step = max(after_step or 0, 0) if start == streams.START else None
    cursor = _Cursor(start, status in TERMINAL_STATUSES, after_step, have_step)
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
