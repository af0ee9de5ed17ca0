"""The job lifecycle in the database: submit, claim, lease, finish, cancel, and reaping lost workers.

Every transition is one conditional UPDATE, so two workers (or a worker and the reaper) can never
both win: a duplicate delivery finds nothing to claim, a worker whose lease was taken over cannot
finish the job it lost. Functions take the session as a keyword; Redis only carries the news.
Must not import torch or `workers`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app import streams
from app.models import Checkpoint, Event, Job, now
from app.queue import enqueue_training, get_celery
from app.settings import Settings

log = logging.getLogger(__name__)


def add_event(session: Session, client: redis.Redis | None, job_id: str, message: str, *, level: str = "info",
              type_: str = "message", data: dict[str, Any] | None = None, max_len: int = 200_000) -> Event:
    """Record an event in the database (committed) and announce it on the job's stream."""
    event = Event(job_id=job_id, message=message, level=level, type=type_, data=data)
    session.add(event)
    session.commit()
    if client is not None:
        try:
            streams.publish(client, job_id, "event", event_payload(event), max_len=max_len)
        except redis.RedisError:
            log.warning("could not publish event of %s to Redis", job_id, exc_info=True)
    return event


# OpenAI's event levels and types; Tuneboard's finer kind of event (queued, started, checkpoint...) is
# data.kind, so strict OpenAI clients validate the object and Tuneboard's pages still tell events apart.
_OPENAI_LEVELS = {"warning": "warn"}


def event_payload(event: Event) -> dict[str, Any]:
    """An event as the stream and the events API show it, in OpenAI's shape."""
    return {"id": f"ftevent-{event.id}", "created_at": int(event.created_at),
            "level": _OPENAI_LEVELS.get(event.level, event.level), "message": event.message,
            "type": "metrics" if event.type == "evaluation" else "message",
            "data": {**(event.data or {}), "kind": event.type}}


def publish_status(client: redis.Redis | None, job: Job, *, max_len: int = 200_000) -> None:
    """Tell stream readers the job's status changed."""
    if client is None:
        return
    payload = {"status": job.status, "error": job_error(job), "step": job.step, "total_steps": job.total_steps,
               "trainable_params": job.trainable_params, "finished_at": job.finished_at}
    try:
        streams.publish(client, job.id, "status", payload, max_len=max_len)
    except redis.RedisError:
        log.warning("could not publish status of %s to Redis", job.id, exc_info=True)


def job_error(job: Job) -> dict[str, str] | None:
    """The OpenAI-shaped error object of a failed job, else None."""
    if job.status != "failed":
        return None
    return {"code": job.error_code or "failed", "message": job.error_message or "The job failed.", "param": None}


def submit(session: Session, client: redis.Redis | None, job: Job, settings: Settings) -> Job:
    """Commit a new job as queued, then send its task; a broker failure fails the job visibly."""
    job.status = "queued"
    job.max_attempts = settings.max_attempts
    session.add(job)
    session.commit()
    add_event(session, client, job.id, f"Job queued on {job.queue}.", type_="queued",
              max_len=settings.stream_max_points)
    try:
        enqueue_training(job.id, job.queue)
    except Exception as exc:  # noqa: BLE001 - any broker error means the job will never run
        fail_unclaimed(session, client, job.id, "queue_unreachable",
                       f"Could not reach the job queue (Redis): {exc}", settings)
    session.refresh(job)
    return job


def fail_unclaimed(session: Session, client, job_id: str, code: str, message: str, settings: Settings) -> None:
    """Fail a job that is still queued (nobody will run it)."""
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.status == "queued")
        .values(status="failed", error_code=code, error_message=message, finished_at=now())
    )
    session.commit()
    if result.rowcount:
        add_event(session, client, job_id, message, level="error", type_="failed", max_len=settings.stream_max_points)
        publish_status(client, session.get(Job, job_id), max_len=settings.stream_max_points)


@dataclass(frozen=True, slots=True)
class Claim:
    job: Job
    attempt: int
    resume_from: Checkpoint | None


def claim(session: Session, job_id: str, worker: str, settings: Settings, *,
          task_id: str | None = None) -> Claim | None:
    """Take a queued job for this worker, with a fresh lease; None when someone else has it or it ended."""
    started = now()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued", Job.cancel_requested.is_(False))
        .values(status="running", worker=worker, attempts=Job.attempts + 1,
                lease_expires_at=started + settings.lease_seconds, task_id=task_id)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if result.rowcount != 1:
        return None
    job = session.get(Job, job_id)
    session.refresh(job)
    if job.started_at is None:
        job.started_at = started
        session.commit()
    resume_from = session.scalars(
        select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step.desc()).limit(1)
    ).first()
    return Claim(job, job.attempts, resume_from)


