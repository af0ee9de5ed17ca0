"""The model ids a job's results answer to: `fine_tuned_model` (`<base>:ft-<suffix or job id>`) and its checkpoints'
(`...:ckpt-step-<n>`), made and read here only.

A suffix names the team's newest succeeded job with it (as a tag names its latest build); the job id form always
names exactly one job. Must not import torch or `workers`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.tables import Job

FINE_TUNED = ":ft-"
CHECKPOINT = ":ckpt-step-"
_STEP = re.compile(r"[0-9]{1,10}")


def fine_tuned_model(job: Job) -> str:
    """The model id of the job's final adapter."""
    return f"{job.model}{FINE_TUNED}{job.suffix or job.id}"


def checkpoint_model(job: Job, step: int) -> str:
    """The model id of the job's checkpoint at `step`."""
    return f"{fine_tuned_model(job)}{CHECKPOINT}{step}"


@dataclass(frozen=True, slots=True)
class FineTunedName:
    base_model: str
    job_ref: str  # the job's suffix or id
    step: int | None  # a checkpoint's step, or None for the final adapter


def parse(model_id: str) -> FineTunedName | None:
    """The parts of a fine-tuned model id, or None for any other id (a base model's)."""
    base, found, rest = model_id.rpartition(FINE_TUNED)
    if not found or not base or not rest:
        return None
    job_ref, has_step, step = rest.partition(CHECKPOINT)
    if not job_ref or (has_step and not _STEP.fullmatch(step)):
        return None
    return FineTunedName(base, job_ref, int(step) if has_step else None)
