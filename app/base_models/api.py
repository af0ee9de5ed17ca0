"""REST: each model's targetable modules (`/v1/models/{id}`); the list of models is `app.inference.models_api`."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from app.base_models.inventories import InventoryUnavailable, get_inventory
from app.estimator import catalog
from app.estimator.inventory import ADAPTABLE_KINDS, Inventory, layer_group_name
from app.settings import Settings, get_settings
from app.web.api_errors import ErrorEnvelope, error_response

router = APIRouter(prefix="/v1/models", tags=["models"])
SettingsDep = Annotated[Settings, Depends(get_settings)]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str
    name: str
    family: str
    size: str
    summary: str
    parent: str | None = Field(None, description="For a fine-tuned model: the base model its adapter applies to.")
    job_id: str | None = Field(None, description="For a fine-tuned model: the job that trained it.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TargetableModule(BaseModel):
    pattern: str = Field(..., description="Full module name with the layer index as '*'.")
    name: str = Field(..., description="Last component, as used in target_modules.")
    type: str
    kind: Literal["linear", "conv1d", "embedding"]
    in_features: int
    out_features: int
    bias: bool
    count: int = Field(..., description="How many modules of the model share this pattern.")
    params_per_rank: int = Field(..., description="LoRA parameters per unit of rank: in + out, per module.")


class ModelDetail(BaseModel):
    id: str
    object: Literal["model"] = "model"
    architecture: str
    model_type: str
    base_params: int
    config: dict
    peft_default_targets: list[str] | None
    modules: list[TargetableModule]


def inventory_error(exc: InventoryUnavailable):
    """The answer when a model has no inventory: 202 while computing, 404 unknown, 422 refused as too large."""
    type_ = "inventory_pending" if exc.computing else "invalid_request_error"
    return error_response(exc.status, exc.message, type_=type_, param="model", code=exc.code)


def catalog_card(entry: catalog.CatalogEntry) -> ModelCard:
    return ModelCard(id=entry.id, owned_by=entry.id.split("/")[0], name=entry.name, family=entry.family,
                     size=entry.size, summary=entry.summary)


def targetable_modules(inventory: Inventory) -> list[TargetableModule]:
    """Every module LoRA can adapt, grouped across layers."""
    groups: dict[str, TargetableModule] = {}
    for module in inventory.modules:
        if module.kind not in ADAPTABLE_KINDS:
            continue
        pattern = layer_group_name(module.name)
        if pattern in groups:
            groups[pattern].count += 1
            continue
        groups[pattern] = TargetableModule(
            pattern=pattern, name=module.short_name, type=module.type, kind=module.kind,
            in_features=module.in_features, out_features=module.out_features, bias=module.bias is not None,
            count=1, params_per_rank=module.in_features + module.out_features,
        )
    return list(groups.values())


@router.get(
    "/{model_id:path}",
    response_model=ModelDetail,
    summary="A model's targetable modules",
    responses={202: {"description": "Inventory being computed; retry"}, 404: {"model": ErrorEnvelope},
               422: {"model": ErrorEnvelope, "description": "The model's config declares absurd sizes"}},
)
def get_model(model_id: str, settings: SettingsDep):
    """Architecture, base parameter count and every LoRA-targetable module with type and shape."""
    try:
        inventory = get_inventory(model_id, settings)
    except InventoryUnavailable as exc:
        return inventory_error(exc)
    return ModelDetail(
        id=model_id, architecture=inventory.architecture, model_type=inventory.model_type,
        base_params=inventory.base_params, config=inventory.config,
        peft_default_targets=inventory.peft_default_targets, modules=targetable_modules(inventory),
    )
