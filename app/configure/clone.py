"""Clone: the configuration form filled in with a past job's settings, data files and queue.

The settings come back through `form_fields.values_from_job_config`; the data files are selected again when they
still belong to the team; the name (suffix) starts empty, as a clone is a new run. Must not import torch or
`workers`.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.accounts.auth import team_scoped
from app.accounts.users import Principal
from app.configure import form_fields
from app.configure.launch_context import apply_dataset_facts
from app.tables import DataFile, Job


def clone_values(session: Session, job: Job, principal: Principal) -> dict[str, object]:
    """Form values that launch a run like `job` (on the same files, when they are still there)."""
    values = form_fields.values_from_job_config(job.config)
    for key, file_id in (("training_file", job.training_file_id), ("validation_file", job.validation_file_id)):
        if file_id and team_scoped(session, DataFile, file_id, principal) is not None:
            values[key] = file_id
    values.update(queue=job.queue, suffix="")
    apply_dataset_facts(values, principal)  # the advice inputs (examples, validation) follow the files
    return values
