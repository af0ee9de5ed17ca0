"""A job's training and held-out examples, read from the artifact store: what the worker trains and evaluates on,
and what the playground offers as held-out prompts, chosen by one function so the two never disagree.

Held out: the job's validation file, else its validation split of the training file (the same seed, the same
examples), else none. Must not import torch or `workers`.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.datasets.format_common import Example
from app.datasets.validator import load_examples, split_validation
from app.settings import Settings
from app.storage import artifacts
from app.tables import DataFile, Job


def file_examples(settings: Settings, session: Session, file_id: str) -> list[Example]:
    """Every example of a stored dataset, parsed as its upload was."""
    data_file = session.get(DataFile, file_id)
    return list(load_examples(artifacts.local_file(settings, data_file.storage_key),
                              column_mapping=data_file.column_mapping).examples)


def job_examples(settings: Settings, session: Session, job: Job, *, validation_split: float,
                 seed: int) -> tuple[list[Example], list[Example] | None]:
    """(training examples, held-out examples or None) of the job."""
    train = file_examples(settings, session, job.training_file_id)
    if job.validation_file_id:
        return train, file_examples(settings, session, job.validation_file_id)
    if validation_split > 0:
        return split_validation(train, validation_split, seed)
    return train, None
