"""The job lifecycle in the database: submit, claim, lease, finish, cancel, and reaping lost workers.

Every transition is one conditional UPDATE, so two workers (or a worker and the reaper) can never
both win: a duplicate delivery finds nothing to claim, a worker whose lease was taken over cannot
finish the job it lost. Every other write of an attempt is fenced the same way where it lands: the
database write starts by locking the job row while it is still that attempt's (`hold_attempt`), and
its stream entries go through a Redis script that compares the job's current attempt, so a stale
attempt's write is refused, not merely skipped by its good manners. Queued jobs the broker lost are
sent again (`resend_stranded`). Functions take the session as a keyword; Redis only carries the news.
Must not import torch or `workers`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from app.db import new_session
from app.fleet.queue import broker_holdings, enqueue_training, get_celery, job_gpus, training_queue
from app.job_status import JobStatus
from app.jobs import streams
from app.settings import Settings
from app.tables import Checkpoint, Event, HeldOutSample, Job, Metric, now

log = logging.getLogger(__name__)
# The GPUs a stored job asks for, read by the database (jobs from before multi-GPU jobs have none: one).
JOB_GPUS = func.coalesce(Job.config["training"]["gpus"].as_integer(), 1)


class AttemptFenced(Exception):  # a refusal, named after what happened
    """A write by an attempt that no longer owns its job (reaped, taken over, or ended): refused."""

    def __init__(self, job_id: str, attempt: int):
        super().__init__(f"attempt {attempt} of job {job_id} no longer owns it")
        self.job_id, self.attempt = job_id, attempt


def hold_attempt(session: Session, job_id: str, attempt: int) -> None:
    """Begin a write of this attempt: AttemptFenced unless the job is still running as this attempt.

    A conditional UPDATE, so it takes the job row's lock (PostgreSQL) or the database's write lock (SQLite)
    until the caller commits: no claim or reap lands between this check and the writes that follow it."""
    session.commit()  # start a fresh transaction whose first statement is this lock
    held = session.execute(
        update(Job).where(Job.id == job_id, Job.attempts == attempt, Job.status == JobStatus.RUNNING)
        .values(attempts=Job.attempts).execution_options(synchronize_session=False)
    )
    if held.rowcount != 1:
        session.rollback()
        raise AttemptFenced(job_id, attempt)


def is_current_attempt(session: Session, job_id: str, attempt: int) -> bool:
    """Whether the job is running as this attempt."""
    return session.scalar(select(func.count()).select_from(Job).where(
        Job.id == job_id, Job.attempts == attempt, Job.status == JobStatus.RUNNING)) == 1


def publish_for_attempt(client: redis.Redis, job_id: str, attempt: int, type_: str, data: dict[str, Any], *,
                        max_len: int) -> str:
    """Append an attempt's update to the job's stream; AttemptFenced when a newer attempt owns the job.

    Redis refuses unless its attempt key names this attempt. The key may be missing (Redis restarted without
    persistence, or flushed): the database settles a refusal, and a current attempt raises the key again."""
    entry = streams.publish_fenced(client, job_id, attempt, type_, data, max_len=max_len)
    if entry is not None:
        return entry
    with new_session() as session:
        if not is_current_attempt(session, job_id, attempt):
            raise AttemptFenced(job_id, attempt)
    if streams.raise_attempt(client, job_id, attempt) != attempt:
        raise AttemptFenced(job_id, attempt)
    entry = streams.publish_fenced(client, job_id, attempt, type_, data, max_len=max_len)
    if entry is None:
        raise AttemptFenced(job_id, attempt)
    return entry


def fence_attempts_before(client: redis.Redis | None, job_id: str, attempt: int) -> None:
    """Refuse stream entries from every attempt older than `attempt` from now on (best effort: the database
    fences them anyway)."""
    if client is None:
        return
    try:
        streams.raise_attempt(client, job_id, attempt)
    except redis.RedisError:
        log.warning("could not fence the stream of %s at attempt %s", job_id, attempt, exc_info=True)


def add_event(session: Session, client: redis.Redis | None, job_id: str, message: str, *, level: str = "info",
              type_: str = "message", data: dict[str, Any] | None = None, max_len: int = 200_000,
              attempt: int | None = None) -> Event:
    """Record an event in the database (committed) and announce it on the job's stream.

    With `attempt`, both writes are fenced by it: AttemptFenced when that attempt no longer owns the job."""
    if attempt is not None:
        hold_attempt(session, job_id, attempt)
    event = Event(job_id=job_id, message=message, level=level, type=type_, data=data)
    session.add(event)
    session.commit()
    _publish(client, job_id, "event", event_payload(event), max_len=max_len, attempt=attempt)
    return event


def _publish(client: redis.Redis | None, job_id: str, type_: str, data: dict[str, Any], *, max_len: int,
             attempt: int | None) -> None:
    if client is None:
        return
    try:
        if attempt is None:
            streams.publish(client, job_id, type_, data, max_len=max_len)
        else:
            publish_for_attempt(client, job_id, attempt, type_, data, max_len=max_len)
    except redis.RedisError:
        log.warning("could not publish %s of %s to Redis", type_, job_id, exc_info=True)


# OpenAI's event levels and types; Tuneboard's finer kind of event (queued, started, checkpoint...) is
# data.kind, so strict OpenAI clients validate the object and Tuneboard's pages still tell events apart.
_OPENAI_LEVELS = {"warning": "warn"}


def event_payload(event: Event) -> dict[str, Any]:
    """An event as the stream and the events API show it, in OpenAI's shape."""
    return {"id": f"ftevent-{event.id}", "created_at": int(event.created_at),
            "level": _OPENAI_LEVELS.get(event.level, event.level), "message": event.message,
            "type": "metrics" if event.type == "evaluation" else "message",
            "data": {**(event.data or {}), "kind": event.type}}


