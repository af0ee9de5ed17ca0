"""REST: `/v1/fine_tuning/jobs`, OpenAI-compatible create, list, retrieve, cancel, events and checkpoints,
plus Tuneboard's per-job metrics and adapter download."""

from __future__ import annotations

import io
import zipfile
from typing import Literal

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, Response
from pydantic import ValidationError
from sqlalchemy import select

from app import jobs, storage, streams
from app.api_errors import ErrorEnvelope, error_response, validation_param
from app.auth import PrincipalDep, team_scoped
from app.db import SessionDep
from app.job_requests import CreateJobRequest
from app.job_views import checkpoint_object, event_object, job_object, metric_point
from app.launch import LaunchError, launch
from app.models import Checkpoint, Event, Job, Metric
from app.settings import get_settings

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])
ERRORS = {400: {"model": ErrorEnvelope}, 404: {"model": ErrorEnvelope}, 422: {"model": ErrorEnvelope}}
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
AdapterFile = Literal["adapter_model.safetensors", "adapter_config.json"]


def _not_found(job_id: str):
    return error_response(404, f"No fine-tuning job with id {job_id!r}.", param="fine_tuning_job_id",
                          code="job_not_found")


def _page(items: list, limit: int, render) -> dict:
    page = items[:limit]
    return {"object": "list", "data": [render(i) for i in page], "has_more": len(items) > limit}


@router.post("", summary="Create a fine-tuning job", responses=ERRORS)
def create_job(body: CreateJobRequest, session: SessionDep, principal: PrincipalDep):
    """Validate the files and settings, record the estimate at launch, and queue the job."""
    try:
        config = body.to_job_config()
    except ValidationError as exc:
        first = exc.errors()[0]
        param = "training." + validation_param(tuple(first["loc"]))
        return error_response(422, f"{param}: {first['msg'].removeprefix('Value error, ')}", param=param,
                              code="invalid_value")
    try:
        job = launch(session, get_settings(), principal, config, training_file=body.training_file,
                     validation_file=body.validation_file, suffix=body.suffix, metadata=body.metadata,
                     queue=body.queue)
    except LaunchError as exc:
        return error_response(exc.status, exc.message, param=exc.param, code=exc.code)
    return job_object(job)


@router.get("", summary="List fine-tuning jobs")
def list_jobs(session: SessionDep, principal: PrincipalDep, after: str | None = None,
              limit: int = Query(20, ge=1, le=1000), status: str | None = None):
    """The team's jobs, newest first; `after` is the id of the last job of the previous page."""
    query = select(Job).where(Job.team_id == principal.team.id).order_by(Job.created_at.desc(), Job.id.desc())
    if status:
        query = query.where(Job.status == status)
    if after:
        anchor = team_scoped(session, Job, after, principal)
        if anchor is None:
            return error_response(400, f"after: no job with id {after!r}", param="after", code="invalid_cursor")
        query = query.where((Job.created_at < anchor.created_at) |
                            ((Job.created_at == anchor.created_at) & (Job.id < anchor.id)))
    return _page(session.scalars(query.limit(limit + 1)).all(), limit, job_object)


@router.get("/{job_id}", summary="Retrieve a fine-tuning job", responses=ERRORS)
def retrieve_job(job_id: str, session: SessionDep, principal: PrincipalDep):
    """The job with its status, progress, estimate and result."""
    job = team_scoped(session, Job, job_id, principal)
    return job_object(job) if job else _not_found(job_id)


@router.post("/{job_id}/cancel", summary="Cancel a fine-tuning job", responses=ERRORS)
def cancel_job(job_id: str, session: SessionDep, principal: PrincipalDep):
    """Cancel a queued job at once, or stop a running one at its next step (its checkpoint is kept)."""
    job = team_scoped(session, Job, job_id, principal)
    if job is None:
        return _not_found(job_id)
    if job.is_finished:
        return error_response(400, f"Job {job_id} already {job.status}.", param="fine_tuning_job_id",
                              code="job_finished")
    return job_object(jobs.cancel(session, streams.get_redis(), job, get_settings()))


@router.get("/{job_id}/events", summary="List a job's events", responses=ERRORS)
def list_events(job_id: str, session: SessionDep, principal: PrincipalDep, after: str | None = None,
                limit: int = Query(20, ge=1, le=1000)):
    """Events newest first, as OpenAI lists them; `after` is an event id."""
    if team_scoped(session, Job, job_id, principal) is None:
        return _not_found(job_id)
    query = select(Event).where(Event.job_id == job_id).order_by(Event.id.desc())
    if after:
        query = query.where(Event.id < int(after.removeprefix("ftevent-")))
    return _page(session.scalars(query.limit(limit + 1)).all(), limit, event_object)


@router.get("/{job_id}/checkpoints", summary="List a job's checkpoints", responses=ERRORS)
def list_checkpoints(job_id: str, session: SessionDep, principal: PrincipalDep, after: str | None = None,
                     limit: int = Query(10, ge=1, le=1000)):
    """Checkpoints newest first."""
    job = team_scoped(session, Job, job_id, principal)
    if job is None:
        return _not_found(job_id)
    query = select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step.desc())
    if after:
        query = query.where(Checkpoint.id < int(after.removeprefix("ftckpt-")))
    return _page(session.scalars(query.limit(limit + 1)).all(), limit, lambda c: checkpoint_object(c, job))


@router.get("/{job_id}/metrics", summary="A job's logged steps (Tuneboard extension)", responses=ERRORS)
def list_metrics(job_id: str, session: SessionDep, principal: PrincipalDep, after_step: int = -1,
                 limit: int = Query(10_000, ge=1, le=100_000)):
    """Every logged step after `after_step`, oldest first, from the database."""
    if team_scoped(session, Job, job_id, principal) is None:
        return _not_found(job_id)
    rows = session.scalars(select(Metric).where(Metric.job_id == job_id, Metric.step > after_step)
                           .order_by(Metric.step).limit(limit + 1)).all()
    return {"object": "list", "data": [metric_point(m) for m in rows[:limit]], "has_more": len(rows) > limit}


@router.get("/{job_id}/adapter", summary="Download the trained adapter (Tuneboard extension)", responses=ERRORS)
def download_adapter(job_id: str, session: SessionDep, principal: PrincipalDep, file: AdapterFile | None = None):
    """A zip of adapter_model.safetensors and adapter_config.json, or one of them with `file`."""
    job = team_scoped(session, Job, job_id, principal)
    if job is None:
        return _not_found(job_id)
    if job.adapter_key is None:
        return error_response(404, f"Job {job_id} has no adapter (status {job.status}).", param="fine_tuning_job_id",
                              code="adapter_not_available")
    directory = storage.path_for(get_settings(), job.adapter_key)
    if file:
        return FileResponse(directory / file, filename=file)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name in ADAPTER_FILES:
            archive.write(directory / name, arcname=name)
    return Response(buffer.getvalue(), media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{job_id}-adapter.zip"'})
