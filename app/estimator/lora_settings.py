"""The LoRA settings object that estimates and jobs carry, with `peft.LoraConfig`'s field names.

Validates what PEFT's `LoraConfig.__post_init__` and layer constructors would reject, so errors
surface before anything runs. Pure pydantic; must not import torch, peft or `workers`.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.estimator.pattern_cost import MAX_PATTERN_CHARS, MAX_PATTERN_ENTRIES

ALL_LINEAR = "all-linear"

# Module names (not patterns) in a list; a 70B model's every linear layer, named in full, fits.
MAX_MODULE_NAMES = 4096


# A rank written 4.0 is kept as written: PEFT refuses it (a TypeError sizing the LoRA matrices) only where it reaches
# an adapted module, and `select_modules` does the same.
PositiveRank = Annotated[int | float, Field(ge=1, description="LoRA rank; PEFT requires a positive integer.")]
# PEFT checks a pattern's rank only on the modules the pattern gives it to: a 0 for a key that matches nothing
# is accepted (and select_modules refuses a 0 that reaches an adapted module, as PEFT's layer does).
PatternRank = Annotated[int | float, Field(ge=0)]


def _check_regex(value: str, field_name: str) -> None:
    if len(value) > MAX_PATTERN_CHARS:
        raise ValueError(f"{field_name} is {len(value):,} characters long; the limit is {MAX_PATTERN_CHARS}")
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"{field_name} {value!r} is not a valid regular expression: {exc}") from None


def _check_count(values, field_name: str, limit: int) -> None:
    if len(values) > limit:
        raise ValueError(f"{field_name} has {len(values):,} entries; the limit is {limit:,}")


class LoraSettings(BaseModel):
    """LoRA hyperparameters, named exactly as in `peft.LoraConfig`."""

    model_config = ConfigDict(extra="forbid")

    r: PositiveRank = 8
    lora_alpha: int | float = Field(8, description="Scaling numerator: the update is scaled by lora_alpha / r.")
    lora_dropout: float = Field(0.0, ge=0.0, le=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] | str | None = Field(
        None,
        description="Module names (exact or '.'-suffix match), a regex matched against the full name, "
        "'all-linear', or null for PEFT's default for the architecture.",
    )
    target_parameters: list[str] | None = Field(
        None,
        description="Parameter names (exact or '.'-suffix match) adapted directly, e.g. a mixture-of-experts "
        "layer's stacked expert weights ('experts.gate_up_proj') or its router ('gate.weight').",
    )
    exclude_modules: list[str] | str | None = None
    bias: Literal["none", "all", "lora_only"] = "none"
    use_rslora: bool = Field(False, description="Scale by lora_alpha / sqrt(r) instead of lora_alpha / r.")
    use_dora: bool = Field(False, description="Weight-decomposed LoRA: adds a magnitude vector per layer.")
    modules_to_save: list[str] | None = Field(None, description="Modules trained in full and saved with the adapter.")
    layers_to_transform: list[int] | int | None = None
    layers_pattern: list[str] | str | None = None
    rank_pattern: dict[str, PatternRank] = Field(default_factory=dict)
    alpha_pattern: dict[str, int | float] = Field(default_factory=dict)
    task_type: Literal["CAUSAL_LM"] | None = None

    @field_validator("target_modules", "exclude_modules")
    @classmethod
    def _names_or_regex(cls, value: list[str] | str | None, info) -> list[str] | str | None:
        if isinstance(value, str):
            if value.lower() != ALL_LINEAR or info.field_name == "exclude_modules":
                _check_regex(value, info.field_name)
        elif isinstance(value, list):
            _check_count(value, info.field_name, MAX_MODULE_NAMES)
            if any(not item.strip() for item in value):
                raise ValueError(f"{info.field_name} entries must be non-empty module names")
            if any(len(item) > MAX_PATTERN_CHARS for item in value):
                raise ValueError(f"{info.field_name} entries must be at most {MAX_PATTERN_CHARS} characters long")
        return value

    @field_validator("target_parameters")
    @classmethod
    def _parameter_names(cls, value: list[str] | None) -> list[str] | None:
        _check_count(value or [], "target_parameters", MAX_MODULE_NAMES)
        for item in value or []:
            if not item.strip():
                raise ValueError("target_parameters entries must be non-empty parameter names")
            if len(item) > MAX_PATTERN_CHARS:
                raise ValueError(f"target_parameters entries must be at most {MAX_PATTERN_CHARS} characters long")
        return value

    @field_validator("modules_to_save")
    @classmethod
    def _save_names(cls, value: list[str] | None) -> list[str] | None:
        _check_count(value or [], "modules_to_save", MAX_PATTERN_ENTRIES)
        for item in value or []:
            if not item.strip():
                raise ValueError("modules_to_save entries must be non-empty module names")
            _check_regex(item, "modules_to_save entry")
        return value

    @field_validator("rank_pattern", "alpha_pattern")
    @classmethod
    def _pattern_keys(cls, value: dict, info) -> dict:
        _check_count(value, info.field_name, MAX_PATTERN_ENTRIES)
        for key in value:
            _check_regex(key, f"{info.field_name} key")
        return value

    @field_validator("layers_pattern")
    @classmethod
    def _layer_patterns(cls, value: list[str] | str | None) -> list[str] | str | None:
        patterns = [value] if isinstance(value, str) else value or []
        _check_count(patterns, "layers_pattern", MAX_PATTERN_ENTRIES)
        for pattern in patterns:
            _check_regex(pattern, "layers_pattern")
        return value

    @field_validator("layers_to_transform")
    @classmethod
    def _layer_indexes(cls, value: list[int] | int | None) -> list[int] | int | None:
        indexes = [value] if isinstance(value, int) else value or []
        if any(i < 0 for i in indexes):
            raise ValueError("layer indexes must be >= 0")
        return value

    @model_validator(mode="after")
    def _peft_rules(self) -> LoraSettings:
        # The same combinations LoraConfig.__post_init__ refuses, with its wording.
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            raise ValueError("`layers_to_transform` cannot be used when `target_modules` is a str.")
        if isinstance(self.target_modules, str) and self.layers_pattern is not None:
            raise ValueError("`layers_pattern` cannot be used when `target_modules` is a str.")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("When `layers_pattern` is specified, `layers_to_transform` must also be specified.")
        return self

    @property
    def is_all_linear(self) -> bool:
        return isinstance(self.target_modules, str) and self.target_modules.lower() == ALL_LINEAR
