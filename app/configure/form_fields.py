"""The configuration form: turn posted fields into the job's settings (an EstimateRequest), and back.

Owns the mapping between form field names and the one schema of a job's settings (`JobConfig`'s `lora` and
`training` objects), and the one mapping of that schema's errors to form fields, so every error is shown beside
the field it concerns. Defaults and limits are the schema's; the form's starting values are read from it.
Must not import torch or `workers`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pydantic import ValidationError

from app.estimator.estimate import EstimateRequest
from app.estimator.job_config import DpoSettings, TrainingSettings
from app.web.api_errors import validation_param

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
_CHECKBOXES = ("use_rslora", "use_dora", "gradient_checkpointing", "has_validation_set", "alpha_locked",
               "samples_at_checkpoints")
_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+))?\s*$")


@dataclass
class FormState:
    """What the form shows: raw field values, and errors keyed by form field name."""

    values: dict[str, object]
    errors: dict[str, str] = field(default_factory=dict)
    request: EstimateRequest | None = None


# The training settings the form has a field for, named as in the schema; their defaults are the schema's.
TRAINING_FIELDS = ("learning_rate", "num_epochs", "max_steps", "gradient_accumulation_steps", "warmup_ratio",
                   "lr_scheduler", "weight_decay", "seed", "eval_steps", "save_steps", "loss_on",
                   "validation_split", "sequence_length", "batch_size", "held_out_samples",
                   "sample_max_new_tokens", "gpus", "strategy")
_OPTIONAL_NUMBERS = ("max_steps", "eval_steps")
_TRAINING_DEFAULTS = TrainingSettings()
_DPO_DEFAULTS = DpoSettings()

# The launch card's fields: data files, where to run, and the training knobs beyond those the estimate needs.
LAUNCH_DEFAULTS: dict[str, object] = {
    "training_file": "", "validation_file": "", "column_mapping": "", "queue": "", "suffix": "",
}


def default_values(model: str = DEFAULT_MODEL) -> dict[str, object]:
    """The form's starting values: the Balanced pattern (r=16, alpha=16, attention + MLP)."""
    return {
        "model": model, "r": "16", "lora_alpha": "16", "alpha_locked": True, "lora_dropout": "0",
        "bias": "none", "use_rslora": False, "use_dora": False, "target_mode": "modules",
        "target_modules": [], "target_regex": "", "target_parameters": [], "modules_to_save": [], "exclude_modules": "",
        "layers_to_transform": "", "layers_pattern": "", "rank_pattern": "",
        "precision": _TRAINING_DEFAULTS.weights_precision,
        "gradient_checkpointing": _TRAINING_DEFAULTS.gradient_checkpointing,
        "samples_at_checkpoints": _TRAINING_DEFAULTS.samples_at_checkpoints,
        "dataset_examples": "", "has_validation_set": False,
        "method_type": "supervised", "beta": _text(_DPO_DEFAULTS.beta), "dpo_loss": _DPO_DEFAULTS.loss_type,
        **{key: _text(getattr(_TRAINING_DEFAULTS, key)) for key in TRAINING_FIELDS},
        **LAUNCH_DEFAULTS,
    }


def values_from_form(form) -> dict[str, object]:
    """Raw values from a submitted form (a starlette FormData or a dict of lists)."""
    values = default_values(form.get("model") or DEFAULT_MODEL)
    for key in values:
        if key in _CHECKBOXES:
            values[key] = form.get(key) in ("on", "true", "1")
        elif key in ("target_modules", "target_parameters", "modules_to_save"):
            values[key] = [v for v in form.getlist(key) if v]
        elif form.get(key) is not None:
            values[key] = str(form.get(key)).strip()
    return values


class FormError(ValueError):
    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field_name = field_name


def _layers(text: str) -> list[int] | None:
    if not text:
        return None
    layers: list[int] = []
    for part in text.split(","):
        match = _RANGE.match(part)
        if not match:
            raise FormError("layers_to_transform", f"{part.strip()!r} is not a layer number or range like 0-7")
        start, end = int(match.group(1)), int(match.group(2) or match.group(1))
        layers.extend(range(start, end + 1))
    return sorted(set(layers))


