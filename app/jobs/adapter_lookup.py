"""Which of a team's adapters a fine-tuned model id names (`app.jobs.model_names`): the final adapter of a succeeded
job, or a checkpoint any job of the team stored. Looked up among the caller's team's jobs only, so another team's
adapter is as unknown as one that never existed. Serves inference (chat with an adapter) and launches that continue
an adapter. Must not import torch or `workers`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import case, select
from sqlalchemy.orm import Session

from app.job_status import JobStatus
from app.jobs import model_names
from app.tables import Checkpoint, Job


class AdapterNotFound(Exception):
    """No adapter of this id for this team; the message says what was looked for."""


@dataclass(frozen=True, slots=True)
class FoundAdapter:
    job: Job
    storage_key: str  # the adapter's folder in the artifact store


def _jobs_named(team_id: str, name: model_names.FineTunedName):
    """The team's jobs on the name's base with its suffix or id: the job id form first (it names one job), then
    the newest with the suffix."""
    return (select(Job).where(Job.team_id == team_id, Job.model == name.base_model,
                              (Job.id == name.job_ref) | (Job.suffix == name.job_ref))
            .order_by(case((Job.id == name.job_ref, 0), else_=1), Job.created_at.desc()))


def find_adapter(session: Session, team_id: str, model: str, name: model_names.FineTunedName) -> FoundAdapter:
    """The adapter the parsed fine-tuned id `name` (of `model`) names for this team; AdapterNotFound otherwise."""
    if name.step is None:
        job = session.scalars(_jobs_named(team_id, name).where(Job.status == JobStatus.SUCCEEDED,
                                                              Job.adapter_key.is_not(None)).limit(1)).first()
        if job is None:
            raise AdapterNotFound(f"no succeeded job of your team has the fine_tuned_model {model!r}")
        return FoundAdapter(job, job.adapter_key)
    for job in session.scalars(_jobs_named(team_id, name).limit(20)):
        checkpoint = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job.id,
                                                              Checkpoint.step == name.step)).first()
        if checkpoint is not None:
            return FoundAdapter(job, checkpoint.storage_key)
    raise AdapterNotFound(f"no job of your team has the checkpoint {model!r}")