def renew_lease(session: Session, job_id: str, worker: str, attempt: int, settings: Settings) -> bool:
    """Extend this attempt's lease; False when the job is no longer ours (reaped, or ended)."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running", Job.worker == worker, Job.attempts == attempt)
        .values(lease_expires_at=now() + settings.lease_seconds)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


def finish(session: Session, job_id: str, worker: str, attempt: int, status: str, **values: Any) -> bool:
    """End this attempt with a final status; False when the attempt had already lost the job."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running", Job.worker == worker, Job.attempts == attempt)
        .values(status=status, finished_at=now(), lease_expires_at=None, **values)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


def cancel(session: Session, client: redis.Redis | None, job: Job, settings: Settings) -> Job:
    """Cancel a queued job at once; ask a running one to stop (it keeps its last checkpoint)."""
    queued = session.execute(
        update(Job).where(Job.id == job.id, Job.status.in_(("queued", "validating_files")))
        .values(status="cancelled", cancel_requested=True, finished_at=now())
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if queued.rowcount:
        session.refresh(job)
        add_event(session, client, job.id, "Job cancelled before it started.", type_="cancelled",
                  max_len=settings.stream_max_points)
        publish_status(client, job, max_len=settings.stream_max_points)
        return job
    running = session.execute(
        update(Job).where(Job.id == job.id, Job.status == "running", Job.cancel_requested.is_(False))
        .values(cancel_requested=True, cancel_requested_at=now())
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if running.rowcount:
        if client is not None:
            streams.request_cancel(client, job.id)
        add_event(session, client, job.id, "Cancel requested; stopping at the next step.", type_="cancel_requested",
                  max_len=settings.stream_max_points)
    session.refresh(job)
    return job


def _terminate_overdue_cancels(session: Session, client, settings: Settings, moment: float) -> list[str]:
    """End running jobs that ignored a cancel for the grace period, and kill their worker processes."""
    rows = session.execute(
        update(Job)
        .where(Job.status == "running", Job.cancel_requested.is_(True),
               Job.cancel_requested_at < moment - settings.cancel_grace_seconds)
        .values(status="cancelled", finished_at=moment, lease_expires_at=None)
        .returning(Job.id, Job.task_id)
    ).all()
    session.commit()
    for job_id, task_id in rows:
        if task_id:
            # The training loop never reached its next step (stuck loading, or hung): hard-stop its process.
            get_celery().control.revoke(task_id, terminate=True, signal="SIGKILL")
        add_event(session, client, job_id, f"The job did not stop within {settings.cancel_grace_seconds:.0f} s "
                  "of the cancel; its worker process was terminated.", level="warning", type_="cancelled",
                  max_len=settings.stream_max_points)
        publish_status(client, session.get(Job, job_id), max_len=settings.stream_max_points)
    return [job_id for job_id, _ in rows]


def reap_expired(session: Session, client: redis.Redis | None, settings: Settings) -> tuple[list[str], list[str]]:
    """Requeue running jobs whose worker stopped renewing the lease, or end them; returns (requeued, ended)."""
    moment = now()
    expired = (Job.status == "running", Job.lease_expires_at < moment)
    ended: list[str] = []
    for status, condition, code, message in (
        ("cancelled", Job.cancel_requested.is_(True), None, None),
        ("failed", Job.attempts >= Job.max_attempts, "worker_lost",
         "The worker running this job stopped responding, and the job ran out of attempts."),
    ):
        rows = session.execute(
            update(Job).where(*expired, condition)
            .values(status=status, finished_at=moment, lease_expires_at=None, error_code=code, error_message=message)
            .returning(Job.id)
        ).scalars().all()
        session.commit()
        ended += rows
        for job_id in rows:
            text = message or "Job cancelled (its worker stopped before it could confirm)."
            add_event(session, client, job_id, text, level="error" if code else "info", type_=status,
                      max_len=settings.stream_max_points)
            publish_status(client, session.get(Job, job_id), max_len=settings.stream_max_points)
    ended += _terminate_overdue_cancels(session, client, settings, moment)
    requeued = session.execute(
        update(Job).where(*expired).values(status="queued", worker=None, lease_expires_at=None).returning(Job.id)
    ).scalars().all()
    session.commit()
    for job_id in requeued:
        job = session.get(Job, job_id)
        add_event(session, client, job_id,
                  f"Worker lost; requeued (attempt {job.attempts + 1} of {job.max_attempts}).",
                  level="warning", type_="requeued", max_len=settings.stream_max_points)
        publish_status(client, job, max_len=settings.stream_max_points)
        try:
            enqueue_training(job_id, job.queue)
        except Exception:  # noqa: BLE001 - the next reap pass cannot see it, so fail it visibly
            fail_unclaimed(session, client, job_id, "queue_unreachable", "Could not requeue the job.", settings)
    return list(requeued), ended
