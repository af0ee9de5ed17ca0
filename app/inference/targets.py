"""What a chat completion's `model` names for a team: a base model, or one of the team's adapters on its base.

A base model is one of the catalog's, a local model folder, or the base of one of the team's jobs: never just any
hub id, which would have an inference worker download and load whatever weights a request names.
A fine-tuned id is looked up among the caller's team's jobs only (`app.jobs.adapter_lookup`). Must not import
torch or `workers`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.base_models.model_ids import MODEL_ID_HINT, UnknownModel, resolve_model_id
from app.estimator import catalog
from app.jobs import model_names
from app.jobs.adapter_lookup import AdapterNotFound, find_adapter
from app.settings import Settings
from app.tables import Job


class ModelNotFound(Exception):
    """No model of this id for this team; the message says what was looked for."""


@dataclass(frozen=True, slots=True)
class Target:
    model: str  # the id as asked, echoed in replies
    base_model: str
    adapter_key: str | None  # the adapter's folder in the artifact store; None for the base alone
    job_id: str | None


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
    try:
        found = find_adapter(session, team_id, model, name)
    except AdapterNotFound as exc:
        raise ModelNotFound(str(exc)) from None
    return Target(model, found.job.model, found.storage_key, found.job.id)
