"""REST: `/v1/files`, OpenAI-compatible upload, list, retrieve, content and delete of training data.

Uploading honours an Idempotency-Key; the list pages with OpenAI's `after` cursor and `order`. An upload is
streamed to disk under the size limit (app.datasets.upload_form) and validated line by line off the event loop.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException

from app.accounts.auth import PrincipalDep, team_scoped
from app.accounts.users import Principal
from app.datasets import files
from app.datasets.format_common import DatasetInvalid
from app.datasets.upload_form import read_upload_form
from app.db import SessionDep
from app.settings import get_settings
from app.storage import artifacts
from app.tables import DataFile, Job
from app.web import idempotency
from app.web.api_errors import ErrorEnvelope, error_response

router = APIRouter(prefix="/v1/files", tags=["files"])
ERRORS = {400: {"model": ErrorEnvelope}, 404: {"model": ErrorEnvelope}}
UPLOAD_ERRORS = {**ERRORS, 409: {"model": ErrorEnvelope}, 413: {"model": ErrorEnvelope},
                 422: {"model": ErrorEnvelope}, 503: {"model": ErrorEnvelope}}
# The route reads its multipart body itself (to enforce the size limit while reading), so FastAPI cannot
# derive this part of the schema.
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary",
                 "description": "JSONL (chat, prompt/completion, Alpaca, text), TXT or CSV"},
        "purpose": {"type": "string", "default": "fine-tune"},
        "column_mapping": {"type": "string", "description": 'CSV only, e.g. {"prompt": "question"}'},
    }}}}}}


def _not_found(file_id: str):
    return error_response(404, f"No file with id {file_id!r}.", param="file_id", code="file_not_found")


def parse_column_mapping(raw: str | None) -> dict[str, str] | None:
    """The column_mapping form field (a JSON object) as a dict; ValueError naming the problem."""
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"column_mapping is not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError("column_mapping must be a JSON object of field name to CSV column name")
    return value


def _store(session: Session, principal: Principal, filename: str, path: Path, purpose: str,
           mapping: dict[str, str] | None):
    """Validate and keep the upload; the file object, or an error response naming line and field."""
    try:
        record = files.store_upload_file(session, get_settings(), principal, filename=filename, path=path,
                                         purpose=purpose, column_mapping=mapping)
    except DatasetInvalid as exc:
        response = error_response(400, str(exc), param="file", code="invalid_file")
        body = json.loads(response.body)
        body["error"]["problems"] = [p.model_dump() for p in exc.problems]
        return Response(json.dumps(body), status_code=400, media_type="application/json")
    except files.UploadTooLarge as exc:
        return error_response(413, str(exc), param="file", code="file_too_large")
    except artifacts.StoreUnavailable as exc:
        # The server's store, not the file: 503 (retry later), naming the store and why, with nothing recorded.
        return error_response(503, f"{exc} The file was not stored; retry once the store is fixed.",
                              type_="server_error", param="file", code="artifact_store_unavailable")
    return files.file_object(record)


@router.post("", summary="Upload a dataset", responses=UPLOAD_ERRORS, openapi_extra=UPLOAD_BODY)
async def upload_file(
    request: Request,
    session: SessionDep,
    principal: PrincipalDep,
    idempotency_key: idempotency.IdempotencyKey = None,
):
    """Validate and store a training or validation file; errors name the line and the field."""
    settings = get_settings()
    try:
        form = await read_upload_form(request, settings.max_upload_bytes, files.upload_dir(settings))
    except files.UploadTooLarge as exc:
        return error_response(413, str(exc), param="file", code="file_too_large")
    except MultiPartException as exc:
        return error_response(400, f"the body is not a valid multipart upload: {exc.message}", param="file",
                              code="invalid_upload")
    try:
        # Hashing and validating a large file takes seconds: off the event loop, so other requests go on.
        return await run_in_threadpool(_upload, session, principal, form, idempotency_key)
    finally:
        await form.close()


def _upload(session: Session, principal: Principal, form: FormData, idempotency_key: str | None):
    file, purpose = form.get("file"), form.get("purpose", "fine-tune")
    if not isinstance(file, UploadFile):
        return error_response(422, "file is required: a multipart file part named 'file'", param="file",
                              code="missing_file")
    if purpose != "fine-tune":
        return error_response(400, f"purpose must be 'fine-tune', not {purpose!r}", param="purpose",
                              code="invalid_purpose")
    column_mapping = form.get("column_mapping")
    try:
        mapping = parse_column_mapping(column_mapping if isinstance(column_mapping, str) else None)
    except ValueError as exc:
        return error_response(400, str(exc), param="column_mapping", code="invalid_column_mapping")
    filename = file.filename or "upload"
    file.file.flush()
    path = Path(file.file.name)

    def replay(file_id: str):
        record = team_scoped(session, DataFile, file_id, principal)
        return files.file_object(record) if record else None

    with path.open("rb") as source:
        digest = hashlib.file_digest(source, "sha256").hexdigest()
    request = {"sha256": digest, "filename": filename, "purpose": purpose, "column_mapping": mapping}
    return idempotency.run_once(principal.team.id, "files", idempotency_key, idempotency.fingerprint(request),
                                create=lambda: _store(session, principal, filename, path, purpose, mapping),
                                replay=replay)


def _after(anchor: DataFile, newest_first: bool):
    """The files that follow `anchor` in the list's order (created_at, then id, breaks ties)."""
    created, file_id = DataFile.created_at, DataFile.id
    if newest_first:
        return (created < anchor.created_at) | ((created == anchor.created_at) & (file_id < anchor.id))
    return (created > anchor.created_at) | ((created == anchor.created_at) & (file_id > anchor.id))


