"""The one place where Tuneboard's `TrainingSettings` become `transformers.TrainingArguments`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from app.estimator.job_config import TrainingSettings

# When validation data is given without eval_steps: evaluate every 10 % of the run.
DEFAULT_EVAL_FRACTION = 0.1


def training_arguments(
    settings: TrainingSettings,
    *,
    checkpoints_dir: Path,
    mixed_precision: str | None,
    device: str,
    has_eval: bool,
    evaluate_base: bool = False,
    arguments_class: Any = None,
    **extra: Any,
) -> Any:
    """Build the TrainingArguments of a run from its settings and the worker's device; `evaluate_base`: evaluate
    once before the first step, when the fresh adapter still leaves the base model's outputs as they are (LoRA's B
    starts at zero), which gives the base's held-out loss. `arguments_class` is a TrainingArguments subclass (TRL's
    DPOConfig) that `extra` settings of its own go to."""
    from transformers import TrainingArguments

    arguments_class = arguments_class or TrainingArguments
    names = {f.name for f in dataclasses.fields(arguments_class)}
    kwargs: dict[str, Any] = {
        "output_dir": str(checkpoints_dir),
        "per_device_train_batch_size": settings.batch_size,
        "per_device_eval_batch_size": settings.batch_size,
        "gradient_accumulation_steps": settings.gradient_accumulation_steps,
        "learning_rate": settings.learning_rate,
        "weight_decay": settings.weight_decay,
        "lr_scheduler_type": settings.lr_scheduler,
        "num_train_epochs": settings.num_epochs,
        "max_steps": settings.max_steps or -1,
        "seed": settings.seed,
        "logging_strategy": "steps",
        "logging_steps": settings.logging_steps,
        "logging_first_step": True,  # a first point on the loss chart even with sparse logging
        # Report a NaN or infinite loss as it is (the default hides it behind the window's average), so a
        # diverged run is seen and stopped at once.
        "logging_nan_inf_filter": False,
        "save_strategy": "steps",
        "save_steps": settings.save_steps,
        "eval_strategy": "steps" if has_eval else "no",
        "eval_steps": (settings.eval_steps or DEFAULT_EVAL_FRACTION) if has_eval else None,
        # Only the loss is needed from evaluation; keeping logits would hold vocab x tokens per batch.
        "prediction_loss_only": True,
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": device == "cuda",
        # The dataset is a list of dicts the model takes as they are; PeftModel's signature hides the names.
        "remove_unused_columns": False,
        "label_names": ["labels"],
        "bf16": mixed_precision == "bf16",
        "fp16": mixed_precision == "fp16",
        "use_cpu": device == "cpu",
    }
    # Names moved between transformers releases: warmup_ratio became a fractional warmup_steps, and
    # gradient_checkpointing became activation_checkpointing (5.x).
    if "warmup_ratio" in names:
        kwargs["warmup_ratio"] = settings.warmup_ratio
    else:
        kwargs["warmup_steps"] = settings.warmup_ratio
    if has_eval and evaluate_base and "eval_on_start" in names:
        kwargs["eval_on_start"] = True
    # Said either way: TRL's configs turn checkpointing on by default.
    prefix = "activation" if "activation_checkpointing" in names else "gradient"
    kwargs[f"{prefix}_checkpointing"] = settings.gradient_checkpointing
    if settings.gradient_checkpointing:
        # Non-reentrant checkpointing works with frozen inputs, which LoRA's frozen embeddings are.
        kwargs[f"{prefix}_checkpointing_kwargs"] = {"use_reentrant": False}
    return arguments_class(**(kwargs | extra))
