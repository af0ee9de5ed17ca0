"""A job's page: live charts, progress, events and result, who launched it, the estimate at launch, its
artifacts, and the notes and tags team members edit in place.

An HX-Request for a job page gets only its summary fragment, which the page re-fetches when the job's
status changes. Notes and tags are saved by HTMX (the answer is the edited block, errors beside the field)
or by a plain form post (a redirect back, or the page re-rendered with the error). Must not import torch
or `workers`.
"""

from __future__ import annotations

from typing import Annotated

import yaml
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.accounts.auth import PrincipalDep, team_scoped
from app.db import SessionDep
from app.jobs import exports, held_out_answers, labels, model_names
from app.jobs.adapter_card import adapter_name, trained_on_chat
from app.jobs.api_shapes import checkpoint_steps_metrics, held_out_comparison, job_phase, progress_figures
from app.jobs.time_prediction import time_prediction
from app.tables import Checkpoint, DataFile, Event, Job, User
from app.web.templating import templates, wants_fragment

router = APIRouter(include_in_schema=False)
# The result card's download name, usage snippet, playground links and held-out headline (also in the history).
templates.env.filters.update(adapter_name=adapter_name, trained_on_chat=trained_on_chat,
                             fine_tuned_model=model_names.fine_tuned_model,
                             checkpoint_model=model_names.checkpoint_model, held_out=held_out_comparison,
                             time_prediction=time_prediction)
EVENTS_SHOWN = 500


def _not_found(request: Request, job_id: str) -> HTMLResponse:
    return templates.TemplateResponse(request, "not_found.html", {"what": f"job {job_id}"}, status_code=404)


def lineage(session: Session, job: Job) -> dict:
    """The job whose adapter this one continues and the team's jobs that continue this one's, oldest first."""
    parent = session.get(Job, job.parent_job_id) if job.parent_job_id else None
    children = session.scalars(select(Job).where(Job.parent_job_id == job.id, Job.team_id == job.team_id)
                               .order_by(Job.created_at)).all()
    return {"parent": parent if parent is not None and parent.team_id == job.team_id else None,
            "children": children}


def _context(session: Session, job: Job) -> dict:
    events = list(reversed(session.scalars(
        select(Event).where(Event.job_id == job.id).order_by(Event.id.desc()).limit(EVENTS_SHOWN)).all()))
    creator = session.get(User, job.created_by) if job.created_by else None
    checkpoints = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job.id).order_by(Checkpoint.step)).all()
    # A checkpoint's losses are the ones logged at its step (the API's checkpoint objects use the same).
    logged = checkpoint_steps_metrics(session, job.id, [c.step for c in checkpoints])
    return {
        "job": job, "events": events, "launched_by": creator.email if creator else None,
        "checkpoints": [{"step": c.step, "created_at": c.created_at,
                         "loss": logged.get(c.step, {}).get("train_loss"),
                         "eval_loss": logged.get(c.step, {}).get("full_valid_loss")} for c in checkpoints],
        "training_file": session.get(DataFile, job.training_file_id),
        "validation_file": session.get(DataFile, job.validation_file_id) if job.validation_file_id else None,
        "config_yaml": yaml.safe_dump(job.config, sort_keys=False),
        "label_errors": {}, "drafts": {}, "saved": None,
        "phase": job_phase(session, job), "figures": progress_figures(session, job),
        "export": exports.find(session, job.id, "merged") if job.adapter_key else None,
        "lineage": lineage(session, job),
        **held_out_answers.page_context(session, job),
    }


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str, session: SessionDep, principal: PrincipalDep):
    """A job's live page; its summary alone for HTMX."""
    job = team_scoped(session, Job, job_id, principal)
    if job is None:
        return _not_found(request, job_id)
    template = "partials/job_summary.html" if wants_fragment(request) else "job.html"
    return templates.TemplateResponse(request, template, _context(session, job))


def _save_label(request: Request, session: Session, principal, job_id: str, name: str, text: str, save):
    """Store one label with `save`; answer its block (HTMX), a redirect, or the page with the error."""
    job = team_scoped(session, Job, job_id, principal)
    if job is None:
        return _not_found(request, job_id)
    try:
        save(session, job, text)
        errors = {}
    except labels.LabelError as exc:
        session.rollback()
        errors = {name: str(exc)}
    if not errors and not wants_fragment(request):
        return RedirectResponse(f"/jobs/{job.id}#job-labels", status_code=303)
    context = {**_context(session, job), "label_errors": errors, "drafts": {name: text} if errors else {},
               "saved": None if errors else name}
    if wants_fragment(request):
        # 200 even with an error: htmx swaps only successful answers, and the error belongs on screen.
        return templates.TemplateResponse(request, f"partials/job_{name}.html", context)
    return templates.TemplateResponse(request, "job.html", context, status_code=422)


@router.post("/jobs/{job_id}/notes", response_class=HTMLResponse)
def save_notes(request: Request, job_id: str, session: SessionDep, principal: PrincipalDep,
               notes: Annotated[str, Form()] = ""):
    """Replace a job's notes (any member of its team may)."""
    return _save_label(request, session, principal, job_id, "notes", notes, labels.save_notes)


@router.post("/jobs/{job_id}/tags", response_class=HTMLResponse)
def save_tags(request: Request, job_id: str, session: SessionDep, principal: PrincipalDep,
              tags: Annotated[str, Form()] = ""):
    """Replace a job's tags from comma-separated text (any member of its team may)."""
    return _save_label(request, session, principal, job_id, "tags", tags, labels.save_tags)
