"""The configuration page and its HTMX fragments. An HX-Request gets the fragment, anything else the page."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from app.accounts.auth import PrincipalDep, team_scoped
from app.accounts.users import Principal
from app.base_models.inventories import InventoryUnavailable, cached_inventory, forget_failure, get_inventory
from app.configure import form_fields
from app.configure.clone import clone_values
from app.configure.launch_context import apply_dataset_facts, launch_context
from app.configure.launch_form import job_config
from app.db import SessionDep, new_session
from app.estimator import catalog
from app.estimator.block_diagram import block_diagram
from app.estimator.estimate import estimate
from app.estimator.export import to_python, to_yaml
from app.estimator.limits import check_rank_limits
from app.estimator.matching import EstimateError
from app.estimator.parallelism import STRATEGY_BUFFERS, STRATEGY_LABELS
from app.estimator.presets import presets_for
from app.fleet import throughput
from app.fleet.queue_fit import queue_memory_advice
from app.jobs.launch import LaunchError, launch
from app.settings import Settings, get_settings
from app.tables import Job
from app.web.templating import templates

router = APIRouter(include_in_schema=False)
templates.env.globals.update(STRATEGY_LABELS=STRATEGY_LABELS, STRATEGY_BUFFERS=STRATEGY_BUFFERS)
SettingsDep = Annotated[Settings, Depends(get_settings)]


def _is_htmx(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true"


def _targets_for_new_model(old_targets: list[str], old_parameters: list[str], drawn_for: str | None, presets: list,
                           known: set[str], settings: Settings) -> tuple[list[str], str | None]:
    """What a newly chosen model starts with, and the preset that is: the preset the old selection was (q+v, full
    attention, attention + MLP: GPT-2 and Phi-3 name those projections differently), else the modules both share,
    else attention + MLP."""
    old_inventory = cached_inventory(drawn_for, settings) if drawn_for and old_targets else None
    if old_inventory is not None:
        for old in presets_for(block_diagram(old_inventory)):
            if old.mode == "modules" and old.targets and set(old.targets) == set(old_targets) \
                    and set(old.parameters) == set(old_parameters):
                return list(next(p for p in presets if p.key == old.key).targets), old.key
    shared = [t for t in old_targets if t in known]
    if shared:
        return shared, None
    return list(next(p for p in presets if p.key == "attention-mlp").targets), "attention-mlp"


def _parameters_for_new_model(old_parameters: list[str], preset_key: str | None, diagram, presets: list) -> list[str]:
    """The expert weights a newly drawn model starts with: those of the preset its modules come from (on a
    mixture-of-experts model "attention + MLP" means the experts), else the ones it shares with the old selection."""
    preset = next((p for p in presets if p.key == preset_key), None)
    if preset is not None:
        return list(preset.parameters)
    offered = {b.target for s in diagram.sections for b in (*s.inputs, *([s.output] if s.output else []))
               if b.field == "target_parameters"}
    return [p for p in old_parameters if p in offered]


def _context(state: form_fields.FormState, settings: Settings, principal: Principal, *, model_changed: bool = False,
             drawn_for: str | None = None) -> dict:
    """Everything the page needs: model picture, presets, estimate or the reason there is none.

    `drawn_for` is the model the posted target modules were picked on (the picture the browser showed).
    """
    values = state.values
    context: dict = {"values": values, "errors": state.errors, "catalog": catalog.entries(), "result": None,
                     "diagram": None, "presets": [], "pending": None, "unavailable": None, "drawn_for": drawn_for,
                     "suggestions": [],
                     **launch_context(values, settings, principal)}
    try:
        inventory = get_inventory(str(values["model"]), settings)
    except InventoryUnavailable as exc:
        context["pending" if exc.computing else "unavailable"] = exc.message
        context["suggestions"] = exc.suggestions
        previous = cached_inventory(drawn_for, settings) if drawn_for and not exc.computing else None
        if previous is not None:
            # Keep the form the user filled in (drawn on the last model that worked) beside the message.
            diagram = block_diagram(previous)
            context.update(diagram=diagram, presets=presets_for(diagram), inventory=previous)
        return context
    diagram = block_diagram(inventory)
    presets = presets_for(diagram)
    context.update(diagram=diagram, presets=presets, inventory=inventory, drawn_for=values["model"])
    known = {b.target for b in diagram.boxes}
    if model_changed or (values["target_mode"] == "modules" and not values["target_modules"]
                         and not values["target_parameters"]):
        values["target_modules"], preset_key = _targets_for_new_model(
            list(values["target_modules"]), list(values["target_parameters"]), drawn_for, presets, known, settings
        )
        values["target_parameters"] = _parameters_for_new_model(list(values["target_parameters"]), preset_key,
                                                                diagram, presets)
        state = form_fields.parse(values)
        context["errors"] = state.errors
    if state.request is None:
        return context
    try:
        result = estimate(inventory, state.request)
        check_rank_limits(result.modules, state.request.lora.r)  # PEFT accepts it; no layer has that rank
        context["result"] = result
        _add_queue_advice(context, values, settings)
        _add_queue_times(context, values)
        context["python"] = to_python(state.request.lora)
        context["yaml"] = to_yaml(state.request.lora)
    except EstimateError as exc:
        context["errors"][form_fields.error_field(f"lora.{exc.field}", values)] = exc.message
    return context


def _add_queue_advice(context: dict, values: dict, settings: Settings) -> None:
    chosen = str(values.get("queue") or settings.default_queue)
    workers = next((q["workers"] for q in context["queues"] if q["name"] == chosen), [])
    knobs = context["result"].memory
    advice = queue_memory_advice(chosen, workers, knobs.total, precision=knobs.precision,
                                 gradient_checkpointing=bool(values.get("gradient_checkpointing")),
                                 gpus_per_job=knobs.gpus)
    if advice is not None:
        context["result"].warnings.append(advice)


def _add_queue_times(context: dict, values: dict) -> None:
    time = context["result"].training_time
    if time is None:
        return
    with new_session() as session:
        time.queues = throughput.run_times(session, context["queues"], time)
    chosen = str(values.get("queue") or "")
    context["chosen_time"] = next((t for t in time.queues if t.queue == chosen), None) or \
        next(iter(time.queues), None)


def _render(request: Request, template: str, context: dict, status_code: int = 200) -> HTMLResponse:
    return templates.TemplateResponse(request, template, context, status_code=status_code)


def _parse(form, principal: Principal) -> form_fields.FormState:
    values = form_fields.values_from_form(form)
    apply_dataset_facts(values, principal)
    return form_fields.parse(values)


@router.get("/", response_class=HTMLResponse)
def configure_page(request: Request, settings: SettingsDep, session: SessionDep, principal: PrincipalDep,
                   model: str = form_fields.DEFAULT_MODEL, clone: str | None = None):
    """The configuration page with the Balanced pattern on the chosen model, or a past job's settings (clone)."""
    if clone:
        return _clone_page(request, settings, session, principal, clone)
    state = form_fields.parse(form_fields.default_values(model))
    context = _context(state, settings, principal, model_changed=True)
    return _render(request, "configure_main.html" if _is_htmx(request) else "configure.html", context)


