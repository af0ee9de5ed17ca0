"""REST and page routes of a job's exports (Tuneboard extensions): ask for a merged model, follow its progress,
download it whole or file by file, and the Ollama Modelfile of the adapter.

`POST /v1/fine_tuning/jobs/{id}/exports` answers 202 when it sent a task, 200 when the export is built or being
built. The job page's block (`/jobs/{id}/exports/merged`) polls itself while the export is under way.
Must not import torch or `workers`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy.orm import Session

from app.accounts.auth import PrincipalDep, team_scoped
from app.accounts.users import Principal
from app.db import SessionDep
from app.jobs import exports
from app.jobs.ollama_modelfile import adapter_modelfile, merged_name
from app.settings import get_settings
from app.storage import artifacts
from app.storage.zip_stream import stream_zip
from app.tables import Export, Job
from app.web.api_errors import ErrorEnvelope, error_response
from app.web.templating import templates

router = APIRouter(tags=["fine-tuning"])
ERRORS = {404: {"model": ErrorEnvelope}, 409: {"model": ErrorEnvelope}, 503: {"model": ErrorEnvelope}}
Kind = Literal["merged"]
MAX_FILE_NAME = 200
_BINARY = {"schema": {"type": "string", "format": "binary"}}
EXPORT_DOWNLOAD = {"description": "A zip of the export's files, or the one file asked for with `file`",
                   "content": {"application/zip": _BINARY, "application/octet-stream": _BINARY}}
MODELFILE = {"description": "The Modelfile", "content": {"text/plain": {"schema": {"type": "string"}}}}


class ExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Kind = "merged"


def _job_or_404(session: Session, job_id: str, principal: Principal) -> Job | JSONResponse:
    job = team_scoped(session, Job, job_id, principal)
    if job is None:
        return error_response(404, f"No fine-tuning job with id {job_id!r}.", param="fine_tuning_job_id",
                              code="job_not_found")
    return job


def _refusal(exc: exports.ExportRefused | exports.QueueUnavailable) -> JSONResponse:
    """The API's answer to an export that could not be asked for: 409 without an adapter, 503 without Redis."""
    if isinstance(exc, exports.ExportRefused):
        return error_response(409, str(exc), param="fine_tuning_job_id", code="adapter_not_available")
    return error_response(503, str(exc), code="redis_unavailable")


@router.post("/v1/fine_tuning/jobs/{job_id}/exports", summary="Build an export of a job (Tuneboard extension)",
             responses=ERRORS, status_code=202)
def create_export(job_id: str, session: SessionDep, principal: PrincipalDep, body: ExportRequest | None = None):
    """Build the job's merged model on a worker (202), or return the one built or being built (200)."""
    job = _job_or_404(session, job_id, principal)
    if isinstance(job, JSONResponse):
        return job
    try:
        export, sent = exports.request(session, job, (body or ExportRequest()).kind, get_settings())
    except (exports.ExportRefused, exports.QueueUnavailable) as exc:
        return _refusal(exc)
    return JSONResponse(exports.export_object(export), status_code=202 if sent else 200)


@router.get("/v1/fine_tuning/jobs/{job_id}/exports", summary="List a job's exports (Tuneboard extension)",
            responses=ERRORS)
def list_exports(job_id: str, session: SessionDep, principal: PrincipalDep):
    """Every export asked for, with its status and progress."""
    job = _job_or_404(session, job_id, principal)
    if isinstance(job, JSONResponse):
        return job
    return {"object": "list", "data": [exports.export_object(e) for e in exports.for_job(session, job.id)],
            "has_more": False}


def _export_or_404(session: Session, job: Job, kind: str) -> Export | JSONResponse:
    export = exports.find(session, job.id, kind)
    if export is None:
        return error_response(404, f"Job {job.id} has no {kind} export; ask for one with POST "
                                   f"/v1/fine_tuning/jobs/{job.id}/exports.", param="kind", code="export_not_found")
    return export


@router.get("/v1/fine_tuning/jobs/{job_id}/exports/{kind}", summary="Retrieve an export (Tuneboard extension)",
            responses=ERRORS)
def retrieve_export(job_id: str, kind: Kind, session: SessionDep, principal: PrincipalDep):
    """The export's status, progress (0 to 1), what it is doing, and its files once built."""
    job = _job_or_404(session, job_id, principal)
    if isinstance(job, JSONResponse):
        return job
    export = _export_or_404(session, job, kind)
    return export if isinstance(export, JSONResponse) else exports.export_object(export)


