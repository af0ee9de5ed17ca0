"""Exports of a finished job built on a worker: today the merged model (base + adapter, `merge_and_unload`).

One row per job and kind (`Export`). Asking for an export commits it as queued and sends its task to the job's
queue, where the base model fits; asking again returns the one built, re-sends one still waiting (a duplicate
message finds nothing to claim), and starts over one that failed or whose worker stopped renewing its lease. Every
transition is one conditional UPDATE, as for jobs, so two workers never build the same export. Must not import
torch or `workers`.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.fleet.queue import enqueue_export
from app.job_status import JobStatus
from app.settings import Settings
from app.storage import artifacts
from app.tables import Export, Job, now

log = logging.getLogger(__name__)

KINDS = ("merged",)
QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"


class ExportRefused(Exception):
    """The export cannot be asked for (the job has no adapter); the message says why."""


class QueueUnavailable(Exception):
    """The job queue (Redis) did not take the export's task."""


def export_key(job_id: str, kind: str) -> str:
    """Where an export's files are stored."""
    return f"{artifacts.job_dir_key(job_id)}/exports/{kind}"


def find(session: Session, job_id: str, kind: str) -> Export | None:
    """The job's export of this kind, if it was ever asked for."""
    return session.scalars(select(Export).where(Export.job_id == job_id, Export.kind == kind)).first()


def for_job(session: Session, job_id: str) -> list[Export]:
    """Every export of the job."""
    return list(session.scalars(select(Export).where(Export.job_id == job_id).order_by(Export.created_at)))


def request(session: Session, job: Job, kind: str, settings: Settings) -> tuple[Export, bool]:
    """(the export, whether a task was sent for it). ExportRefused when the job has no adapter; QueueUnavailable
    when Redis refused the task (the export is then failed, saying so, and may be asked again)."""
    if job.status != JobStatus.SUCCEEDED or not job.adapter_key:
        raise ExportRefused(f"job {job.id} has no adapter to export (status {job.status}); a merged model is built "
                            "from a succeeded job")
    export = find(session, job.id, kind)
    if export is None:
        export = Export(job_id=job.id, team_id=job.team_id, kind=kind, status=QUEUED, stage="Waiting for a worker.")
        session.add(export)
        session.commit()
    elif export.status == SUCCEEDED or (export.status == RUNNING and (export.lease_expires_at or 0) > now()):
        return export, False
    elif export.status != QUEUED:  # failed, or its worker is gone: start over
        session.execute(update(Export).where(Export.id == export.id, Export.status == export.status)
                        .values(status=QUEUED, progress=0.0, stage="Waiting for a worker.", error_message=None,
                                worker=None, lease_expires_at=None, started_at=None, finished_at=None, files=None)
                        .execution_options(synchronize_session=False))
        session.commit()
    try:
        enqueue_export(export.id, job.queue)
    except Exception as exc:  # any broker error
        log.warning("export %s: the job queue (Redis) did not answer (%s)", export.id, exc)
        fail(session, export.id, None, "The job queue (Redis) did not answer; ask for the export again once it is "
                                       "back.")
        raise QueueUnavailable("The job queue (Redis) did not answer; ask for the export again once it is back.") \
            from exc
    session.refresh(export)
    return export, True


def claim(session: Session, export_id: str, worker: str, settings: Settings) -> Export | None:
    """Take a queued export (or one whose worker's lease expired) for this worker; None when there is nothing to
    take (a duplicate message, or it was built meanwhile)."""
    taken = session.execute(
        update(Export).where(Export.id == export_id, or_(
            Export.status == QUEUED, (Export.status == RUNNING) & (Export.lease_expires_at < now())))
        .values(status=RUNNING, worker=worker, started_at=now(), lease_expires_at=now() + settings.lease_seconds,
                progress=0.0, stage="Starting.")
        .execution_options(synchronize_session=False))
    session.commit()
    return session.get(Export, export_id) if taken.rowcount == 1 else None


def report(session: Session, export_id: str, worker: str, settings: Settings, progress: float, stage: str) -> bool:
    """Record progress (0..1) and what is being done, renewing the lease; False when the export is no longer this
    worker's."""
    result = session.execute(
        update(Export).where(Export.id == export_id, Export.status == RUNNING, Export.worker == worker)
        .values(progress=max(0.0, min(1.0, progress)), stage=stage[:500],
                lease_expires_at=now() + settings.lease_seconds)
        .execution_options(synchronize_session=False))
    session.commit()
    return result.rowcount == 1


def renew(session: Session, export_id: str, worker: str, settings: Settings) -> bool:
    """Extend this worker's lease on the export; False when it is no longer this worker's."""
    result = session.execute(
        update(Export).where(Export.id == export_id, Export.status == RUNNING, Export.worker == worker)
        .values(lease_expires_at=now() + settings.lease_seconds).execution_options(synchronize_session=False))
    session.commit()
    return result.rowcount == 1


def succeed(session: Session, export_id: str, worker: str, storage_key: str, files: list[dict[str, Any]]) -> bool:
    """Mark the export built, with its stored files; False when it is no longer this worker's."""
    result = session.execute(
        update(Export).where(Export.id == export_id, Export.status == RUNNING, Export.worker == worker)
        .values(status=SUCCEEDED, progress=1.0, stage="Ready to download.", storage_key=storage_key, files=files,
                finished_at=now(), lease_expires_at=None)
        .execution_options(synchronize_session=False))
    session.commit()
    return result.rowcount == 1


def fail(session: Session, export_id: str, worker: str | None, message: str) -> bool:
    """Mark the export failed with the reason; `worker` None fails it whoever holds it (the queue refused it)."""
    query = update(Export).where(Export.id == export_id, Export.status.in_((QUEUED, RUNNING)))
    if worker is not None:
        query = query.where(Export.worker == worker)
    result = session.execute(query.values(status=FAILED, stage="Failed.", error_message=message, finished_at=now(),
                                          lease_expires_at=None).execution_options(synchronize_session=False))
    session.commit()
    return result.rowcount == 1


def export_object(export: Export) -> dict:
    """An export as the API returns it."""
    total = sum(entry["bytes"] for entry in export.files or [])
    base = f"/v1/fine_tuning/jobs/{export.job_id}/exports/{export.kind}"
    return {"object": "fine_tuning.job.export", "id": export.id, "fine_tuning_job_id": export.job_id,
            "kind": export.kind, "status": export.status, "progress": round(export.progress, 4),
            "stage": export.stage, "files": export.files or [], "bytes": total if export.files else None,
            "error": {"message": export.error_message} if export.error_message else None,
            "created_at": int(export.created_at), "started_at": _seconds(export.started_at),
            "finished_at": _seconds(export.finished_at),
            "download_url": f"{base}/content" if export.status == SUCCEEDED else None}


def _seconds(value: float | None) -> int | None:
    return int(value) if value is not None else None
