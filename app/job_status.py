"""A fine-tuning job's statuses, as the database stores them and the REST API names them (OpenAI's words).

The one list of them: the state machine (`app.jobs.lifecycle`), the history filters, the API schema, the metrics,
the workers and the terminal client read it here. Pure stdlib; must not import torch or `workers`.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
