"""Uploaded datasets: validate on arrival, store the bytes, record the file. Must not import torch or `workers`.

An upload arrives as a file on disk (app.datasets.upload_form streams it there) and is validated line by line,
so neither its bytes nor its examples are ever all held in memory.
"""

from __future__ import annotations

import io
from pathlib import Path

from sqlalchemy.orm import Session

from app.accounts.users import Principal
from app.datasets.format_common import DatasetSummary
from app.datasets.upload_form import UploadTooLarge, too_large
from app.datasets.validator import summarise_file
from app.settings import Settings
from app.storage import artifacts
from app.tables import DataFile, new_id

__all__ = ["UploadTooLarge", "file_object", "store_upload", "store_upload_file", "upload_dir"]


def upload_dir(settings: Settings) -> Path:
    """Where uploads are written while they arrive, before they are validated and stored."""
    return settings.scratch_dir / "uploads"


def store_upload_file(session: Session, settings: Settings, principal: Principal, *, filename: str, path: Path,
                      purpose: str, column_mapping: dict[str, str] | None) -> DataFile:
    """Validate a dataset on disk line by line (raises DatasetInvalid naming line and field), then keep it."""
    size = path.stat().st_size
    if size > settings.max_upload_bytes:
        raise too_large(settings.max_upload_bytes)
    with path.open("rb") as source:
        described = summarise_file(source, filename, column_mapping=column_mapping)
    return _record(session, settings, principal, filename, size, described, purpose, column_mapping,
                   lambda key: artifacts.save_file(settings, key, path))


def store_upload(session: Session, settings: Settings, principal: Principal, *, filename: str, data: bytes,
                 purpose: str, column_mapping: dict[str, str] | None) -> DataFile:
    """Validate a dataset held in memory (a small one: the demo, a benchmark's), then keep it."""
    if len(data) > settings.max_upload_bytes:
        raise too_large(settings.max_upload_bytes)
    described = summarise_file(io.BytesIO(data), filename, column_mapping=column_mapping)
    return _record(session, settings, principal, filename, len(data), described, purpose, column_mapping,
                   lambda key: artifacts.save_bytes(settings, key, data))


def _record(session: Session, settings: Settings, principal: Principal, filename: str, size: int,
            described: DatasetSummary, purpose: str, column_mapping: dict[str, str] | None, save) -> DataFile:
    file_id = new_id("file")
    key = f"datasets/{file_id}/{_safe_filename(filename)}"
    save(key)
    record = DataFile(id=file_id, filename=filename, purpose=purpose, bytes=size, format=described.format,
                      examples=described.examples, summary=described.summary, column_mapping=column_mapping,
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