def publish_status(client: redis.Redis | None, job: Job, *, max_len: int = 200_000,
                   attempt: int | None = None) -> None:
    """Tell stream readers the job's status changed (fenced by `attempt` when given)."""
    payload = {"status": job.status, "error": job_error(job), "step": job.step, "total_steps": job.total_steps,
               "trainable_params": job.trainable_params, "finished_at": job.finished_at}
    _publish(client, job.id, "status", payload, max_len=max_len, attempt=attempt)


def job_error(job: Job) -> dict[str, str] | None:
    """The OpenAI-shaped error object of a failed job, else None."""
    if job.status != JobStatus.FAILED:
        return None
    return {"code": job.error_code or "failed", "message": job.error_message or "The job failed.", "param": None}


def submit(session: Session, client: redis.Redis | None, job: Job, settings: Settings) -> Job:
    """Commit a new job as queued, then send its task; while the broker is away the job stays queued (the reaper
    sends it once Redis answers), so a job is never failed for an outage."""
    job.status = JobStatus.QUEUED
    job.max_attempts = settings.max_attempts
    job.sent_at = now()
    session.add(job)
    session.commit()
    add_event(session, client, job.id, f"Job queued on {job.queue}.", type_="queued",
              max_len=settings.stream_max_points)
    try:
        enqueue_training(job.id, job.queue, job_gpus(job.config))
    except Exception as exc:  # any broker error: the job stays queued, and the reaper sends it
        # The job is stored, so nothing is lost: the reaper's reconciliation (resend_stranded) sends every queued
        # job that no broker message holds once Redis answers again.
        log.warning("job %s: the job queue (Redis) did not answer (%s); it stays queued", job.id, exc)
        add_event(session, client, job.id, "The job queue (Redis) did not answer; the job stays queued and is sent "
                  "as soon as it is back.", level="warning", type_="queue_unreachable",
                  max_len=settings.stream_max_points)
    session.refresh(job)
    return job


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
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED, Job.cancel_requested.is_(False))
        .values(status=JobStatus.RUNNING, worker=worker, attempts=Job.attempts + 1,
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
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.worker == worker, Job.attempts == attempt)
        .values(lease_expires_at=now() + settings.lease_seconds)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


