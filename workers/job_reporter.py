"""Carries a running job's progress out of the training loop: Redis stream at once, database in batches.

Each logged step is appended to the job's stream (browsers see it within milliseconds) and kept in
memory until the next flush, which upserts the batch into `metrics` and moves the job's progress
columns; so history survives a Redis flush while the hot loop does one XADD per logging step.

Every write is fenced by the reporter's attempt where it lands (`app.jobs.lifecycle.hold_attempt`, and the stream's
attempt script): once a newer attempt owns the job, the first refused write marks this attempt lost, every
later write is dropped, and `should_stop` ends the training loop at its next step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import func, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db import new_session
from app.jobs import lifecycle, streams
from app.jobs.lifecycle import AttemptFenced
from app.settings import Settings
from app.storage import artifacts
from app.tables import METRIC_FIELDS, Job, Metric

log = logging.getLogger(__name__)
# How often the loop asks Redis whether a cancel was requested; seconds, so a stop lands within ~1 s.
CANCEL_POLL_SECONDS = 0.5
# How often it asks the database, which records every cancel even when Redis was away when it was sent.
CANCEL_DB_POLL_SECONDS = 2.0


def _upsert(session, rows: list[dict[str, Any]]) -> None:
    insert = postgresql.insert if session.bind.dialect.name == "postgresql" else sqlite.insert
    # Every row names every column: a multi-row INSERT takes its column list from the first row.
    statement = insert(Metric).values([{f: None for f in METRIC_FIELDS} | row for row in rows])
    # A step logged twice (its train log and its eval log, flushed apart) merges: a value never erases one.
    statement = statement.on_conflict_do_update(
        index_elements=["job_id", "step"],
        set_={f: func.coalesce(statement.excluded[f], getattr(Metric, f)) for f in METRIC_FIELDS},
    )
    session.execute(statement)


class JobReporter:
    """The `Reporter` the training code calls, bound to one claimed attempt of one job."""

    def __init__(self, settings: Settings, client: redis.Redis, job_id: str, *, worker: str, attempt: int):
        self.settings, self.client, self.job_id = settings, client, job_id
        self.worker, self.attempt = worker, attempt
        self.lease_lost = threading.Event()
        self._pending: dict[int, dict[str, Any]] = {}
        self._progress: dict[str, Any] = {}
        self._last_flush = time.monotonic()
        self._last_cancel_poll = 0.0
        self._last_db_cancel_poll = 0.0
        self._cancelled = False
        self._redis_failing = False  # warn once per Redis outage, not once a poll
        self._unstreamed = False  # a step missed the stream: the database must have it before the next entry
        self._logged_step = 0  # the step this attempt logged last (or resumed from): stream readers spot gaps by it
        self._lock = threading.Lock()

    # --- the Reporter protocol -------------------------------------------------------------------------
    def on_start(self, *, total_steps: int, trainable_params: int, all_params: int, device: str,
                 resumed_from_step: int) -> None:
        """Record the run's shape and announce it."""

        def record(session) -> None:
            lifecycle.hold_attempt(session, self.job_id, self.attempt)
            session.execute(update(Job).where(Job.id == self.job_id).values(
                total_steps=total_steps, trainable_params=trainable_params, all_params=all_params, device=device,
                step=resumed_from_step))
            session.commit()
            job = session.get(Job, self.job_id)
            estimate = (job.estimate or {}).get("trainable_params")
            match = "" if estimate is None else (
                " (equal to the estimate at launch)" if estimate == trainable_params
                else f" (the estimate at launch said {estimate:,})")
            where = f"resuming at step {resumed_from_step}" if resumed_from_step else "starting"
            self._event(session, f"Training {total_steps} steps on {device}, {where}; PEFT reports "
                                 f"{trainable_params:,} trainable of {all_params:,} parameters{match}.",
                        type_="training_started")
            lifecycle.publish_status(self.client, job, max_len=self.settings.stream_max_points, attempt=self.attempt)

        self._logged_step = resumed_from_step
        self._write(record)

    def on_log(self, *, step: int, epoch: float, metrics: dict[str, float]) -> None:
        """Stream one logged step now; keep it for the next database flush."""
        if self.lease_lost.is_set():
            return
        point = {"step": step, "epoch": epoch, **metrics}
        if self._unstreamed:
            # Steps logged while Redis was away reach the database before the next stream entry does, so a reader
            # that sees the gap (previous_step past what it holds) finds them there.
            self.flush()
        self._stream("metric", {**point, "previous_step": self._logged_step})
        self._logged_step = step
        with self._lock:
            row = self._pending.setdefault(step, {"job_id": self.job_id, "step": step})
            row.update({k: v for k, v in point.items() if k in METRIC_FIELDS and v is not None})
            self._progress = {"step": step, "epoch": epoch,
                              "trained_tokens": metrics.get("trained_tokens", self._progress.get("trained_tokens"))}
        if metrics.get("eval_loss") is not None:
            # Step 0 is the evaluation before training: the fresh adapter leaves the base model's outputs unchanged.
            said = (f"Held-out loss of the base model, before training: {metrics['eval_loss']:.4f}." if step == 0
                    else f"Evaluation at step {step}: eval loss {metrics['eval_loss']:.4f}.")
            self._write(lambda session: self._event(
                session, said, type_="evaluation", data={"step": step, "eval_loss": metrics["eval_loss"]}))
        if time.monotonic() - self._last_flush >= self.settings.metrics_flush_seconds:
            self.flush()

    def on_checkpoint(self, *, step: int, path: Path) -> None:
        """Persist pending metrics, then record the checkpoint so a later attempt can resume from it."""
        self.flush()
        if self.lease_lost.is_set():
            return  # its files stay under this attempt's own key, which nothing records or reads

        def record(session) -> None:
            # Stored before it is recorded, so a checkpoint a later attempt finds is always complete in the store;
            # the key is this attempt's own, so storing never touches what another attempt wrote.
            stored_at = artifacts.publish_dir(self.settings, path)
            lifecycle.record_checkpoint(session, self.job_id, self.attempt, step, stored_at)
            self._event(session, f"Checkpoint saved at step {step}.", type_="checkpoint", data={"step": step})

        self._write(record)

    def on_samples(self, *, step: int, samples: list[dict], seconds: float) -> None:
        """Store the held-out answers made at a step, and say so in the job's events."""
        def record(session) -> None:
            lifecycle.record_held_out_samples(session, self.job_id, self.attempt, step, samples)
            self._event(session, f"Answered {len(samples)} held-out prompt{'s' if len(samples) != 1 else ''} with the "
                                 f"base model and the adapter at step {step} in {seconds:.1f} s.", type_="samples",
                        data={"step": step, "samples": len(samples)})

        self._write(record)

    def on_event(self, message: str, *, level: str = "info", type_: str = "message", data: dict | None = None) -> None:
        """An event of this attempt (free-form from the training code, or typed from the runner)."""
        self._write(lambda session: self._event(session, message, level=level, type_=type_, data=data))

    def publish_status(self, job: Job) -> None:
        """Tell stream readers the job's status, as this attempt."""
        try:
            lifecycle.publish_status(self.client, job, max_len=self.settings.stream_max_points, attempt=self.attempt)
        except AttemptFenced:
            self._lose("the stream refused its status")

    def should_stop(self) -> bool:
        """True once a cancel was requested or this attempt lost the job (a refused write, a lost lease, or a
        newer attempt named in Redis)."""
        if self.lease_lost.is_set() or self._cancelled:
            return True
        moment = time.monotonic()
        if moment - self._last_cancel_poll >= CANCEL_POLL_SECONDS:
            self._last_cancel_poll = moment
            try:
                cancelled, current = self.client.mget(streams.cancel_key(self.job_id), streams.attempt_key(self.job_id))
                self._cancelled = cancelled is not None
                if current is not None and int(current) > self.attempt:
                    self._lose("a newer attempt took the job over")
                self._redis_failing = False
            except redis.RedisError as exc:
                if not self._redis_failing:
                    log.warning("cancel flag of %s unreadable (%s); the database is asked meanwhile", self.job_id, exc)
                self._redis_failing = True
        if not self._cancelled and moment - self._last_db_cancel_poll >= CANCEL_DB_POLL_SECONDS:
            self._last_db_cancel_poll = moment
            self._cancelled = self._cancel_recorded()
        return self._cancelled or self.lease_lost.is_set()

    def _cancel_recorded(self) -> bool:
        """Whether the database records a cancel: the truth, which a cancel sent while Redis was away reached."""
        try:
            with new_session() as session:
                return lifecycle.cancel_recorded(session, self.job_id)
        except Exception:  # a database hiccup must not stop training; the next poll asks again
            log.warning("cancel state of %s unreadable from the database", self.job_id, exc_info=True)
            return False

    @property
    def attempt_lost(self) -> bool:
        """Whether this attempt lost the job: it must then write nothing more, not even a last checkpoint."""
        return self.lease_lost.is_set()

    # --- housekeeping ----------------------------------------------------------------------------------
    def flush(self) -> None:
        """Write buffered metrics and progress to the database."""
        with self._lock:
            rows, progress = list(self._pending.values()), dict(self._progress)
            self._pending.clear()
            self._last_flush = time.monotonic()
        if not rows:
            return

        def record(session) -> None:
            # The lock first: a stale attempt's rows never overwrite the points its successor logged.
            lifecycle.hold_attempt(session, self.job_id, self.attempt)
            _upsert(session, rows)
            values = {k: v for k, v in progress.items() if v is not None}
            session.execute(update(Job).where(Job.id == self.job_id).values(**values))
            session.commit()

        self._write(record)

    def rewind_to(self, step: int) -> None:
        """Forget points past a checkpoint the run resumes from: they will be logged again."""
        self._logged_step = step
        self._write(lambda session: lifecycle.rewind(session, self.client, self.job_id, self.attempt, step,
                                                max_len=self.settings.stream_max_points))

    def continue_after(self, step: int) -> None:
        """Log on from `step`, which another process of this attempt already rewound the job to."""
        self._logged_step = step

    def _write(self, write: Callable[[Session], None]) -> None:
        """Run one fenced write in its own session; a refusal marks this attempt lost instead of reaching the
        training loop."""
        if self.lease_lost.is_set():
            return
        try:
            with new_session() as session:
                write(session)
        except AttemptFenced:
            self._lose("a write was refused")

    def _lose(self, why: str) -> None:
        if not self.lease_lost.is_set():
            log.warning("job %s: attempt %s lost the job (%s); stopping it and writing nothing more",
                        self.job_id, self.attempt, why)
        self.lease_lost.set()

    def _stream(self, type_: str, data: dict[str, Any]) -> None:
        try:
            lifecycle.publish_for_attempt(self.client, self.job_id, self.attempt, type_, data,
                                     max_len=self.settings.stream_max_points)
            self._unstreamed = False
        except AttemptFenced:
            self._lose("the stream refused its entry")
        except redis.RedisError as exc:
            if not self._unstreamed:  # once per outage: the steps are kept in the database meanwhile
                log.warning("%s of %s not streamed (%s); later steps go to the database until Redis answers",
                            type_, self.job_id, exc)
            self._unstreamed = True

    def _event(self, session, message: str, *, level: str = "info", type_: str = "message",
               data: dict | None = None) -> None:
        lifecycle.add_event(session, self.client, self.job_id, message, level=level, type_=type_, data=data,
                       max_len=self.settings.stream_max_points, attempt=self.attempt)
