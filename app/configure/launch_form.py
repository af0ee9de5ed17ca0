"""The launch card of the configuration page: its fields become a JobConfig, or errors beside them.

Owns the mapping from form fields to `TrainingSettings`; the LoRA half comes from `app.configure.form_fields`. Must
not import torch or `workers`.
"""

from __future__ import annotations

from pydantic import ValidationError

from app.configure.form_fields import FormState
from app.estimator.job_config import JobConfig
from app.web.api_errors import validation_param

_OPTIONAL_NUMBERS = ("max_steps", "eval_steps")
_NUMBERS = ("learning_rate", "num_epochs", "gradient_accumulation_steps", "warmup_ratio", "weight_decay", "seed",
            "save_steps", "validation_split", "sequence_length", "batch_size")


def training_payload(values: dict) -> dict:
    """The `training` object of a job from the form's raw values."""
    payload: dict = {key: values[key] for key in _NUMBERS}
    payload.update({key: values[key] or None for key in _OPTIONAL_NUMBERS})
    four_bit = values["precision"] == "4bit"
    payload.update(lr_scheduler=values["lr_scheduler"], loss_on=values["loss_on"],
                   gradient_checkpointing=values["gradient_checkpointing"],
                   precision="bf16" if four_bit else values["precision"], load_in_4bit=four_bit)
    return payload


def job_config(state: FormState) -> JobConfig | None:
    """The JobConfig the form describes; on failure, errors are added to `state` beside their fields."""
    if state.request is None:
        return None
    if not state.values["training_file"]:
        state.errors["training_file"] = "choose or upload a training file"
        return None
    try:
        return JobConfig(model=state.request.model, lora=state.request.lora,
                         training=training_payload(state.values))
    except ValidationError as exc:
        for error in exc.errors():
            param = validation_param(tuple(error["loc"]), error["msg"])
            name = param.split(".")[-1] if param else "form"
            state.errors.setdefault(name if name in state.values else "launch",
                                    error["msg"].removeprefix("Value error, "))
        return None
