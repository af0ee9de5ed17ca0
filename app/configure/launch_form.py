"""The launch card of the configuration page: the form's job settings become a JobConfig, or errors beside them.

The settings themselves are parsed and validated with the rest of the form (`app.configure.form_fields`);
launching adds only what the estimate does not need: a training file. Must not import torch or `workers`.
"""

from __future__ import annotations

from app.configure.form_fields import FormState
from app.estimator.job_config import JobConfig


def job_config(state: FormState) -> JobConfig | None:
    """The JobConfig the form describes; None (with the reason beside its field) when it cannot launch."""
    if state.request is None:
        return None
    if not state.values["training_file"]:
        state.errors["training_file"] = "choose or upload a training file"
        return None
    return JobConfig(**{name: getattr(state.request, name) for name in JobConfig.model_fields})