def _rank_pattern(text: str) -> dict[str, int]:
    pattern: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = line.rpartition("=")
        if not sep or not key.strip() or not value.strip().isdigit():
            raise FormError("rank_pattern", f"line {number}: write one 'pattern = rank' per line")
        pattern[key.strip()] = int(value)
    return pattern


def _names(text: str) -> list[str] | None:
    names = [n.strip() for n in text.split(",") if n.strip()]
    return names or None


def _targets(values: dict) -> list[str] | str | None:
    mode = values["target_mode"]
    if mode == "all-linear":
        return "all-linear"
    if mode == "regex":
        if not values["target_regex"]:
            raise FormError("target_regex", "enter a regular expression matched against full module names")
        return str(values["target_regex"])
    if mode == "default":
        return None
    if not values["target_modules"] and not values["target_parameters"]:
        raise FormError("target_modules", "choose at least one module to adapt")
    return list(values["target_modules"])


def _number(values: dict, key: str) -> str | None:
    return str(values[key]) if values[key] != "" else None


# Schema fields that the form shows under another field: QLoRA is a choice of the precision select.
_FIELD_FOR_PARAM = {"training.load_in_4bit": "precision", "method.type": "method_type",
                    "method.dpo.loss_type": "dpo_loss"}


def error_field(param: str, values: dict, *, fallback: str = "form") -> str:
    """The form field an error about a schema parameter belongs beside ('lora.r' -> 'r', 'training.seed' -> 'seed');
    `fallback` when the form has no such field."""
    name = _FIELD_FOR_PARAM.get(param, param.split(".")[-1] if param else fallback)
    if name == "target_modules" and values.get("target_mode") == "regex":
        # In regex mode target_modules is the regex box, not the module picture.
        return "target_regex"
    return name if name in values else fallback


def add_validation_errors(state: FormState, exc: ValidationError) -> None:
    """Each of the schema's validation errors, beside its field (the first error per field)."""
    for error in exc.errors():
        param = validation_param(tuple(error["loc"]), error["msg"])
        state.errors.setdefault(error_field(param, state.values), error["msg"].removeprefix("Value error, "))


def training_payload(values: dict) -> dict:
    """The `training` object of the job the form describes, from its raw values (the schema validates them)."""
    payload: dict = {key: values[key] for key in TRAINING_FIELDS if key not in _OPTIONAL_NUMBERS}
    payload.update({key: values[key] or None for key in _OPTIONAL_NUMBERS})
    payload.update(precision=values["precision"], gradient_checkpointing=values["gradient_checkpointing"],
                   samples_at_checkpoints=values["samples_at_checkpoints"])
    return payload


def parse(values: dict[str, object]) -> FormState:
    """Validate the form; the state carries either a request or per-field errors (all of them, not the first)."""
    state = FormState(values=values)

    def collect(parse_field, argument):
        try:
            return parse_field(argument)
        except FormError as exc:
            state.errors.setdefault(exc.field_name, str(exc))
            return None

    lora_alpha = values["r"] if values["alpha_locked"] else values["lora_alpha"]
    payload = {
        "model": values["model"],
        "lora": {
            "r": values["r"], "lora_alpha": lora_alpha, "lora_dropout": values["lora_dropout"] or 0,
            "bias": values["bias"], "use_rslora": values["use_rslora"], "use_dora": values["use_dora"],
            "target_modules": collect(_targets, values),
            "target_parameters": list(values["target_parameters"]) or None,
            "modules_to_save": list(values["modules_to_save"]) or None,
            "exclude_modules": _names(str(values["exclude_modules"])),
            "layers_to_transform": collect(_layers, str(values["layers_to_transform"])),
            "layers_pattern": values["layers_pattern"] or None,
            "rank_pattern": collect(_rank_pattern, str(values["rank_pattern"])) or {},
        },
        "training": training_payload(values),
        "method": {"type": values["method_type"], "dpo": {"beta": values["beta"], "loss_type": values["dpo_loss"]}},
        "dataset_examples": _number(values, "dataset_examples"),
        "has_validation_set": values["has_validation_set"],
        # Facts of the chosen files (launch_context.apply_dataset_facts), not form fields.
        "dataset_tokens_per_example": values.get("dataset_tokens_per_example"),
        "tokens_source": values.get("tokens_source") or None,
        "validation_examples": values.get("validation_examples") or 0,
    }
    try:
        request = EstimateRequest.model_validate(payload)
    except ValidationError as exc:
        add_validation_errors(state, exc)
        return state
    state.request = None if state.errors else request
    return state