@router.get("", summary="List files", responses=ERRORS)
def list_files(
    session: SessionDep,
    principal: PrincipalDep,
    purpose: Annotated[str | None, Query(description="Only files with this purpose.")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="Files per page.")] = 100,
    order: Annotated[Literal["asc", "desc"], Query(description="By creation time.")] = "desc",
    after: Annotated[str | None, Query(description="Id of the last file of the previous page.")] = None,
):
    """The team's files, newest first (oldest first with order=asc), with cursor pagination."""
    direction = "desc" if order == "desc" else "asc"
    query = select(DataFile).where(DataFile.team_id == principal.team.id) \
        .order_by(getattr(DataFile.created_at, direction)(), getattr(DataFile.id, direction)())
    if purpose:
        query = query.where(DataFile.purpose == purpose)
    if after:
        anchor = team_scoped(session, DataFile, after, principal)
        if anchor is None:
            return error_response(400, f"after: {after!r} is not an id from this list.", param="after",
                                  code="invalid_cursor")
        query = query.where(_after(anchor, newest_first=order == "desc"))
    rows = session.scalars(query.limit(limit + 1)).all()
    page = rows[:limit]
    return {"object": "list", "data": [files.file_object(r) for r in page], "has_more": len(rows) > limit,
            "first_id": page[0].id if page else None, "last_id": page[-1].id if page else None}


@router.get("/{file_id}", summary="Retrieve a file", responses=ERRORS)
def retrieve_file(file_id: str, session: SessionDep, principal: PrincipalDep):
    """One file's metadata and dataset summary."""
    record = team_scoped(session, DataFile, file_id, principal)
    return files.file_object(record) if record else _not_found(file_id)


@router.get("/{file_id}/content", summary="Download a file's content", response_class=Response,
            responses={**ERRORS, 200: {"description": "The bytes as uploaded",
                                       "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                           "format": "binary"}}}}})
def file_content(file_id: str, session: SessionDep, principal: PrincipalDep):
    """The bytes as uploaded, streamed from the store (a dataset may be hundreds of MB)."""
    record = team_scoped(session, DataFile, file_id, principal)
    if record is None:
        return _not_found(file_id)
    settings = get_settings()
    try:
        length = artifacts.size(settings, record.storage_key)
    except artifacts.ArtifactMissing:
        return error_response(404, f"File {file_id} is recorded but its content is missing from the artifact store.",
                              param="file_id", code="file_content_missing")
    return StreamingResponse(artifacts.iter_chunks(settings, record.storage_key), media_type="application/octet-stream",
                             headers={"Content-Length": str(length)})


@router.delete("/{file_id}", summary="Delete a file", responses={**ERRORS, 409: {"model": ErrorEnvelope}})
def delete_file(file_id: str, session: SessionDep, principal: PrincipalDep):
    """Delete a file that no job uses."""
    record = team_scoped(session, DataFile, file_id, principal)
    if record is None:
        return _not_found(file_id)
    used = session.scalars(select(Job.id).where((Job.training_file_id == file_id) |
                                                (Job.validation_file_id == file_id)).limit(1)).first()
    if used:
        return error_response(409, f"File {file_id} is used by job {used} and is kept with its history.",
                              param="file_id", code="file_in_use")
    session.delete(record)
    session.commit()
    # After the commit: a failed delete leaves an unreferenced object, never a record without its content.
    artifacts.delete(get_settings(), record.storage_key)
    return {"id": file_id, "object": "file", "deleted": True}
