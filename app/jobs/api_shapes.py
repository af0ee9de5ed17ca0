"""Jobs, events, checkpoints and metrics as the API returns them (OpenAI's shapes, plus extensions).

Must not import torch or `workers`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.fleet.queue import job_gpus
from app.job_status import JobStatus
from app.jobs import model_names
from app.jobs.create_request import BASE_LEARNING_RATE
from app.jobs.lifecycle import JOB_GPUS, event_payload, job_error
from app.jobs.time_prediction import time_prediction
from app.tables import PREFERENCE_METRIC_FIELDS, Checkpoint, Event, Job, Metric


def _hyperparameters(config: dict[str, Any]) -> dict[str, Any]:
    training = config.get("training", {})
    multiplier = training.get("learning_rate", BASE_LEARNING_RATE) / BASE_LEARNING_RATE
    epochs = training.get("num_epochs")
    # OpenAI's n_epochs is an integer; TrainingSettings keeps a float to allow fractional epochs.
    if isinstance(epochs, float) and epochs.is_integer():
        epochs = int(epochs)
    return {"n_epochs": epochs, "batch_size": training.get("batch_size"),
            "learning_rate_multiplier": round(multiplier, 6)}


def _method(config: dict[str, Any], hyper: dict[str, Any]) -> dict[str, Any]:
    method = config.get("method") or {"type": "supervised"}
    if method["type"] == "dpo":
        dpo = method.get("dpo") or {}
        return {"type": "dpo", "dpo": {"hyperparameters": {**hyper, "beta": dpo.get("beta"),
                                                            "loss_type": dpo.get("loss_type")}}}
    return {"type": "supervised", "supervised": {"hyperparameters": hyper}}


def held_out_comparison(job: Job) -> dict[str, Any] | None:
    """A finished run's headline when it had held-out data: the base model's held-out loss (evaluated before the
    first step), the adapter's at the end, and whether the adapter is worse than the base."""
    metrics = job.final_metrics or {}
    base, adapter = metrics.get("base_eval_loss"), metrics.get("eval_loss")
    if base is None or adapter is None:
        return None
    return {"base_loss": base, "adapter_loss": adapter, "worse_than_base": adapter > base}


def job_object(job: Job) -> dict[str, Any]:
    """The fine_tuning.job object, with Tuneboard's config, progress and estimate beside OpenAI's fields."""
    hyper = _hyperparameters(job.config)
    return {
        "object": "fine_tuning.job",
        "id": job.id,
        "model": job.model,
        "created_at": int(job.created_at),
        "finished_at": int(job.finished_at) if job.finished_at else None,
        "fine_tuned_model": model_names.fine_tuned_model(job) if job.status == JobStatus.SUCCEEDED else None,
        # The team's adapter this run continues (launched with its fine_tuned_model as the model), or None.
        "continues": ({"model": job.config["start_from"]["model"], "job_id": job.parent_job_id}
                      if job.config.get("start_from") else None),
        "held_out": held_out_comparison(job),
        "time_prediction": time_prediction(job),
        "organization_id": "org-tuneboard",
        "result_files": [],
        "status": job.status,
        "validation_file": job.validation_file_id,
        "training_file": job.training_file_id,
        "hyperparameters": hyper,
        "trained_tokens": job.trained_tokens,
        "error": job_error(job),
        "seed": job.config.get("training", {}).get("seed"),
        "estimated_finish": None,
        "integrations": [],
        "metadata": job.metadata_,
        "user_provided_suffix": job.suffix,
        "method": _method(job.config, hyper),
        # Tuneboard's extensions
        "queue": job.queue,
        "lora": job.config.get("lora"),
        "training": job.config.get("training"),
        "estimate": job.estimate,
        "trainable_params": job.trainable_params,
        "all_params": job.all_params,
        "progress": {"step": job.step, "total_steps": job.total_steps, "epoch": job.epoch},
        "attempts": job.attempts,
        "worker": job.worker,
        "device": job.device,
        "started_at": int(job.started_at) if job.started_at else None,
        "final_metrics": job.final_metrics,
        "adapter_available": job.adapter_key is not None,
    }


def event_object(event: Event) -> dict[str, Any]:
    """The fine_tuning.job.event object."""
    return {"object": "fine_tuning.job.event", **event_payload(event)}


