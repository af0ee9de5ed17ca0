"""One attempt at one job: claim it, keep its lease, train, and record how it ended.

The Celery task calls `run_job` with the job id only; everything else is re-read from the database,
so a duplicate or late delivery is harmless (it finds nothing to claim) and a requeued job resumes
from the newest checkpoint that the earlier attempt recorded. Each attempt writes its checkpoints and
adapter under its own key (`attempt_key`), and only a write fenced by the attempt makes them visible:
an attempt that lost the job can never overwrite what its successor wrote.
"""

from __future__ import annotations

import logging
import threading
import traceback
from pathlib import Path

from app import redis_client
from app.datasets.job_examples import job_examples
from app.db import new_session
from app.estimator.job_config import JobConfig
from app.fleet import queue
from app.job_status import JobStatus
from app.jobs import lifecycle
from app.ops.logging_setup import add_log_fields
from app.settings import Settings, get_settings
from app.storage import artifacts
from app.tables import Job
from workers import reaper
from workers.job_reporter import JobReporter

log = logging.getLogger(__name__)
# How soon a job forwarded for want of GPUs is offered again when it came from the queue it is forwarded to.
GPU_FORWARD_DELAY_SECONDS = 10


class _CancelledBeforeStart(Exception):
    """A cancel arrived before training began."""


class LeaseKeeper(threading.Thread):
    """Renews the attempt's lease until stopped; flags the reporter when the lease was lost."""

    def __init__(self, settings: Settings, job_id: str, worker: str, attempt: int, lost: threading.Event):
        super().__init__(name=f"lease-{job_id}", daemon=True)
        self.settings, self.job_id, self.worker, self.attempt, self.lost = settings, job_id, worker, attempt, lost
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.settings.heartbeat_seconds):
            try:
                with new_session() as session:
                    if not lifecycle.renew_lease(session, self.job_id, self.worker, self.attempt, self.settings):
                        log.warning("job %s: lease lost; stopping this attempt", self.job_id)
                        self.lost.set()
                        return
            except Exception:  # a brief DB outage must not kill the run; the lease has slack
                log.exception("job %s: lease renewal failed", self.job_id)


def attempt_key(job_id: str, attempt: int) -> str:
    """The storage key under which one attempt of a job writes its checkpoints and adapter."""
    return f"{artifacts.job_dir_key(job_id)}/attempt-{attempt}"


