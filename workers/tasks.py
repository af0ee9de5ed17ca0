"""Celery tasks: thin like views. They take a job id, hand it to the runner, and return."""

from __future__ import annotations

from app.fleet.queue import EXPORT_TASK, GENERATE_TASK, TRAIN_TASK
from app.ops.logging_setup import log_context
from workers.celery_app import app


@app.task(name=TRAIN_TASK, bind=True)
def train_job(self, job_id: str) -> str:
    """Claim and run one fine-tuning job; a duplicate delivery returns 'skipped'."""
    from workers.job_runner import run_job

    with log_context(job_id=job_id, task_id=self.request.id):
        delivered_from = (self.request.delivery_info or {}).get("routing_key")
        return run_job(job_id, worker=self.request.hostname or "worker", task_id=self.request.id,
                       delivered_from=delivered_from)


# Acked on receipt, unlike training: a worker that dies mid-reply must not have the request delivered again to a
# client long gone (the client's wait fails instead, and it may ask again).
@app.task(name=GENERATE_TASK, bind=True, acks_late=False)
def generate_reply(self, request: dict) -> str:
    """Answer one chat completion request on this worker's loaded base model."""
    from workers.inference.serve import serve

    with log_context(request_id=request.get("request_id"), task_id=self.request.id):
        return serve(request, worker=self.request.hostname or "worker")


@app.task(name=EXPORT_TASK, bind=True)
def export_merged(self, export_id: str) -> str:
    """Build one job's merged model; a duplicate delivery returns 'skipped'."""
    from workers.merged_export import run_export

    with log_context(export_id=export_id, task_id=self.request.id):
        return run_export(export_id, worker=self.request.hostname or "worker")
