"""The playground (/playground): a base model and up to four of the team's adapters answering side by side.

The page lists what the team may compare (base models, then each base's adapters: succeeded jobs and their
checkpoints); the browser sends each turn to `/v1/chat/completions` once per model and streams the replies into
their columns (static/js/playground.js). Held-out rows of a job's validation data can be picked as the turn, with
the reference answer shown beside the replies. A conversation is saved for the team and opened again by its
link. Must not import torch or `workers`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.accounts.auth import PrincipalDep, team_scoped
from app.accounts.users import Principal
from app.datasets.format_common import DatasetInvalid, Example
from app.datasets.held_out import held_out_turn
from app.datasets.job_examples import job_examples
from app.db import SessionDep, new_session
from app.estimator import catalog
from app.estimator.job_config import JobConfig
from app.inference import conversations
from app.job_status import JobStatus
from app.jobs import model_names
from app.settings import get_settings
from app.tables import Checkpoint, Conversation, DataFile, Job
from app.web.api_errors import error_response, validation_param
from app.web.templating import templates

router = APIRouter(include_in_schema=False)
JOBS_LISTED = 200
HELD_OUT_ROWS = 50
# Reading a held-out row parses its dataset in the web process: past this size the playground says so instead.
HELD_OUT_MAX_FILE_BYTES = 64 * 1024**2


def _choices(session: Session, principal: Principal) -> dict:
    """Base models and, per base, the adapters the team may compare (newest first)."""
    jobs = list(session.scalars(select(Job).where(Job.team_id == principal.team.id)
                                .order_by(Job.created_at.desc()).limit(JOBS_LISTED)))
    checkpoints: dict[str, list[int]] = {}
    for job_id, step in session.execute(select(Checkpoint.job_id, Checkpoint.step)
                                        .where(Checkpoint.job_id.in_([job.id for job in jobs]))
                                        .order_by(Checkpoint.step.desc())):
        checkpoints.setdefault(job_id, []).append(step)
    adapters: dict[str, list[dict]] = {}
    for job in jobs:
        name = job.suffix or job.id
        held_out = bool(job.validation_file_id or (job.config or {}).get("training", {}).get("validation_split"))
        listed = adapters.setdefault(job.model, [])
        if job.status == JobStatus.SUCCEEDED and job.adapter_key:
            listed.append({"id": model_names.fine_tuned_model(job), "label": f"{name} (final)", "job_id": job.id,
                           "held_out": held_out})
        listed.extend({"id": model_names.checkpoint_model(job, step), "label": f"{name} · step {step}",
                       "job_id": job.id, "held_out": held_out} for step in checkpoints.get(job.id, []))
    bases = [base for base, found in adapters.items() if found]
    bases += [entry.id for entry in catalog.entries() if entry.id not in bases]
    return {"bases": bases, "adapters": {base: found for base, found in adapters.items() if found}}


def _page(request: Request, session: Session, principal: Principal, saved: Conversation | None = None,
          chosen: list[str] | None = None) -> HTMLResponse:
    choices = _choices(session, principal)
    start = {"conversation": saved.data if saved else None, "conversation_id": saved.id if saved else None,
             "chosen": chosen or []}
    context = {"choices": choices, "start": start, "recent": conversations.recent(session, principal),
               "saved": saved, "max_new_tokens": get_settings().inference_max_new_tokens}
    return templates.TemplateResponse(request, "playground.html", context)


@router.get("/playground", response_class=HTMLResponse)
def playground_page(request: Request, session: SessionDep, principal: PrincipalDep,
                    models: Annotated[str, Query(max_length=4096)] = ""):
    """The playground, optionally with models chosen (`?models=a,b`: a job page's "Try it" link)."""
    chosen = [model for model in models.split(",") if model][: conversations.MAX_MODELS]
    return _page(request, session, principal, chosen=chosen)


@router.get("/playground/c/{conversation_id}", response_class=HTMLResponse)
def saved_conversation_page(conversation_id: str, request: Request, session: SessionDep, principal: PrincipalDep):
    """A conversation saved by someone in the team, as it was, ready to go on."""
    saved = team_scoped(session, Conversation, conversation_id, principal)
    if saved is None:
        return templates.TemplateResponse(request, "not_found.html", {"what": f"conversation {conversation_id}"},
                                          status_code=404)
    return _page(request, session, principal, saved=saved)


@router.post("/playground/conversations")
async def save_conversation(request: Request, principal: PrincipalDep):
    """Save the conversation in the body for the team; answers its id and link."""
    try:
        body = conversations.ConversationBody.model_validate_json(await request.body())
    except ValidationError as exc:
        first = exc.errors()[0]
        param = validation_param(tuple(first.get("loc", ())), first.get("msg", ""))
        return error_response(422, f"{param}: {first.get('msg', 'invalid value')}" if param else first["msg"],
                              param=param or None)

    def store() -> Conversation:
        with new_session() as session:
            return conversations.save(session, principal, body)

    saved = await run_in_threadpool(store)
    return JSONResponse({"id": saved.id, "url": f"/playground/c/{saved.id}"}, status_code=201)


def _row(example: Example) -> dict | None:
    """A held-out example as a playground turn: the conversation before its last answer, and that answer."""
    turn = held_out_turn(example)
    if turn is None:
        return None
    if turn.messages is None:
        return {"system": "", "context": [], "user": turn.prompt, "reference": turn.reference}
    messages = list(turn.messages)
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    context = [m for m in messages[:-1] if m["role"] != "system"]
    return {"system": system, "context": context, "user": messages[-1]["content"], "reference": turn.reference}


@router.get("/playground/held-out")
def held_out_rows(session: SessionDep, principal: PrincipalDep, job_id: Annotated[str, Query(max_length=64)]):
    """Up to HELD_OUT_ROWS held-out examples of a job of the team, as turns with their reference answers."""
    job = team_scoped(session, Job, job_id, principal)
    if job is None:
        return error_response(404, f"There is no job {job_id} in your team.", param="job_id", code="job_not_found")
    files = [session.get(DataFile, file_id) for file_id in (job.training_file_id, job.validation_file_id) if file_id]
    if any(data_file.bytes > HELD_OUT_MAX_FILE_BYTES for data_file in files):
        return error_response(422, f"the job's dataset is larger than {HELD_OUT_MAX_FILE_BYTES // 1024**2} MiB; "
                                   "pick its rows in a script instead", param="job_id", code="dataset_too_large")
    config = JobConfig.model_validate(job.config)
    try:
        _, held_out = job_examples(get_settings(), session, job, validation_split=config.training.validation_split,
                                   seed=config.training.seed)
    except (DatasetInvalid, ValueError) as exc:
        return error_response(422, f"the job's held-out data cannot be read: {exc}", param="job_id")
    rows = [row for example in held_out or [] if (row := _row(example)) is not None][:HELD_OUT_ROWS]
    return {"job_id": job.id, "rows": rows,
            "source": "validation file" if job.validation_file_id else
                      f"{config.training.validation_split:g}% held out of the training file" if held_out else None}
