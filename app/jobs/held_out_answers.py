"""A job's held-out answers: the base model's and the adapter's answers to held-out prompts, beside the references.

Read by the API (`GET /v1/fine_tuning/jobs/{id}/held_out_answers`, a Tuneboard extension next to `events` and
`checkpoints`) and by the job page, which shows one step's answers at a time (the last, or the one picked).
The worker writes them (`app.jobs.lifecycle.record_held_out_samples`). Must not import torch or `workers`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.accounts.auth import PrincipalDep, team_scoped
from app.db import SessionDep
from app.tables import HeldOutSample, Job
from app.web.api_errors import ErrorEnvelope, error_response
from app.web.templating import templates

router = APIRouter(tags=["fine-tuning"])
MAX_STEP = 2**31 - 1


def answer_steps(session: Session, job_id: str) -> list[int]:
    """The steps at which the job's held-out prompts were answered, oldest first."""
    return list(session.scalars(select(HeldOutSample.step).where(HeldOutSample.job_id == job_id).distinct()
                                .order_by(HeldOutSample.step)))


def answers_at(session: Session, job_id: str, step: int) -> list[HeldOutSample]:
    """The answers made at one step, in the prompts' order."""
    return list(session.scalars(select(HeldOutSample).where(HeldOutSample.job_id == job_id, HeldOutSample.step == step)
                                .order_by(HeldOutSample.position)))


def answer_object(sample: HeldOutSample) -> dict:
    """One held-out answer as the API returns it."""
    return {"object": "fine_tuning.job.held_out_answer", "step": sample.step, "index": sample.position,
            "line": sample.line, "prompt": sample.prompt, "reference": sample.reference,
            "base_answer": sample.base_answer, "adapter_answer": sample.adapter_answer,
            "created_at": int(sample.created_at)}


def page_context(session: Session, job: Job, step: int | None = None) -> dict:
    """What the job page's held-out answers block shows: one step's answers and the steps to pick from."""
    steps = answer_steps(session, job.id)
    shown = step if step in steps else (steps[-1] if steps else None)
    return {"job": job, "answer_steps": steps, "answers_step": shown,
            "answers": answers_at(session, job.id, shown) if shown is not None else []}


@router.get("/v1/fine_tuning/jobs/{job_id}/held_out_answers",
            summary="Held-out prompts answered by the base and the adapter (Tuneboard extension)",
            responses={404: {"model": ErrorEnvelope}, 422: {"model": ErrorEnvelope}})
def list_held_out_answers(
    job_id: str, session: SessionDep, principal: PrincipalDep,
    step: Annotated[int | None, Query(ge=0, le=MAX_STEP, description="The step whose answers to return; the last "
                                                                     "one answered when left out.")] = None,
):
    """One step's answers in the prompts' order, and every step that has answers (`steps`)."""
    if team_scoped(session, Job, job_id, principal) is None:
        return error_response(404, f"There is no fine-tuning job {job_id}.", param="fine_tuning_job_id",
                              code="job_not_found")
    steps = answer_steps(session, job_id)
    if step is not None and step not in steps:
        # The latest few: a run answering at every checkpoint may have thousands of steps with answers.
        said = ", ".join(map(str, steps[-20:])) or "none yet"
        return error_response(404, f"Job {job_id} has no held-out answers at step {step} (steps with answers: "
                                   f"{said}).", param="step", code="step_not_found")
    shown = step if step is not None else (steps[-1] if steps else None)
    rows = answers_at(session, job_id, shown) if shown is not None else []
    return {"object": "list", "step": shown, "steps": steps, "data": [answer_object(row) for row in rows],
            "has_more": False}


@router.get("/jobs/{job_id}/held-out-answers", response_class=HTMLResponse, include_in_schema=False)
def held_out_answers_block(request: Request, job_id: str, session: SessionDep, principal: PrincipalDep,
                           step: Annotated[int | None, Query(ge=0, le=MAX_STEP)] = None):
    """The job page's held-out answers block at another step (HTMX)."""
    job = team_scoped(session, Job, job_id, principal)
    if job is None:
        return templates.TemplateResponse(request, "not_found.html", {"what": f"job {job_id}"}, status_code=404)
    return templates.TemplateResponse(request, "partials/job_held_out.html", page_context(session, job, step))
