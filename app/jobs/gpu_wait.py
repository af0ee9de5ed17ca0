"""Jobs on several GPUs that wait for a worker with that many: while the queue's live workers all have fewer, the
job page says so, and the job fails saying why once that has lasted `gpu_wait_seconds`. (With no live worker of its
queue at all, such a job waits as any job does.)

Such a job waits in its per-size queue (`app.fleet.queue.training_queue`), which only workers with enough GPUs
consume, so no worker ever receives it to judge the wait: the lease reaper does, on every pass, in every worker
and in the web app. Any number of reapers may run it at once: the one whose SET NX starts the clock says so (once
per wait: the clock restarts when a worker with the GPUs, or no worker of the queue, is live, and for each
attempt), and the failure is a conditional UPDATE. Must not import torch or `workers`.
"""

from __future__ import annotations

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.fleet import worker_registry
from app.job_status import JobStatus
from app.jobs import lifecycle, streams
from app.settings import Settings
from app.tables import Job, now


def waiting_message(needed: int, queue: str) -> str:
    """The job page's one line while a job waits for a worker with its GPUs."""
    return f"Waiting for a worker with {needed} GPUs on queue {queue!r}."


def check_gpu_waits(session: Session, client: redis.Redis, settings: Settings) -> list[str]:
    """One pass over queued multi-GPU jobs whose queue has no live worker with their GPUs: say so on each job page
    (once per wait), and fail those that waited past gpu_wait_seconds; returns the ids failed."""
    waiting = session.execute(select(Job.id, Job.queue, lifecycle.JOB_GPUS, Job.attempts)
                              .where(Job.status == JobStatus.QUEUED, lifecycle.JOB_GPUS > 1)).all()
    if not waiting:
        return []
    # A Redis error here ends the pass: with no registry to judge by, every job keeps waiting.
    served = worker_registry.queues_served(worker_registry.live_workers(client))
    failed = []
    for job_id, queue, needed, attempts in waiting:
        key = streams.gpu_wait_key(job_id, attempts)
        largest = max((worker.gpu_count for worker in served.get(queue, [])), default=None)
        # No worker of the queue at all: the job waits as any job does until one starts. A worker with the GPUs
        # takes it once it is free. Either way the clock restarts.
        if largest is None or largest >= needed:
            client.delete(key)
            continue
        # The reaper that starts the clock says so: one line per wait, whichever of many reapers gets there first.
        if client.set(key, now(), nx=True, ex=int(settings.gpu_wait_seconds) + 3600):
            lifecycle.add_event(session, client, job_id, waiting_message(needed, queue), level="warning",
                                type_="waiting", max_len=settings.stream_max_points)
        waited = now() - float(client.get(key) or now())
        if waited <= settings.gpu_wait_seconds:
            continue
        # Launch refused this job unless a worker with enough GPUs was live; that worker is gone, and none came back.
        how_long = f"{waited / 60:.0f} minutes" if waited >= 120 else f"{waited:.0f} seconds"
        if lifecycle.fail_queued(
                session, client, job_id, "no_worker_with_gpus",
                f"it waited {how_long} for a worker with {needed} GPUs, and no live worker of queue {queue!r} has "
                f"that many (the most is {largest}). Relaunch it on fewer GPUs or another queue, or start a worker "
                f"with {needed} GPUs.", max_len=settings.stream_max_points):
            failed.append(job_id)
        # The key stays until it expires: a reaper that read the job as queued before it failed finds the clock
        # started, so it neither says "Waiting" on a failed job nor starts another wait.
    return failed
