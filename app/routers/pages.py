"""The configuration page and its HTMX fragments. An HX-Request gets the fragment, anything else the page."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from app import forms
from app.model_inventories import InventoryUnavailable, forget_failure, get_inventory
from app.settings import Settings, get_settings
from app.templating import templates
from app.training import catalog
from app.training.block_diagram import block_diagram
from app.training.estimate import estimate
from app.training.export import to_python, to_yaml
from app.training.matching import EstimateError
from app.training.presets import presets_for

router = APIRouter(include_in_schema=False)
SettingsDep = Annotated[Settings, Depends(get_settings)]


def _is_htmx(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true"


def _context(state: forms.FormState, settings: Settings, *, model_changed: bool = False) -> dict:
    """Everything the page needs: model picture, presets, estimate or the reason there is none."""
    values = state.values
    context: dict = {"values": values, "errors": state.errors, "catalog": catalog.entries(), "result": None,
                     "diagram": None, "presets": [], "pending": None, "unavailable": None}
    try:
        inventory = get_inventory(str(values["model"]), settings)
    except InventoryUnavailable as exc:
        context["pending" if exc.computing else "unavailable"] = exc.message
        return context
    diagram = block_diagram(inventory)
    presets = presets_for(diagram)
    context.update(diagram=diagram, presets=presets, inventory=inventory)
    known = {b.target for b in diagram.boxes}
    chosen = [t for t in values["target_modules"] if t in known]
    if model_changed or (values["target_mode"] == "modules" and not values["target_modules"]):
        # A new model keeps the modules it shares with the old one, else starts from attention + MLP.
        values["target_modules"] = chosen or list(next(p for p in presets if p.key == "attention-mlp").targets)
        state = forms.parse(values)
        context["errors"] = state.errors
    if state.request is None:
        return context
    try:
        context["result"] = estimate(inventory, state.request)
        context["python"] = to_python(state.request.lora)
        context["yaml"] = to_yaml(state.request.lora)
    except EstimateError as exc:
        field = {"target_modules": "target_modules" if values["target_mode"] == "modules" else "target_regex"}
        context["errors"][field.get(exc.field, exc.field)] = exc.message
    return context


def _render(request: Request, template: str, context: dict) -> HTMLResponse:
    return templates.TemplateResponse(request, template, context)


@router.get("/", response_class=HTMLResponse)
def configure_page(request: Request, settings: SettingsDep, model: str = forms.DEFAULT_MODEL):
    """The configuration page with the Balanced pattern on the chosen model."""
    state = forms.parse(forms.default_values(model))
    context = _context(state, settings, model_changed=True)
    return _render(request, "configure_main.html" if _is_htmx(request) else "configure.html", context)


@router.post("/configure", response_class=HTMLResponse)
async def configure_post(request: Request, settings: SettingsDep):
    """Re-render the page's main area for a changed model (picture, presets and estimate together)."""
    form = await request.form()
    state = forms.parse(forms.values_from_form(form))
    if form.get("retry") == "1":
        forget_failure(str(state.values["model"]), settings)
    context = _context(state, settings, model_changed=form.get("model_changed") == "1")
    return _render(request, "configure_main.html" if _is_htmx(request) else "configure.html", context)


@router.post("/estimate", response_class=HTMLResponse)
async def estimate_fragment(request: Request, settings: SettingsDep):
    """The estimate panel for the posted form; without HTMX, the whole page with the panel filled in."""
    form = await request.form()
    context = _context(forms.parse(forms.values_from_form(form)), settings)
    if _is_htmx(request):
        # Errors and advice sit beside their fields, outside the panel: refresh them out of band.
        return _render(request, "partials/estimate.html", {**context, "oob": True})
    return _render(request, "configure.html", context)


@router.get("/models/search", response_class=HTMLResponse)
def model_search(request: Request, q: str = ""):
    """Catalog entries matching the query, as the picker's suggestion list."""
    return _render(request, "partials/model_results.html", {"results": catalog.search(q), "query": q})
