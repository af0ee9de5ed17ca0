"""The Celery app as both sides see it: broker settings, and sending a job's task by name.

The web app sends `tuneboard.train_job` with the job id only, after the job row is committed; it never
imports the task code. Workers build their app from `make_celery` too, so both agree on every
setting. Must not import torch or `workers`.
"""

from __future__ import annotations

from functools import cache

from celery import Celery

from app.settings import Settings, get_settings

TRAIN_TASK = "tuneboard.train_job"


def make_celery(settings: Settings) -> Celery:
    """A Celery app on the configured Redis, set up for long, one-at-a-time GPU tasks."""
    url = settings.effective_redis_url
    celery = Celery("tuneboard", broker=url)
    celery.conf.update(
        task_default_queue=settings.default_queue,
        task_ignore_result=True,
        # Ack only after the task returns, so a worker that dies mid-job does not lose the message...
        task_acks_late=True,
        task_reject_on_worker_lost=False,
        # ...and take one message at a time: a job occupies its GPU until it ends.
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_seconds},
        # Task events on by default so Flower and `celery events` work as they are.
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
    )
    return celery


@cache
def _celery_for(url: str) -> Celery:
    return make_celery(get_settings())


def get_celery() -> Celery:
    """The process-wide Celery client for the configured broker."""
    return _celery_for(get_settings().effective_redis_url)


def enqueue_training(job_id: str, queue: str) -> None:
    """Send the training task for a committed job to the named queue."""
    get_celery().send_task(TRAIN_TASK, args=[job_id], queue=queue)