def run_job(job_id: str, worker: str, task_id: str | None = None, delivered_from: str | None = None) -> str:
    """Run one attempt of a job to its end; returns the status it ended with, or 'skipped' (or 'forwarded' to
    workers with more GPUs). `delivered_from` is the queue the message came from."""
    from workers.training import TrainingFailure, TrainingRun, train
    from workers.training.multi_gpu import train_on_gpus

    settings = get_settings()
    client = redis_client.get_redis()
    with new_session() as session:
        if _forward_to_more_gpus(session, job_id, delivered_from):
            return "forwarded"
        claimed = lifecycle.claim(session, job_id, worker, settings, task_id=task_id)
        if claimed is None:
            log.info("job %s: nothing to claim (duplicate delivery, cancelled or finished)", job_id)
            return "skipped"
        job, attempt = claimed.job, claimed.attempt
        add_log_fields(team_id=job.team_id)
        # From here on the stream takes entries from this attempt only, not from an earlier one still alive.
        lifecycle.fence_attempts_before(client, job_id, attempt)
        reporter = JobReporter(settings, client, job_id, worker=worker, attempt=attempt)
        keeper = LeaseKeeper(settings, job_id, worker, attempt, reporter.lease_lost)
        keeper.start()
        reporter.on_event(f"Started on worker {worker} (attempt {attempt} of {job.max_attempts}).",
                          type_="started", data={"worker": worker, "attempt": attempt})
        reporter.publish_status(job)
        resume_from: Path | None = None
        if claimed.resume_from is not None:
            reporter.rewind_to(claimed.resume_from.step)
        status, values = JobStatus.FAILED, {}
        try:
            config = JobConfig.model_validate(job.config)
            if claimed.resume_from is not None:
                # From the store, so an attempt on another machine resumes where the last one stopped.
                resume_from = artifacts.local_dir(settings, claimed.resume_from.storage_key)
                log.info("job %s: resuming from %s, fetched from %s", job_id, claimed.resume_from.storage_key,
                         artifacts.get_store(settings).describe())
            train_examples, eval_examples = job_examples(settings, session, job,
                                                         validation_split=config.training.validation_split,
                                                         seed=config.training.seed)
            # The adapter a continued run starts from, fetched like a checkpoint (a resumed attempt reads its own
            # checkpoint instead, but the first step needs this one's shape and, for DPO, its reference).
            start_adapter = artifacts.local_dir(settings, config.start_from.adapter_key) if config.start_from else None
            run = TrainingRun(
                job_id=job_id, config=config, train_examples=train_examples, eval_examples=eval_examples,
                output_dir=artifacts.work_dir(settings, attempt_key(job_id, attempt)), resume_from=resume_from,
                data_dir=settings.data_dir, start_adapter=start_adapter,
            )
            if reporter.should_stop():  # cancelled between the claim and here: do not load the model
                raise _CancelledBeforeStart()
            if config.training.gpus > 1:
                result = train_on_gpus(run, reporter, worker=worker, attempt=attempt,
                                       resume_step=claimed.resume_from.step if claimed.resume_from else 0)
            else:
                result = train(run, reporter)
            reporter.flush()
            values = {"step": result.global_step, "total_steps": result.total_steps,
                      "trained_tokens": result.trained_tokens, "final_metrics": result.final_metrics,
                      "trainable_params": result.trainable_params, "all_params": result.all_params}
            if reporter.lease_lost.is_set():
                status = "lost"  # its adapter, if any, stays unpublished under this attempt's own key
            elif result.stopped:
                status = JobStatus.CANCELLED
            else:
                status = JobStatus.SUCCEEDED
                values["adapter_key"] = artifacts.publish_dir(settings, result.adapter_dir)
        except _CancelledBeforeStart:
            status = JobStatus.CANCELLED
        except TrainingFailure as exc:
            values = {"error_code": exc.code, "error_message": exc.reason,
                      "error_traceback": "".join(traceback.format_exception(exc))}
        except Exception as exc:  # any crash must end the job with its reason, not hang it
            log.exception("job %s failed", job_id)
            values = {"error_code": "internal_error", "error_message": f"{type(exc).__name__}: {exc}",
                      "error_traceback": traceback.format_exc()}
            if (store_failure := artifacts.store_failure(settings, exc)) is not None:  # the store's fault: say so
                values.update(error_code="artifact_store_failed", error_message=str(store_failure))
        finally:
            keeper.stopped.set()
            reporter.flush()
            # Only its own folder: a newer attempt of the job may be writing on this host too.
            artifacts.discard_work(settings, attempt_key(job_id, attempt))
        if reporter.lease_lost.is_set() or not lifecycle.finish(session, job_id, worker, attempt, status, **values):
            log.warning("job %s: this attempt lost the job before it ended; leaving it to its new owner", job_id)
            return "lost"
        artifacts.discard_work(settings, artifacts.job_dir_key(job_id))  # the job ended here: drop every local copy
        _announce_end(session, client, settings, job_id, status)
        return status


def _forward_to_more_gpus(session, job_id: str, delivered_from: str | None) -> bool:
    """True when the job needs more GPUs than this worker has: this worker claims nothing and sends the job to its
    queue's per-size queue, which only workers with enough GPUs consume (the reaper times the wait there)."""
    job = session.get(Job, job_id)
    if job is None or job.status != JobStatus.QUEUED:
        return False
    needed = queue.job_gpus(job.config)
    have = max(reaper.gpu_count(), 1)  # a CPU worker trains one process, like a one-GPU worker
    if needed <= have:
        return False
    # Only a message sent before per-size queues existed gets here, or one from a per-size queue this worker was
    # made to consume by hand. The first goes on at once: a countdown would make the two-GPU worker that receives it
    # hold it (Celery keeps messages with an ETA on the worker) while it may start another job. The second waits,
    # so that it does not spin through this worker.
    target = queue.training_queue(job.queue, needed)
    countdown = GPU_FORWARD_DELAY_SECONDS if delivered_from == target else None
    queue.enqueue_training(job_id, job.queue, needed, countdown=countdown)
    log.info("job %s: needs %s GPUs, this worker has %s; sent to %s", job_id, needed, have, target)
    return True


def _announce_end(session, client, settings: Settings, job_id: str, status: str) -> None:
    job = session.get(Job, job_id)
    session.refresh(job)
    message = {
        JobStatus.SUCCEEDED: "Training finished; the adapter is ready to download.",
        JobStatus.CANCELLED: "Job cancelled; its last checkpoint is kept.",
        JobStatus.FAILED: f"Job failed: {job.error_message}",
    }[status]
    lifecycle.add_event(session, client, job_id, message, level="error" if status == JobStatus.FAILED else "info",
                   type_=status, max_len=settings.stream_max_points)
    lifecycle.publish_status(client, job, max_len=settings.stream_max_points)
