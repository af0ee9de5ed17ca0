"""A finished run's predicted training time against the time it took, for the job page, the API and the
team's history. Must not import torch or `workers`.
"""

from __future__ import annotations

import statistics
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.fleet.throughput import device_class
from app.job_status import JobStatus
from app.tables import Job


def _predicted(job: Job) -> dict[str, Any] | None:
    queues = ((job.estimate or {}).get("training_time") or {}).get("queues") or []
    if not queues:
        return None
    ran_on = device_class(job.device) if job.device else None
    return next((q for q in queues if q.get("device") == ran_on), queues[0])


def time_prediction(job: Job) -> dict[str, Any] | None:
    """{predicted_seconds, device, calibrated_runs, actual_seconds, error} or None without a prediction.

    `actual_seconds` (the Trainer's train_runtime) and `error` ((predicted - actual) / actual) are None until the
    run succeeds, and for a resumed run, whose runtime covers only its last attempt."""
    predicted = _predicted(job)
    if predicted is None:
        return None
    runtime = (job.final_metrics or {}).get("train_runtime")
    comparable = job.status == JobStatus.SUCCEEDED and job.attempts <= 1 and bool(runtime) and runtime > 0
    actual = float(runtime) if comparable else None
    seconds = float(predicted["seconds"])
    return {
        "predicted_seconds": seconds,
        "device": predicted.get("device"),
        "calibrated_runs": predicted.get("calibrated_runs", 0),
        "actual_seconds": actual,
        "error": (seconds - actual) / actual if actual else None,
    }


def prediction_errors(jobs: list[Job]) -> dict[str, Any] | None:
    """How far the predictions were off over these jobs: median and worst |error|, and how many runs."""
    errors = [p["error"] for job in jobs if (p := time_prediction(job)) and p["error"] is not None]
    if not errors:
        return None
    absolute = [abs(e) for e in errors]
    return {"runs": len(errors), "median_abs_error": statistics.median(absolute), "worst_abs_error": max(absolute),
            "within_25_percent": sum(1 for e in absolute if e <= 0.25)}


TEAM_RUNS_SCANNED = 500


def team_prediction_errors(session: Session, team_id: str) -> dict[str, Any] | None:
    """`prediction_errors` over the team's latest finished runs."""
    jobs = session.scalars(
        select(Job).where(Job.team_id == team_id, Job.status == JobStatus.SUCCEEDED, Job.estimate.is_not(None))
        .order_by(Job.finished_at.desc()).limit(TEAM_RUNS_SCANNED)
    ).all()
    return prediction_errors(list(jobs))
