"""The configuration page's data card: upload a file (validated, errors by line) and preview a file.

Both answer HTMX fragments. Must not import torch or `workers`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException

import app.datasets as datasets_package
from app.accounts.auth import PrincipalDep, team_scoped
from app.base_models.inventories import InventoryUnavailable
from app.configure import form_fields
from app.configure.launch_context import launch_context
from app.datasets import files
from app.datasets.files_api import parse_column_mapping
from app.datasets.format_common import DatasetInvalid
from app.datasets.previews import LossOn, get_preview
from app.datasets.upload_form import read_upload_form
from app.db import SessionDep
from app.fleet import offloaded
from app.settings import get_settings
from app.storage.artifacts import StoreUnavailable
from app.storage.keys import ArtifactMissing
from app.tables import DataFile
from app.web.templating import templates

router = APIRouter(include_in_schema=False)
# The demo data ships inside the datasets package (and so inside the wheel).
DEMO_DATASET = Path(datasets_package.__file__).parent / "demo_data" / "demo_chat.jsonl"
# The same advice as pairs: the demo's branded answer preferred over it said plainly, for DPO.
DEMO_PREFERENCES = DEMO_DATASET.with_name("demo_preferences.jsonl")


@router.post("/datasets", response_class=HTMLResponse)
async def upload_dataset(request: Request, session: SessionDep, principal: PrincipalDep):
    """Store an uploaded file and select it, or show its problems; answers the data card."""
    settings = get_settings()
    try:
        form = await read_upload_form(request, settings.max_upload_bytes, files.upload_dir(settings))
    except (files.UploadTooLarge, MultiPartException) as exc:
        # The form's other fields were not read, so the card comes back with defaults and the problem (as a 200:
        # htmx swaps in only successful answers, like the card listing a file's problems).
        message = str(exc) if isinstance(exc, files.UploadTooLarge) else f"not a valid upload: {exc.message}"
        context = {"values": form_fields.values_from_form(FormData()), "errors": {}, "result": None,
                   "upload_problems": [{"message": message}], "upload_total": 1, "upload_name": "the upload"}
        context.update(launch_context(context["values"], settings, principal))
        return templates.TemplateResponse(request, "partials/data_card.html", context)
    try:
        values = form_fields.values_from_form(form)
        upload = form.get("upload")
        context: dict = {"values": values, "errors": {}, "result": None}
        if not isinstance(upload, UploadFile) or not upload.filename:
            context["errors"]["training_file"] = "choose a file to upload"
        else:
            # Validating a large file takes seconds: off the event loop, so other requests go on.
            await run_in_threadpool(_store_page_upload, session, principal, upload, values, context)
    finally:
        await form.close()
    context.update(launch_context(values, settings, principal))
    return templates.TemplateResponse(request, "partials/data_card.html", context)


def _store_page_upload(session, principal, upload: UploadFile, values: dict, context: dict) -> None:
    try:
        mapping = parse_column_mapping(values["column_mapping"])
        upload.file.flush()
        record = files.store_upload_file(session, get_settings(), principal, filename=upload.filename,
                                         path=Path(upload.file.name), purpose="fine-tune", column_mapping=mapping)
        values["training_file"] = record.id
    except DatasetInvalid as exc:
        context.update(upload_problems=exc.problems, upload_total=exc.total, upload_name=upload.filename)
    except (ValueError, files.UploadTooLarge, StoreUnavailable) as exc:
        context.update(upload_problems=[{"message": str(exc)}], upload_total=1, upload_name=upload.filename)


@router.post("/datasets/demo", response_class=HTMLResponse)
async def use_demo_dataset(request: Request, session: SessionDep, principal: PrincipalDep):
    """Select the demo dataset shipped with Tuneboard for the chosen method (stored once); answers the data card."""
    values = form_fields.values_from_form(await request.form())
    demo = DEMO_PREFERENCES if values["method_type"] == "dpo" else DEMO_DATASET
    data = demo.read_bytes()
    record = session.scalars(select(DataFile).where(DataFile.team_id == principal.team.id,
                                                    DataFile.filename == demo.name,
                                                    DataFile.bytes == len(data)).limit(1)).first()
    if record is None:
        record = files.store_upload(session, get_settings(), principal, filename=demo.name, data=data,
                                    purpose="fine-tune", column_mapping=None)
    values["training_file"] = record.id
    context = {"values": values, "errors": {}, "result": None, **launch_context(values, get_settings(), principal)}
    return templates.TemplateResponse(request, "partials/data_card.html", context)


@router.get("/datasets/{file_id}/preview", response_class=HTMLResponse)
def preview_dataset(request: Request, file_id: str, session: SessionDep, principal: PrincipalDep, model: str,
                    sequence_length: int = 1024, loss_on: LossOn = "assistant"):
    """The preview fragment; while the worker side computes it, a fragment that polls again."""
    data_file = team_scoped(session, DataFile, file_id, principal)
    context: dict = {"file": data_file, "model": model, "sequence_length": sequence_length, "loss_on": loss_on}
    if data_file is None:
        context["failure"] = f"No file with id {file_id!r}."
        return templates.TemplateResponse(request, "partials/dataset_preview.html", context, status_code=404)
    else:
        try:
            preview = get_preview(get_settings(), data_file, model, loss_on)
            context.update(preview=preview.data, over=preview.over_length(sequence_length))
        except offloaded.Pending:
            context["pending"] = True
        except offloaded.Failed as exc:
            context["failure"] = str(exc)
        except InventoryUnavailable as exc:  # an unknown model: the same words as everywhere else
            context["failure"] = exc.message
        except ArtifactMissing:
            context["failure"] = "the file's content is no longer in the store."
    return templates.TemplateResponse(request, "partials/dataset_preview.html", context)