def checkpoint_steps_metrics(session: Session, job_id: str, steps: list[int]) -> dict[int, dict[str, Any]]:
    """OpenAI's checkpoint metrics (step, train_loss, full_valid_loss) from the steps logged at these steps."""
    if not steps:
        return {}
    rows = session.execute(select(Metric.step, Metric.loss, Metric.eval_loss)
                           .where(Metric.job_id == job_id, Metric.step.in_(steps))).all()
    logged = {}
    for step, loss, eval_loss in rows:
        # Tuneboard evaluates on the whole validation set, which OpenAI calls full_valid_loss.
        named = {"step": step, "train_loss": loss, "full_valid_loss": eval_loss}
        logged[step] = {key: value for key, value in named.items() if value is not None}
    return logged


def checkpoint_object(checkpoint: Checkpoint, job: Job, logged: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fine_tuning.job.checkpoint object; `logged` are the metrics logged at its step."""
    return {
        "object": "fine_tuning.job.checkpoint",
        "id": f"ftckpt-{checkpoint.id}",
        "created_at": int(checkpoint.created_at),
        "fine_tuned_model_checkpoint": model_names.checkpoint_model(job, checkpoint.step),
        "fine_tuning_job_id": job.id,
        "step_number": checkpoint.step,
        "metrics": logged or {"step": checkpoint.step},
    }


def metric_point(metric: Metric) -> dict[str, Any]:
    """One logged step (with DPO's reward curves where the run logged them)."""
    point = {"step": metric.step, "epoch": metric.epoch, "loss": metric.loss, "eval_loss": metric.eval_loss,
             "learning_rate": metric.learning_rate, "grad_norm": metric.grad_norm,
             "tokens_per_second": metric.tokens_per_second}
    point.update({name: value for name in PREFERENCE_METRIC_FIELDS if (value := getattr(metric, name)) is not None})
    return point


# The worker's events that open each phase before the first step (workers/job_runner.py, base_models.py,
# job_reporter.py), newest first: the latest one seen says where the job is.
_PHASES = (("Training ", "Running the first training step…"),
           ("Loaded ", "Tokenizing the training data…"),
           ("Started on worker ", "Loading the base model…"))


def job_phase(session: Session, job: Job) -> str | None:
    """Where a job that has logged no step yet is: queued at position N, loading, tokenizing, first step."""
    if job.is_finished or job.step > 0:
        return None
    if job.status == JobStatus.QUEUED:
        # A job on N GPUs waits in the queue's per-size queue, behind the jobs on N GPUs only.
        gpus = job_gpus(job.config)
        ahead = session.scalar(select(func.count()).select_from(Job).where(
            Job.status == JobStatus.QUEUED, Job.queue == job.queue, Job.created_at < job.created_at,
            JOB_GPUS == gpus)) or 0
        worker = "a worker" if gpus == 1 else f"a worker with {gpus} GPUs"
        return f"Queued at position {ahead + 1} on queue {job.queue}: waiting for {worker}."
    recent = session.scalars(select(Event.message).where(Event.job_id == job.id)
                             .order_by(Event.id.desc()).limit(50)).all()
    for message in recent:
        for opening, phase in _PHASES:
            if message.startswith(opening):
                return phase
    return "Starting on a worker…"


def _eta_text(seconds: float) -> str:
    hours, rest = divmod(int(round(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes}m" if hours else f"{minutes}m {secs}s" if minutes else f"{secs}s"


def progress_figures(session: Session, job: Job) -> dict[str, str]:
    """Tokens/s, ETA and latest loss as the page shows them, from what is stored (no wait for the next step)."""
    figures = {"tps": "—", "eta": "—", "loss": "—"}
    if job.status == JobStatus.SUCCEEDED:
        figures["eta"] = "done"
    final = job.final_metrics or {}
    if final.get("tokens_per_second"):
        figures["tps"] = f"{final['tokens_per_second']:,.0f}"
    if final.get("loss") is not None:
        figures["loss"] = f"{final['loss']:.4f}"
    if job.is_finished and final:
        return figures
    latest = session.scalars(select(Metric).where(Metric.job_id == job.id, Metric.loss.is_not(None))
                             .order_by(Metric.step.desc()).limit(1)).first()
    if latest is not None:
        figures["loss"] = f"{latest.loss:.4f}"
    rate = session.scalars(select(Metric).where(Metric.job_id == job.id, Metric.tokens_per_second.is_not(None))
                           .order_by(Metric.step.desc()).limit(1)).first()
    if rate is not None:
        figures["tps"] = f"{rate.tokens_per_second:,.0f}"
    first = session.scalars(select(Metric).where(Metric.job_id == job.id).order_by(Metric.step).limit(1)).first()
    if (not job.is_finished and job.total_steps and latest is not None and first is not None
            and latest.step > first.step):
        per_step = (latest.created_at - first.created_at) / (latest.step - first.step)
        figures["eta"] = _eta_text(max(0.0, per_step * (job.total_steps - job.step)))
    return figures
