"""Uploaded datasets: validate on arrival, store the bytes, record the file. Must not import torch or `workers`."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app import storage
from app.accounts import Principal
from app.datasets import parse_dataset
from app.models import DataFile, new_id
from app.settings import Settings


class UploadTooLarge(ValueError):
    """The upload exceeds the configured size limit."""


def store_upload(session: Session, settings: Settings, principal: Principal, *, filename: str, data: bytes,
                 purpose: str, column_mapping: dict[str, str] | None) -> DataFile:
    """Validate a dataset (raises DatasetInvalid naming line and field), then keep it."""
    if len(data) > settings.max_upload_bytes:
        raise UploadTooLarge(f"the file is {len(data):,} bytes; the limit is {settings.max_upload_bytes:,} bytes")
    parsed = parse_dataset(data, filename, column_mapping=column_mapping)
    file_id = new_id("file")
    key = f"datasets/{file_id}/{_safe_filename(filename)}"
    storage.save_bytes(settings, key, data)
    record = DataFile(id=file_id, filename=filename, purpose=purpose, bytes=len(data), format=parsed.format,
                      examples=len(parsed.examples), summary=parsed.summary(), column_mapping=column_mapping,
                      storage_key=key, team_id=principal.team.id, created_by=principal.user.id)
    session.add(record)
    session.commit()
    return record


def _safe_filename(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in name.rsplit("/", 1)[-1])
    return cleaned.lstrip(".") or "upload"


def file_object(record: DataFile) -> dict:
    """The OpenAI file object, with Tuneboard's dataset summary beside it."""
    return {"id": record.id, "object": "file", "bytes": record.bytes, "created_at": int(record.created_at),
            "filename": record.filename, "purpose": record.purpose, "status": "processed",
            "status_details": None, "expires_at": None,
            "format": record.format, "examples": record.examples, "summary": record.summary}
