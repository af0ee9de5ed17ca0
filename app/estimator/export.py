"""Render LoRA settings as a `peft.LoraConfig(...)` call or as YAML, for copying out of the page.

Pure stdlib + yaml; must not import torch or `workers`.
"""

from __future__ import annotations

import yaml

from app.estimator.lora_settings import LoraSettings


def _changed_fields(settings: LoraSettings) -> dict:
    # Always show the core knobs; show the rest only when they differ from PEFT's defaults.
    core = {"r", "lora_alpha", "lora_dropout", "target_modules", "bias"}
    defaults = LoraSettings()
    data = settings.model_dump()
    return {
        key: value
        for key, value in data.items()
        if key in core or value != getattr(defaults, key)
    }


def to_python(settings: LoraSettings) -> str:
    """A `LoraConfig(...)` expression that reproduces these settings in PEFT."""
    fields = _changed_fields(settings)
    fields["task_type"] = settings.task_type or "CAUSAL_LM"
    lines = ["from peft import LoraConfig", "", "config = LoraConfig("]
    lines += [f"    {key}={value!r}," for key, value in fields.items()]
    lines.append(")")
    return "\n".join(lines)


def to_yaml(settings: LoraSettings) -> str:
    """The settings as the YAML `lora:` block a job file carries."""
    return yaml.safe_dump({"lora": _changed_fields(settings)}, sort_keys=False)