# The inverse of parse(): a stored job's config as form field values, so "Clone" opens the configuration page
# filled in. The LoRA and training settings below round-trip exactly.


def _text(value: object) -> str:
    """A setting as a text field holds it: '' for none, 3 rather than 3.0, 0.0002 as Python writes it."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _layers_text(layers: list[int] | int | None) -> str:
    """[0, 1, 2, 3, 7] -> '0-3, 7', the form's range notation."""
    if layers is None:
        return ""
    numbers = sorted({layers} if isinstance(layers, int) else set(layers))
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _target_values(targets: list[str] | str | None) -> dict[str, object]:
    if targets is None:
        return {"target_mode": "default", "target_modules": [], "target_regex": ""}
    if isinstance(targets, str):
        if targets.lower() == "all-linear":
            return {"target_mode": "all-linear", "target_modules": [], "target_regex": ""}
        return {"target_mode": "regex", "target_modules": [], "target_regex": targets}
    return {"target_mode": "modules", "target_modules": list(targets), "target_regex": ""}


def values_from_job_config(config: dict) -> dict[str, object]:
    """Form values that describe a stored JobConfig dump (model, LoRA, training knobs); data files left empty."""
    lora, training = config.get("lora") or {}, config.get("training") or {}
    method = config.get("method") or {}
    values = default_values(str(config.get("model") or DEFAULT_MODEL))
    dpo = method.get("dpo") or {}
    values.update({"method_type": method.get("type", "supervised"), "beta": _text(dpo.get("beta", _DPO_DEFAULTS.beta)),
                   "dpo_loss": dpo.get("loss_type", _DPO_DEFAULTS.loss_type)})
    r, alpha = lora.get("r", 8), lora.get("lora_alpha", 8)
    exclude, layers_pattern = lora.get("exclude_modules"), lora.get("layers_pattern")
    values.update(_target_values(lora.get("target_modules")))
    values.update({
        "r": _text(r), "lora_alpha": _text(alpha), "alpha_locked": alpha == r,
        "lora_dropout": _text(lora.get("lora_dropout", 0.0)), "bias": lora.get("bias", "none"),
        "use_rslora": bool(lora.get("use_rslora")), "use_dora": bool(lora.get("use_dora")),
        "modules_to_save": list(lora.get("modules_to_save") or []),
        "target_parameters": list(lora.get("target_parameters") or []),
        "exclude_modules": exclude if isinstance(exclude, str) else ", ".join(exclude or []),
        "layers_to_transform": _layers_text(lora.get("layers_to_transform")),
        "layers_pattern": layers_pattern if isinstance(layers_pattern, str) else ", ".join(layers_pattern or []),
        "rank_pattern": "\n".join(f"{key} = {rank}" for key, rank in (lora.get("rank_pattern") or {}).items()),
        "precision": "4bit" if training.get("load_in_4bit") else training.get("precision", "bf16"),
        "gradient_checkpointing": bool(training.get("gradient_checkpointing")),
        "samples_at_checkpoints": bool(training.get("samples_at_checkpoints")),
    })
    values.update({key: _text(training[key]) for key in TRAINING_FIELDS if key in training})
    return values


def clone_gaps(config: dict) -> list[str]:
    """Settings of a stored config that the form cannot express, so a clone of it leaves them out."""
    lora, training = config.get("lora") or {}, config.get("training") or {}
    gaps = []
    if lora.get("alpha_pattern"):
        gaps.append("alpha_pattern")
    if isinstance(lora.get("exclude_modules"), str):
        gaps.append("exclude_modules as a regular expression (it becomes a module name)")
    if isinstance(lora.get("layers_pattern"), list) and len(lora["layers_pattern"]) > 1:
        gaps.append("several layers_pattern names")
    if training.get("logging_steps", 1) != 1:
        gaps.append(f"logging_steps = {training['logging_steps']}")
    if training.get("load_in_4bit") and training.get("precision", "bf16") != "bf16":
        gaps.append(f"4-bit compute in {training['precision']} (the form computes 4-bit in bf16)")
    return gaps
