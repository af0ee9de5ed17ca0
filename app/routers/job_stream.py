"""REST: `GET /v1/fine_tuning/jobs/{id}/stream`, a job's live updates as Server-Sent Events.

Each SSE id is the Redis stream id of the update, so EventSource's automatic reconnect (which sends
Last-Event-ID) resumes exactly after the last update the browser saw. Touches only Redis while
streaming; the database is read once, to check the job exists.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from fastapi import APIRouter, Header, Query, Request
from sse_starlette.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from app import streams
from app.api_errors import ErrorEnvelope, error_response
from app.auth import PrincipalDep
from app.db import new_session
from app.models import TERMINAL_STATUSES, Job
from app.settings import get_settings

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])
_STREAM_ID = re.compile(r"^\d+-\d+$")
BLOCK_MS = 15_000
_clients: dict[int, aioredis.Redis] = {}


def _async_redis() -> aioredis.Redis:
    # One pool per event loop: a pool's connections belong to the loop that opened them.
    loop_id = id(asyncio.get_running_loop())
    client = _clients.get(loop_id)
    if client is None:
        client = _clients[loop_id] = aioredis.Redis.from_url(get_settings().effective_redis_url,
                                                             decode_responses=True)
    return client


def _job_status(job_id: str, team_id: str) -> str | None:
    with new_session() as session:
        job = session.get(Job, job_id)
        return job.status if job is not None and job.team_id == team_id else None


async def _updates(request: Request, job_id: str, team_id: str, last_id: str, finished: bool,
                   after_step: int | None) -> AsyncIterator[ServerSentEvent]:
    client = _async_redis()
    key = streams.stream_key(job_id)
    while True:
        if finished:
            raw = await client.xrange(key, min=f"({last_id}" if last_id != streams.START else "-", count=1000)
            batch = [(key, raw)] if raw else []
        else:
            batch = await client.xread({key: last_id}, block=BLOCK_MS, count=1000)
        if not batch:
            if finished:
                yield ServerSentEvent(data="{}", event="end")
                return
            if await request.is_disconnected():
                return
            # Nothing for a while: the job may have ended while its stream was flushed.
            finished = await run_in_threadpool(_job_status, job_id, team_id) in TERMINAL_STATUSES
            continue
        for entry in streams.decode(batch[0][1]):
            last_id = entry.id
            if after_step is not None:
                if entry.type == "rewind":
                    # A resumed run logs the steps after its checkpoint again: those are new to the client.
                    after_step = min(after_step, int(entry.data.get("step", 0)))
                elif entry.type == "metric" and int(entry.data.get("step", after_step + 1)) <= after_step:
                    continue  # the client has this step already (from the stored metrics)
            yield ServerSentEvent(data=_json(entry.data), event=entry.type, id=entry.id)
            if entry.type == "status" and entry.data.get("status") in TERMINAL_STATUSES:
                finished = True


def _json(data: dict) -> str:
    return json.dumps(data, separators=(",", ":"))


@router.get("/{job_id}/stream", summary="Live updates of a job (Server-Sent Events; Tuneboard extension)",
            responses={404: {"model": ErrorEnvelope},
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
    if not _STREAM_ID.match(start):
        return error_response(400, f"Last-Event-ID {start!r} is not a stream id like 1712345678901-0",
                              param="Last-Event-ID", code="invalid_cursor")
    updates = _updates(request, job_id, principal.team.id, start, status in TERMINAL_STATUSES, after_step)
    return EventSourceResponse(updates, ping=10, headers={"X-Accel-Buffering": "no"})
