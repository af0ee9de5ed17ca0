"""What the configuration page shows about launching: the team's files, the chosen data's facts, the
run's length, and the queues live workers serve. Must not import torch or `workers`.
"""

from __future__ import annotations

import logging

import redis
from sqlalchemy import select

from app import redis_client
from app.accounts.auth import team_scoped
from app.accounts.users import Principal
from app.datasets.token_stats import padded_tokens_per_example
from app.db import new_session
from app.estimator.job_config import held_out_examples, training_examples
from app.estimator.run_plan import CHARACTERS_PER_TOKEN, plan_run
from app.fleet import worker_registry
from app.settings import Settings, get_settings
from app.tables import DataFile

log = logging.getLogger(__name__)
RECENT_FILES = 100


def apply_dataset_facts(values: dict, principal: Principal) -> DataFile | None:
    """Fill the advice inputs (examples, validation) from the chosen files; returns the training file."""
    if not values.get("training_file"):
        return None
    with new_session() as session:
        train = team_scoped(session, DataFile, str(values["training_file"]), principal)
        validation = team_scoped(session, DataFile, str(values["validation_file"]), principal) \
            if values.get("validation_file") else None
        has_validation_file = validation is not None
    if train is None:
        return None
    split = _float(values.get("validation_split"))
    values["dataset_examples"] = str(max(1, training_examples(train.examples, split)))
    values["has_validation_set"] = has_validation_file or split > 0
    values["validation_examples"] = validation.examples if has_validation_file and validation is not None \
        else held_out_examples(train.examples, split)
    try:
        tokens, source = padded_tokens_per_example(
            get_settings(), train, str(values["model"]), batch_size=int(values["batch_size"]),
            sequence_length=int(values["sequence_length"]), loss_on=str(values.get("loss_on") or "assistant"))
    except ValueError:
        return train  # the batch size or sequence length at fault shows its own error
    values["dataset_tokens_per_example"], values["tokens_source"] = tokens, source
    return train


def _float(text) -> float:
    try:
        return float(text or 0)
    except ValueError:
        return 0.0


def launch_context(values: dict, settings: Settings, principal: Principal) -> dict:
    """The team's files to pick from, the run plan for the chosen data, and live queues."""
    with new_session() as session:
        train = team_scoped(session, DataFile, str(values["training_file"]), principal) \
            if values.get("training_file") else None
        files = session.scalars(select(DataFile).where(DataFile.team_id == principal.team.id)
                                .order_by(DataFile.created_at.desc()).limit(RECENT_FILES)).all()
    queues = _queues(settings)
    context: dict = {"files": files, "train_file": train, "plan": None, "queues": queues,
                     "qlora_available": any(w.qlora for q in queues for w in q["workers"])}
    if train is not None:
        try:
            examples = int(values["dataset_examples"] or train.examples)
            chars = (train.summary or {}).get("mean_characters") or 0
            context["plan"] = plan_run(
                examples=examples, batch_size=int(values["batch_size"]),
                gradient_accumulation_steps=int(values["gradient_accumulation_steps"]),
                num_epochs=float(values["num_epochs"]),
                max_steps=int(values["max_steps"]) if values["max_steps"] else None,
                tokens_per_example=min(chars / CHARACTERS_PER_TOKEN, float(values["sequence_length"])),
                tokens_measured=False,
            )
        except (ValueError, ZeroDivisionError):
            pass  # the fields at fault show their own errors
    return context


def _queues(settings: Settings) -> list[dict]:
    try:
        served = worker_registry.queues_served(worker_registry.live_workers(redis_client.get_redis()))
    except redis.RedisError:
        log.warning("cannot list live workers", exc_info=True)
        served = {}
    names = worker_registry.allowed_queues(served, settings.default_queue, settings.extra_queue_list)
    return [{"name": name, "workers": served.get(name, [])} for name in names]
