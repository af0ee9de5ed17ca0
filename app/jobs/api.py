"""REST: `/v1/fine_tuning/jobs`, OpenAI-compatible create, list, retrieve, cancel, events and checkpoints,
plus Tuneboard's per-job metrics (downsampled on request) and adapter download.

Lists follow OpenAI's cursor pagination: newest first, `after` is the id of the last object of the
previous page, `has_more` says whether another page follows. Creating honours an Idempotency-Key.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from sqlalchemy import Text, cast, or_, select
from sqlalchemy.orm import Session

from app import redis_client
from app.accounts.auth import PrincipalDep, team_scoped
from app.accounts.users import Principal
from app.db import SessionDep
from app.job_status import JobStatus
from app.jobs import adapter_card, lifecycle, metric_downsampling
from app.jobs.api_shapes import checkpoint_object, checkpoint_steps_metrics, event_object, job_object, metric_point
from app.jobs.create_request import CreateJobRequest
from app.jobs.launch import LaunchError, launch
from app.jobs.ollama_modelfile import adapter_modelfile
from app.settings import get_settings
from app.storage import artifacts
from app.storage.zip_stream import stream_zip
from app.tables import METRIC_FIELDS, Checkpoint, Event, Job, Metric
from app.web import idempotency
from app.web.api_errors import ErrorEnvelope, error_response, validation_param

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])
ERRORS = {400: {"model": ErrorEnvelope}, 404: {"model": ErrorEnvelope}, 422: {"model": ErrorEnvelope}}
CREATE_ERRORS = {**ERRORS, 409: {"model": ErrorEnvelope}}
_METADATA_PARAM = re.compile(r"^metadata\[(.*)\]$")
METADATA_FILTER_DOC = {
    "name": "metadata", "in": "query", "required": False, "style": "deepObject", "explode": True,
    "schema": {"type": "object", "additionalProperties": {"type": "string"}},
    "description": "Only jobs whose metadata has these values, sent as `metadata[k]=v` (repeat for several "
                   "keys; all must match). `metadata[k]=` matches an empty value; the literal `metadata=null` "
                   "selects jobs created without metadata.",
}
MAX_POINTS_DOC = (
    "Downsample to at most this many points per series, in one answer (has_more is false): the steps are cut "
    "into max_points/4 equal ranges and each range keeps the first, last, lowest and highest point of every "
    "series (loss, eval_loss, learning_rate, grad_norm, tokens_per_second), so spikes, dips and both ends "
    "survive. On a returned step a series' value is null where that series' point was not kept. Without "
    "max_points every step is returned, `limit` per page."
)
# Steps are stored as 32-bit integers (PostgreSQL INTEGER); a larger after_step is refused, not overflowed.
MAX_STEP = 2**31 - 1
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
AdapterFile = Literal["adapter_model.safetensors", "adapter_config.json"]
_BINARY = {"schema": {"type": "string", "format": "binary"}}
ADAPTER_DOWNLOAD = {"description": "A zip of the adapter's files, or the one file asked for with `file`",
                    "content": {"application/zip": _BINARY, "application/octet-stream": _BINARY}}


def _not_found(job_id: str):
    return error_response(404, f"No fine-tuning job with id {job_id!r}.", param="fine_tuning_job_id",
                          code="job_not_found")


def _invalid_cursor(after: str):
    return error_response(400, f"after: {after!r} is not an id from this list.", param="after",
                          code="invalid_cursor")


def _page(items: list, limit: int, render) -> dict:
    page = items[:limit]
    return {"object": "list", "data": [render(i) for i in page], "has_more": len(items) > limit}


def _json(body: dict) -> JSONResponse:
    """A body that is plain JSON already (str, numbers, None, lists, dicts), sent as it is.

    FastAPI would otherwise pass it through `jsonable_encoder`, which visits every value in Python: about
    70 % of the time of a 10,000-point metrics page and half of a 20-job list (bench/history.py).
    """
    return JSONResponse(body)


def _create(session: Session, principal: Principal, body: CreateJobRequest):
    """Validate the request and launch the job; the job object, or an error response."""
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


@router.post("", summary="Create a fine-tuning job", responses=CREATE_ERRORS)
def create_job(body: CreateJobRequest, session: SessionDep, principal: PrincipalDep,
               idempotency_key: idempotency.IdempotencyKey = None):
    """Validate the files and settings, record the estimate at launch, and queue the job."""
    def replay(job_id: str):
        job = team_scoped(session, Job, job_id, principal)
        return job_object(job) if job else None

    return idempotency.run_once(principal.team.id, "fine_tuning.jobs", idempotency_key,
                                idempotency.fingerprint(body.model_dump(mode="json")),
                                create=lambda: _create(session, principal, body), replay=replay)


def metadata_conditions(request: Request) -> list:
    """SQL conditions for the `metadata[k]=v` query parameters, or for the literal `metadata=null`."""
    if request.query_params.get("metadata") == "null":
        # A job launched without metadata holds SQL NULL or JSON null, depending on how it was written.
        return [or_(Job.metadata_.is_(None), cast(Job.metadata_, Text) == "null")]
    filters = [(match.group(1), value) for name, value in request.query_params.multi_items()
               if (match := _METADATA_PARAM.match(name))]
    if any('"' in key or "\\" in key for key, _ in filters):
        # SQLite's JSON paths cannot quote these characters; refuse rather than match wrongly.
        raise ValueError("metadata filter keys cannot contain '\"' or '\\'.")
    return [Job.metadata_[key].as_string() == value for key, value in filters]


@router.get("", summary="List fine-tuning jobs", responses=ERRORS, openapi_extra={"parameters": [METADATA_FILTER_DOC]})
def list_jobs(
    request: Request,
    session: SessionDep,
    principal: PrincipalDep,
    after: Annotated[str | None, Query(description="Id of the last job of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Jobs per page.")] = 20,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status (Tuneboard extension).")] = None,
):
    """The team's jobs, newest first, filtered by status and metadata; `after` is the last id of the previous page."""
    try:
        conditions = metadata_conditions(request)
    except ValueError as exc:
        return error_response(400, str(exc), param="metadata", code="invalid_value")
    if status:
        conditions.append(Job.status == status)
    if after:
        anchor = team_scoped(session, Job, after, principal)
        if anchor is None:
            return _invalid_cursor(after)
        conditions.append((Job.created_at < anchor.created_at) |
                          ((Job.created_at == anchor.created_at) & (Job.id < anchor.id)))
    query = select(Job).where(Job.team_id == principal.team.id, *conditions) \
        .order_by(Job.created_at.desc(), Job.id.desc())
    return _json(_page(session.scalars(query.limit(limit + 1)).all(), limit, job_object))


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
    return job_object(lifecycle.cancel(session, redis_client.get_redis(), job, get_settings()))