def rewind(session: Session, client: redis.Redis | None, job_id: str, attempt: int, step: int, *,
           max_len: int) -> None:
    """Forget the metric points past the checkpoint this attempt resumes from (they will be logged again), and
    tell stream readers; AttemptFenced when the attempt no longer owns the job."""
    hold_attempt(session, job_id, attempt)
    session.execute(delete(Metric).where(Metric.job_id == job_id, Metric.step > step))
    session.execute(delete(HeldOutSample).where(HeldOutSample.job_id == job_id, HeldOutSample.step > step))
    session.commit()
    _publish(client, job_id, "rewind", {"step": step}, max_len=max_len, attempt=attempt)


def record_checkpoint(session: Session, job_id: str, attempt: int, step: int, storage_key: str) -> None:
    """Make a stored checkpoint the one a later attempt resumes from at its step; AttemptFenced when the
    attempt no longer owns the job, so a stale attempt's files (under its own key) are never recorded."""
    hold_attempt(session, job_id, attempt)
    existing = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.step == step)).first()
    if existing is None:
        session.add(Checkpoint(job_id=job_id, step=step, storage_key=storage_key))
    else:
        existing.storage_key = storage_key
    session.commit()


def record_held_out_samples(session: Session, job_id: str, attempt: int, step: int, samples: list[dict]) -> None:
    """Store the held-out answers made at one step, replacing any an earlier attempt made there; AttemptFenced when
    the attempt no longer owns the job."""
    hold_attempt(session, job_id, attempt)
    session.execute(delete(HeldOutSample).where(HeldOutSample.job_id == job_id, HeldOutSample.step == step))
    session.add_all(HeldOutSample(job_id=job_id, step=step, **sample) for sample in samples)
    session.commit()


