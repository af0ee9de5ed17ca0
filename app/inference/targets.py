"""What a chat completion's `model` names for a team: a base model, or one of the team's adapters on its base.

A base model is one of the catalog's, a local model folder, or the base of one of the team's jobs: never just any
hub id, which would have an inference worker download and load whatever weights a request names.
A fine-tuned id (`app.jobs.model_names`) is looked up among the caller's team's jobs only, so another team's
adapter is as unknown as one that never existed. The final adapter needs a succeeded job; a checkpoint's id works
for any job of the team that stored that checkpoint. Must not import torch or `workers`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import case, select
from sqlalchemy.orm import Session

from app.base_models.model_ids import MODEL_ID_HINT, UnknownModel, resolve_model_id
from app.estimator import catalog
from app.job_status import JobStatus
from app.jobs import model_names
from app.settings import Settings
from app.tables import Checkpoint, Job


class ModelNotFound(Exception):
    """No model of this id for this team; the message says what was looked for."""


@dataclass(frozen=True, slots=True)
class Target:
    model: str  # the id as asked, echoed in replies
    base_model: str
    adapter_key: str | None  # the adapter's folder in the artifact store; None for the base alone
    job_id: str | None


def _jobs_named(team_id: str, name: model_names.FineTunedName):
    """The team's jobs on the name's base with its suffix or id: the job id form first (it names one job), then
    the newest with the suffix."""
    return (select(Job).where(Job.team_id == team_id, Job.model == name.base_model,
                              (Job.id == name.job_ref) | (Job.suffix == name.job_ref))
            .order_by(case((Job.id == name.job_ref, 0), else_=1), Job.created_at.desc()))


def resolve(session: Session, team_id: str, model: str, settings: Settings) -> Target:
    """The base and adapter `model` names for this team; ModelNotFound when it names nothing the team has."""
    name = model_names.parse(model)
    if name is None:
        try:
            ref = resolve_model_id(model, settings)
        except UnknownModel:
            raise ModelNotFound(f"the model {model!r} does not exist: {MODEL_ID_HINT}, or a fine_tuned_model of "
                                "one of your team's jobs") from None
        # Any hub id would have a worker download and load it (70B of weights, for one word of a request): a base
        # is one of the catalog's, a local model folder, or one the team already fine-tunes.
        known = (ref.local_dir is not None or catalog.find(model) is not None
                 or session.scalars(select(Job.id).where(Job.team_id == team_id, Job.model == model).limit(1)).first())
        if not known:
            raise ModelNotFound(f"the model {model!r} is neither in the catalog, nor a local model folder, nor the "
                                "base of one of your team's jobs")
        return Target(model, model, None, None)
    if name.step is None:
        job = session.scalars(_jobs_named(team_id, name).where(Job.status == JobStatus.SUCCEEDED,
                                                              Job.adapter_key.is_not(None)).limit(1)).first()
        if job is None:
            raise ModelNotFound(f"no succeeded job of your team has the fine_tuned_model {model!r}")
        return Target(model, job.model, job.adapter_key, job.id)
    for job in session.scalars(_jobs_named(team_id, name).limit(20)):
        checkpoint = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job.id,
                                                              Checkpoint.step == name.step)).first()
        if checkpoint is not None:
            return Target(model, job.model, checkpoint.storage_key, job.id)
    raise ModelNotFound(f"no job of your team has the checkpoint {model!r}")