# Ids are 64-bit integers: at most 18 ASCII digits, so a cursor never overflows the database's integer.
_NUMERIC_ID = re.compile(r"[0-9]{1,18}")


def _numeric_cursor(after: str, prefix: str) -> int | None:
    # str.isdigit() also accepts '²' and other digits int() refuses; only ASCII digits make an id.
    number = after.removeprefix(prefix)
    return int(number) if _NUMERIC_ID.fullmatch(number) else None


@router.get("/{job_id}/events", summary="List a job's events", responses=ERRORS)
def list_events(
    job_id: str,
    session: SessionDep,
    principal: PrincipalDep,
    after: Annotated[str | None, Query(description="Id of the last event of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Events per page.")] = 20,
):
    """Events newest first, as OpenAI lists them; `after` is an event id."""
    if team_scoped(session, Job, job_id, principal) is None:
        return _not_found(job_id)
    query = select(Event).where(Event.job_id == job_id).order_by(Event.id.desc())
    if after:
        anchor = _numeric_cursor(after, "ftevent-")
        if anchor is None:
            return _invalid_cursor(after)
        query = query.where(Event.id < anchor)
    return _page(session.scalars(query.limit(limit + 1)).all(), limit, event_object)


@router.get("/{job_id}/checkpoints", summary="List a job's checkpoints", responses=ERRORS)
def list_checkpoints(
    job_id: str,
    session: SessionDep,
    principal: PrincipalDep,
    after: Annotated[str | None, Query(description="Id of the last checkpoint of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Checkpoints per page.")] = 10,
):
    """Checkpoints newest (highest step) first, with the training metrics logged at their step."""
    job = team_scoped(session, Job, job_id, principal)
    if job is None:
        return _not_found(job_id)
    query = select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step.desc())
    if after:
        anchor_id = _numeric_cursor(after, "ftckpt-")
        anchor = session.get(Checkpoint, anchor_id) if anchor_id is not None else None
        if anchor is None or anchor.job_id != job_id:
            return _invalid_cursor(after)
        query = query.where(Checkpoint.step < anchor.step)
    rows = session.scalars(query.limit(limit + 1)).all()
    logged = checkpoint_steps_metrics(session, job_id, [c.step for c in rows[:limit]])
    return _page(rows, limit, lambda c: checkpoint_object(c, job, logged.get(c.step)))