def finish(session: Session, job_id: str, worker: str, attempt: int, status: str, **values: Any) -> bool:
    """End this attempt with a final status; False when the attempt had already lost the job."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.worker == worker, Job.attempts == attempt)
        .values(status=status, finished_at=now(), lease_expires_at=None, **values)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


def cancel(session: Session, client: redis.Redis | None, job: Job, settings: Settings) -> Job:
    """Cancel a queued job at once; ask a running one to stop (it keeps its last checkpoint)."""
    queued = session.execute(
        update(Job).where(Job.id == job.id, Job.status.in_((JobStatus.QUEUED, JobStatus.VALIDATING_FILES)))
        .values(status=JobStatus.CANCELLED, cancel_requested=True, finished_at=now())
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
        update(Job).where(Job.id == job.id, Job.status == JobStatus.RUNNING, Job.cancel_requested.is_(False))
        .values(cancel_requested=True, cancel_requested_at=now())
        .execution_options(synchronize_session=False)
    )
    session.commit()
    session.refresh(job)
    if job.status == JobStatus.RUNNING and job.cancel_requested:
        # The database is the truth (the worker reads it every few seconds); the Redis flag is the fast path,
        # raised again by every request, so a retry after an outage or a restart that lost it still reaches the loop.
        _raise_cancel_flag(client, job.id)
    if running.rowcount:
        add_event(session, client, job.id, "Cancel requested; stopping at the next step.", type_="cancel_requested",
                  max_len=settings.stream_max_points)
    return job


def _raise_cancel_flag(client: redis.Redis | None, job_id: str) -> None:
    if client is None:
        return
    try:
        streams.request_cancel(client, job_id)
    except redis.RedisError as exc:
        log.warning("job %s: cancel recorded, but Redis did not take its flag (%s); the worker reads the database",
                    job_id, exc)


def cancel_recorded(session: Session, job_id: str) -> bool:
    """Whether a cancel of the job is recorded in the database, however the Redis flag fared."""
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def _terminate_overdue_cancels(session: Session, client, settings: Settings, moment: float) -> list[str]:
    """End running jobs that ignored a cancel for the grace period, and kill their worker processes."""
    rows = session.execute(
        update(Job)
        .where(Job.status == JobStatus.RUNNING, Job.cancel_requested.is_(True),
               Job.cancel_requested_at < moment - settings.cancel_grace_seconds)
        .values(status=JobStatus.CANCELLED, finished_at=moment, lease_expires_at=None)
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


def fail_queued(session: Session, client: redis.Redis | None, job_id: str, code: str, message: str, *,
                max_len: int) -> bool:
    """End a job that is still queued (no attempt holds it) as failed; False when it no longer is queued."""
    ended = session.execute(
        update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.FAILED, finished_at=now(), error_code=code, error_message=message)
    ).rowcount
    session.commit()
    if ended:
        add_event(session, client, job_id, f"Job failed: {message}", level="error", type_=JobStatus.FAILED,
                  max_len=max_len)
        publish_status(client, session.get(Job, job_id), max_len=max_len)
    return bool(ended)


def reap_expired(session: Session, client: redis.Redis | None, settings: Settings) -> tuple[list[str], list[str]]:
    """Requeue running jobs whose worker stopped renewing the lease, or end them; returns (requeued, ended)."""
    moment = now()
    expired = (Job.status == JobStatus.RUNNING, Job.lease_expires_at < moment)
    ended: list[str] = []
    for status, condition, code, message in (
        (JobStatus.CANCELLED, Job.cancel_requested.is_(True), None, None),
        (JobStatus.FAILED, Job.attempts >= Job.max_attempts, "worker_lost",
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
        update(Job).where(*expired).values(status=JobStatus.QUEUED, worker=None, lease_expires_at=None, sent_at=moment)
        .returning(Job.id)
    ).scalars().all()
    session.commit()
    for job_id in ended + list(requeued):
        # The lost attempt may still be alive (frozen, partitioned): its stream entries are refused from now.
        fence_attempts_before(client, job_id, session.scalar(select(Job.attempts).where(Job.id == job_id)) + 1)
    for job_id in requeued:
        job = session.get(Job, job_id)
        add_event(session, client, job_id,
                  f"Worker lost; requeued (attempt {job.attempts + 1} of {job.max_attempts}).",
                  level="warning", type_="requeued", max_len=settings.stream_max_points)
        publish_status(client, job, max_len=settings.stream_max_points)
        try:
            enqueue_training(job_id, job.queue, job_gpus(job.config))
        except Exception:  # it stays queued, and resend_stranded sends it once the broker is back
            log.warning("could not requeue %s; it will be sent again when the broker answers", job_id, exc_info=True)
    return list(requeued), ended


def resend_stranded(session: Session, client: redis.Redis, settings: Settings, *, grace_seconds: float) -> list[str]:
    """Send again every queued job whose task the broker no longer holds (Redis restarted without persistence,
    flushed, or a message lost any other way); returns their ids.

    Only jobs sent more than grace_seconds ago count, and each is taken by one conditional UPDATE of its
    sent_at, so of many reapers one sends it once. A job the broker held after all runs once anyway: the
    claim lets one delivery win."""
    cutoff = now() - grace_seconds
    sent = func.coalesce(Job.sent_at, Job.created_at)
    candidates = session.execute(
        select(Job.id, Job.queue, JOB_GPUS, Job.task_id).where(Job.status == JobStatus.QUEUED, sent < cutoff)).all()
    if not candidates:
        return []
    # A job's message waits in its per-size queue, or (sent before per-size queues) in the queue itself.
    holdings = broker_holdings(client, {name for _, queue, gpus, _ in candidates
                                        for name in (queue, training_queue(queue, gpus))})
    resent = []
    for job_id, queue, gpus, claimed_task_id in candidates:
        if holdings.will_run(job_id, claimed_task_id):
            continue
        taken = session.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED, sent < cutoff)
                                .values(sent_at=now()).execution_options(synchronize_session=False))
        session.commit()
        if taken.rowcount != 1:
            continue
        enqueue_training(job_id, queue, gpus)
        resent.append(job_id)
        add_event(session, client, job_id, "The job queue (Redis) had lost this job's message; sent it to "
                  f"{training_queue(queue, gpus)} again.", level="warning", type_="resent",
                  max_len=settings.stream_max_points)
    return resent