def _clone_page(request: Request, settings: Settings, session, principal: Principal, job_id: str) -> HTMLResponse:
    job = team_scoped(session, Job, job_id, principal)
    if job is None:
        return _render(request, "not_found.html", {"what": f"job {job_id}"}, status_code=404)
    values = clone_values(session, job, principal)
    # The targets were picked on this model: keep them rather than mapping them as for a newly chosen model.
    context = _context(form_fields.parse(values), settings, principal, drawn_for=str(values["model"]))
    context.update(cloned_from=job, clone_gaps=form_fields.clone_gaps(job.config))
    return _render(request, "configure_main.html" if _is_htmx(request) else "configure.html", context)


@router.post("/configure", response_class=HTMLResponse)
async def configure_post(request: Request, settings: SettingsDep, principal: PrincipalDep):
    """Re-render the page's main area for a changed model (picture, presets and estimate together)."""
    form = await request.form()
    state = _parse(form, principal)
    if form.get("retry") == "1":
        forget_failure(str(state.values["model"]), settings)
    # Off the event loop: a model new to this host is looked up on the hub (a few seconds at most).
    context = await run_in_threadpool(_context, state, settings, principal,
                                      model_changed=form.get("model_changed") == "1",
                                      drawn_for=form.get("drawn_for") or None)
    return _render(request, "configure_main.html" if _is_htmx(request) else "configure.html", context)


@router.post("/estimate", response_class=HTMLResponse)
async def estimate_fragment(request: Request, settings: SettingsDep, principal: PrincipalDep):
    """The estimate panel for the posted form; without HTMX, the whole page with the panel filled in."""
    form = await request.form()
    context = await run_in_threadpool(_context, _parse(form, principal), settings, principal,
                                      drawn_for=form.get("drawn_for") or None)
    if _is_htmx(request):
        # Errors and advice sit beside their fields, outside the panel: refresh them out of band.
        return _render(request, "partials/estimate.html", {**context, "oob": True})
    return _render(request, "configure.html", context)


@router.post("/launch", response_class=HTMLResponse)
async def launch_job(request: Request, settings: SettingsDep, session: SessionDep, principal: PrincipalDep):
    """Launch the configured job and open its page; a refusal re-renders the form with every value kept, the
    reasons beside their fields and listed at the Launch button."""
    form = await request.form()
    state = _parse(form, principal)
    config = job_config(state)
    if config is not None:
        values = state.values
        try:
            job = launch(session, settings, principal, config, training_file=str(values["training_file"]),
                         validation_file=str(values["validation_file"]) or None, suffix=str(values["suffix"]) or None,
                         queue=str(values["queue"]) or None)
            if _is_htmx(request):  # htmx follows HX-Redirect with a full page load of the job
                return HTMLResponse("", headers={"HX-Redirect": f"/jobs/{job.id}"})
            return RedirectResponse(f"/jobs/{job.id}", status_code=303)
        except LaunchError as exc:
            state.errors[form_fields.error_field(exc.param, values, fallback="launch")] = exc.message
    context = _context(state, settings, principal, drawn_for=form.get("drawn_for") or None)
    context["launch_failed"] = True
    if _is_htmx(request):
        # 200 so htmx swaps it in (it drops 4xx bodies); the address bar keeps the configuration page.
        return _render(request, "configure_main.html", context)
    return _render(request, "configure.html", context, status_code=422)


@router.get("/launch", include_in_schema=False)
def launch_reloaded() -> RedirectResponse:
    """A reload of the no-script launch answer (the URL /launch) goes back to the configuration page."""
    return RedirectResponse("/", status_code=303)


@router.get("/models/search", response_class=HTMLResponse)
def model_search(request: Request, q: str = "", model: str = ""):
    """Catalog entries matching the query (`q`, or the picker's own `model` field), as the suggestion list."""
    query = q or model
    return _render(request, "partials/model_results.html", {"results": catalog.search(query), "query": query})