@router.get("/{job_id}/metrics", summary="A job's logged steps (Tuneboard extension)", responses=ERRORS)
def list_metrics(
    job_id: str,
    session: SessionDep,
    principal: PrincipalDep,
    after_step: Annotated[int, Query(ge=-1, le=MAX_STEP,
                                     description="Only steps after this one (to resume a chart).")] = -1,
    limit: Annotated[int, Query(ge=1, le=100_000, description="Steps per page when not downsampling.")] = 10_000,
    max_points: Annotated[int | None, Query(ge=metric_downsampling.POINTS_PER_BUCKET, le=100_000,
                                            description=MAX_POINTS_DOC)] = None,
):
    """Every logged step after `after_step`, oldest first, from the database; downsampled with max_points."""
    if team_scoped(session, Job, job_id, principal) is None:
        return _not_found(job_id)
    if max_points is not None:
        return _json(_downsampled_metrics(session, job_id, after_step, max_points))
    rows = session.execute(_metric_rows(job_id, after_step).limit(limit + 1)).all()
    return _json({"object": "list", "data": [metric_point(m) for m in rows[:limit]], "has_more": len(rows) > limit})


def _metric_rows(job_id: str, after_step: int):
    # Plain rows, not Metric objects: building 10,000 ORM instances costs more than the query.
    columns = [Metric.step, *(getattr(Metric, name) for name in METRIC_FIELDS)]
    return select(*columns).where(Metric.job_id == job_id, Metric.step > after_step).order_by(Metric.step)


def _downsampled_metrics(session: Session, job_id: str, after_step: int, max_points: int) -> dict:
    """The metrics list for max_points: every step when they fit, else the M4 selection."""
    steps = metric_downsampling.step_range(session, job_id, after_step)
    if steps.count <= max_points:
        rows = session.execute(_metric_rows(job_id, after_step)).all()
        return {"object": "list", "data": [metric_point(m) for m in rows], "has_more": False,
                "downsampled": False, "total_points": steps.count}
    return {"object": "list", "data": metric_downsampling.downsample(session, job_id, after_step, steps, max_points),
            "has_more": False, "downsampled": True, "total_points": steps.count,
            "bucket_steps": metric_downsampling.bucket_width(steps, max_points)}


@router.get("/{job_id}/adapter", summary="Download the trained adapter (Tuneboard extension)",
            response_class=Response, responses={**ERRORS, 200: ADAPTER_DOWNLOAD})
def download_adapter(job_id: str, session: SessionDep, principal: PrincipalDep, file: AdapterFile | None = None):
    """A zip of adapter_model.safetensors, adapter_config.json, a model card and an Ollama Modelfile, or one of the
    first two with `file`."""
    job = team_scoped(session, Job, job_id, principal)
    if job is None:
        return _not_found(job_id)
    if job.adapter_key is None:
        return error_response(404, f"Job {job_id} has no adapter (status {job.status}).", param="fine_tuning_job_id",
                              code="adapter_not_available")
    settings = get_settings()
    names = [file] if file else list(ADAPTER_FILES)
    try:
        sizes = {name: artifacts.size(settings, f"{job.adapter_key}/{name}") for name in names}
    except artifacts.ArtifactMissing as exc:
        return error_response(404, f"Job {job_id}'s adapter is recorded but {exc.key} is missing from the artifact "
                              "store.", param="fine_tuning_job_id", code="adapter_missing")
    # Streamed from the store: a large model's adapter can be gigabytes.
    if file:
        return StreamingResponse(artifacts.iter_chunks(settings, f"{job.adapter_key}/{file}"),
                                 media_type="application/octet-stream",
                                 headers={"Content-Disposition": f'attachment; filename="{file}"',
                                          "Content-Length": str(sizes[file])})
    adapter_config = json.loads(artifacts.read_bytes(settings, f"{job.adapter_key}/adapter_config.json"))
    card = adapter_card.model_card(session, job, adapter_config).encode()
    entries = [*((name, artifacts.iter_chunks(settings, f"{job.adapter_key}/{name}")) for name in names),
               ("README.md", [card]), ("Modelfile", [adapter_modelfile(job).encode()])]
    # Named after the run, so a user's downloads of several runs tell themselves apart.
    filename = f"{adapter_card.adapter_name(job)}.zip"
    return StreamingResponse(stream_zip(entries), media_type="application/zip",
                             headers={"Content-Disposition": f'attachment; filename="{filename}"'})
