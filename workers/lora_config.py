"""The one place where Tuneboard's torch-free `LoraSettings` becomes a `peft.LoraConfig`.

`LoraSettings` already uses LoraConfig's field names and validates what PEFT would reject, so this is
a straight hand-over; keeping it in one function means the estimator and the trainer cannot drift.
"""

from __future__ import annotations

from typing import Any

from app.estimator.lora_settings import ALL_LINEAR, LoraSettings


def to_peft_config(settings: LoraSettings) -> Any:
    """Return the `peft.LoraConfig` (task CAUSAL_LM) that these settings describe."""
    from peft import LoraConfig, TaskType

    fields = settings.model_dump(exclude={"task_type"})
    if settings.is_all_linear:
        fields["target_modules"] = ALL_LINEAR  # PEFT matches this shorthand case-sensitively
    # An unknown field fails loudly here rather than being dropped: LoraSettings mirrors LoraConfig.
    return LoraConfig(task_type=TaskType.CAUSAL_LM, **fields)
