"""REST: `GET /v1/models`, every model a chat completion may name: the catalog, then the team's fine-tuned models;
and `GET /v1/models/{fine_tuned_model}`, one of them (a base model's id is answered by `app.base_models.api`).

As OpenAI's list shows an organisation's fine-tuned models beside the base ones. Must not import torch or `workers`.
"""

from __future__ import annotations

import re

from fastapi import APIRouter
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.convertors import Convertor, register_url_convertor

from app.accounts.auth import PrincipalDep
from app.accounts.users import Principal
from app.base_models.api import ModelCard, ModelList, catalog_card
from app.db import SessionDep
from app.estimator import catalog
from app.inference import targets
from app.job_status import JobStatus
from app.jobs import model_names
from app.settings import get_settings
from app.tables import Job
from app.web.api_errors import ErrorEnvelope, error_response


class FineTunedIdConvertor(Convertor):
    """Matches only fine-tuned model ids in a path, so a base model's id falls through to the base models' route."""

    regex = ".+" + re.escape(model_names.FINE_TUNED) + ".+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("fine_tuned_id", FineTunedIdConvertor())
router = APIRouter(prefix="/v1/models", tags=["models"])
# Newest first; a team with more succeeded jobs than this finds the older ones on their job pages.
MAX_FINE_TUNED_LISTED = 1000


def fine_tuned_cards(session: Session, principal: Principal) -> list[ModelCard]:
    """The team's fine-tuned models, newest first; a suffix shared by several jobs names the newest, listed once."""
    jobs = session.scalars(select(Job).where(Job.team_id == principal.team.id, Job.status == JobStatus.SUCCEEDED,
                                             Job.adapter_key.is_not(None))
                           .order_by(Job.finished_at.desc()).limit(MAX_FINE_TUNED_LISTED))
    cards: dict[str, ModelCard] = {}
    for job in jobs:
        model_id = model_names.fine_tuned_model(job)
        cards.setdefault(model_id, ModelCard(
            id=model_id, created=int(job.finished_at or job.created_at), owned_by=principal.team.name,
            name=job.suffix or job.id, family="fine-tuned", size="LoRA adapter",
            summary=f"LoRA adapter of {job.model}, trained by job {job.id}", parent=job.model, job_id=job.id))
    return list(cards.values())


@router.get("", response_model=ModelList, summary="The model catalog and the team's fine-tuned models")
def list_models(principal: PrincipalDep, session: SessionDep) -> ModelList:
    """Every catalog model with its summary, then the team's fine-tuned models (newest first): each id works as
    `model` in a chat completion."""
    return ModelList(data=[*(catalog_card(entry) for entry in catalog.entries()),
                           *fine_tuned_cards(session, principal)])


@router.get("/{model_id:fine_tuned_id}", response_model=ModelCard, summary="One of the team's fine-tuned models",
            responses={404: {"model": ErrorEnvelope}})
def retrieve_fine_tuned_model(model_id: str, principal: PrincipalDep, session: SessionDep):
    """A fine_tuned_model (or a checkpoint's id) of the team, as OpenAI's retrieve answers it; 404 for anything
    else, another team's included."""
    try:
        target = targets.resolve(session, principal.team.id, model_id, get_settings())
    except targets.ModelNotFound as exc:
        return error_response(404, str(exc), param="model", code="model_not_found")
    job = session.get(Job, target.job_id)
    step = model_names.parse(model_id).step
    return ModelCard(id=model_id, created=int(job.finished_at or job.created_at), owned_by=principal.team.name,
                     name=job.suffix or job.id, family="fine-tuned",
                     size="LoRA adapter" if step is None else f"LoRA checkpoint at step {step}",
                     summary=f"LoRA adapter of {job.model}, trained by job {job.id}", parent=job.model, job_id=job.id)
