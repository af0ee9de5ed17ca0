"""REST: `POST /v1/fine_tuning/estimate`, the exact LoRA estimate."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from app.base_models.api import inventory_error
from app.base_models.inventories import InventoryUnavailable, get_inventory
from app.estimator.estimate import EstimateRequest, EstimateResponse, estimate
from app.estimator.matching import EstimateError
from app.fleet import throughput
from app.settings import Settings, get_settings
from app.web.api_errors import ErrorEnvelope, error_response

router = APIRouter(prefix="/v1/fine_tuning", tags=["fine-tuning"])
SettingsDep = Annotated[Settings, Depends(get_settings)]


@router.post(
    "/estimate",
    response_model=EstimateResponse,
    summary="Exact trainable parameters, adapter size and memory for a LoRA config",
    responses={202: {"description": "Inventory being computed; retry"}, 404: {"model": ErrorEnvelope},
               422: {"model": ErrorEnvelope}},
)
def post_estimate(body: EstimateRequest, settings: SettingsDep):
    """The numbers PEFT would report for this model and config, without loading the model."""
    try:
        inventory = get_inventory(body.model, settings)
    except InventoryUnavailable as exc:
        return inventory_error(exc)
    try:
        result = estimate(inventory, body)
    except EstimateError as exc:
        return error_response(422, exc.message, param=f"lora.{exc.field}", code="invalid_lora_config")
    throughput.predict(result.training_time, settings)
    return result