@router.get("/v1/fine_tuning/jobs/{job_id}/exports/{kind}/content",
            summary="Download an export, as a zip or one file (Tuneboard extension)", response_class=Response,
            responses={**ERRORS, 200: EXPORT_DOWNLOAD})
def download_export(job_id: str, kind: Kind, session: SessionDep, principal: PrincipalDep,
                    file: Annotated[str | None, Query(max_length=MAX_FILE_NAME,
                                                      description="One of the export's files.")] = None):
    """A zip of the whole export (a folder `<name>-merged/`), or the one file asked for, streamed from the store."""
    job = _job_or_404(session, job_id, principal)
    if isinstance(job, JSONResponse):
        return job
    export = _export_or_404(session, job, kind)
    if isinstance(export, JSONResponse):
        return export
    if export.status != exports.SUCCEEDED:
        return error_response(409, f"Job {job.id}'s {kind} export is {export.status}, not built yet "
                                   f"({round(export.progress * 100)} %: {export.stage})", param="kind",
                              code="export_not_ready")
    names = [entry["name"] for entry in export.files or []]
    settings = get_settings()
    if file is not None:
        if file not in names:  # only the names the worker stored: no path reaches the store from a request
            return error_response(404, f"The {kind} export has no file {file!r}; it holds {', '.join(names)}.",
                                   param="file", code="file_not_found")
        size = next(entry["bytes"] for entry in export.files if entry["name"] == file)
        return StreamingResponse(artifacts.iter_chunks(settings, f"{export.storage_key}/{file}"),
                                 media_type="application/octet-stream",
                                 headers={"Content-Disposition": f'attachment; filename="{file}"',
                                          "Content-Length": str(size)})
    folder = merged_name(job)
    entries = [(f"{folder}/{name}", artifacts.iter_chunks(settings, f"{export.storage_key}/{name}")) for name in names]
    return StreamingResponse(stream_zip(entries), media_type="application/zip",
                             headers={"Content-Disposition": f'attachment; filename="{folder}.zip"'})


@router.get("/v1/fine_tuning/jobs/{job_id}/modelfile", summary="The Ollama Modelfile of a job's adapter "
            "(Tuneboard extension)", response_class=Response, responses={**ERRORS, 200: MODELFILE})
def ollama_modelfile(job_id: str, session: SessionDep, principal: PrincipalDep):
    """A Modelfile that applies the adapter to its base with `ollama create` (also inside the adapter zip)."""
    job = _job_or_404(session, job_id, principal)
    if isinstance(job, JSONResponse):
        return job
    if not job.adapter_key:
        return error_response(409, f"Job {job.id} has no adapter (status {job.status}).", param="fine_tuning_job_id",
                              code="adapter_not_available")
    return PlainTextResponse(adapter_modelfile(job),
                             headers={"Content-Disposition": 'attachment; filename="Modelfile"'})


def _block(request: Request, job: Job, export: Export | None, error: str | None = None) -> HTMLResponse:
    return templates.TemplateResponse(request, "partials/job_export.html",
                                      {"job": job, "export": export, "export_error": error})


@router.get("/jobs/{job_id}/exports/merged", response_class=HTMLResponse, include_in_schema=False)
def merged_export_block(request: Request, job_id: str, session: SessionDep, principal: PrincipalDep):
    """The job page's merged-model block (it polls this while the export is under way)."""
    job = team_scoped(session, Job, job_id, principal)
    if job is None:
        return templates.TemplateResponse(request, "not_found.html", {"what": f"job {job_id}"}, status_code=404)
    return _block(request, job, exports.find(session, job.id, "merged"))


@router.post("/jobs/{job_id}/exports/merged", response_class=HTMLResponse, include_in_schema=False)
def build_merged_from_page(request: Request, job_id: str, session: SessionDep, principal: PrincipalDep):
    """The job page's "Build merged model" button."""
    job = team_scoped(session, Job, job_id, principal)
    if job is None:
        return templates.TemplateResponse(request, "not_found.html", {"what": f"job {job_id}"}, status_code=404)
    try:
        export, _ = exports.request(session, job, "merged", get_settings())
    except (exports.ExportRefused, exports.QueueUnavailable) as exc:
        # 200 even so: htmx swaps only successful answers, and the reason belongs beside the button.
        return _block(request, job, exports.find(session, job.id, "merged"), error=str(exc))
    return _block(request, job, export)
