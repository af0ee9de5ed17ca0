"""The jobs pages: the job list and a job's live page (charts, progress, events, result).

An HX-Request for a job page gets only its summary fragment, which the page re-fetches when the job's
status changes. Must not import torch or `workers`.
"""

from __future__ import annotations

import yaml
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from app.auth import PrincipalDep, team_scoped
from app.db import SessionDep
from app.models import Checkpoint, DataFile, Event, Job
from app.templating import templates

router = APIRouter(include_in_schema=False)
EVENTS_SHOWN = 500


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, session: SessionDep, principal: PrincipalDep):
    """The team's jobs, newest first."""
    rows = session.scalars(select(Job).where(Job.team_id == principal.team.id)
                           .order_by(Job.created_at.desc()).limit(200)).all()
    return templates.TemplateResponse(request, "jobs.html", {"jobs": rows})


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str, session: SessionDep, principal: PrincipalDep):
    """A job's live page; its summary alone for HTMX."""
    job = team_scoped(session, Job, job_id, principal)
    if job is None:
        return templates.TemplateResponse(request, "not_found.html", {"what": f"job {job_id}"}, status_code=404)
    events = list(reversed(session.scalars(
        select(Event).where(Event.job_id == job_id).order_by(Event.id.desc()).limit(EVENTS_SHOWN)).all()))
    context = {
        "job": job, "events": events,
        "checkpoints": session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)
                                       .order_by(Checkpoint.step)).all(),
        "training_file": session.get(DataFile, job.training_file_id),
        "validation_file": session.get(DataFile, job.validation_file_id) if job.validation_file_id else None,
        "config_yaml": yaml.safe_dump(job.config, sort_keys=False),
    }
    template = "partials/job_summary.html" if request.headers.get("HX-Request") == "true" else "job.html"
    return templates.TemplateResponse(request, template, context)
