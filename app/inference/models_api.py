"""REST: `GET /v1/models`, every model a chat completion may name: the catalog, then the team's fine-tuned models.

As OpenAI's list shows an organisation's fine-tuned models beside the base ones. Must not import torch or `workers`.
"""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.accounts.auth import PrincipalDep
from app.accounts.users import Principal
from app.base_models.api import ModelCard, ModelList, catalog_card
from app.db import SessionDep
from app.estimator import catalog
from app.job_status import JobStatus
from app.jobs import model_names
from app.tables import Job

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
