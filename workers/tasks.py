"""Celery tasks: thin like views. They take a job id, hand it to the runner, and return."""

from __future__ import annotations

from app.fleet.queue import TRAIN_TASK
from app.ops.logging_setup import log_context
from workers.celery_app import app


@app.task(name=TRAIN_TASK, bind=True)
def train_job(self, job_id: str) -> str:
    """Claim and run one fine-tuning job; a duplicate delivery returns 'skipped'."""
    from workers.job_runner import run_job

    with log_context(job_id=job_id, task_id=self.request.id):
        return run_job(job_id, worker=self.request.hostname or "worker", task_id=self.request.id)
