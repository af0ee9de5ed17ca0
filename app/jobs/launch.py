"""Launching a job: check its files and config, take the estimate at launch, and submit it.

Shared by the REST API and the launch form. Must not import torch or `workers`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app import redis_client
from app.accounts.auth import team_scoped
from app.accounts.users import Principal
from app.base_models.inventories import InventoryUnavailable, get_inventory
from app.datasets.token_stats import padded_tokens_per_example
from app.estimator.estimate import EstimateRequest, estimate
from app.estimator.job_config import JobConfig, StartFrom, held_out_examples, training_examples
from app.estimator.limits import ImpossibleSettings, check_rank_limits, memory_over_every_worker
from app.estimator.lora_settings import LoraSettings
from app.fleet import throughput, worker_registry
from app.jobs import lifecycle, model_names
from app.jobs.adapter_lookup import AdapterNotFound, find_adapter
from app.settings import Settings
from app.tables import DataFile, Job


class LaunchError(ValueError):
    """A job that cannot be launched; `param` names the request field at fault."""

    def __init__(self, param: str, message: str, *, status: int = 400, code: str = "invalid_value"):
        super().__init__(message)
        self.param, self.message, self.status, self.code = param, message, status, code


def estimate_at_launch(config: JobConfig, examples: int, has_validation: bool, settings: Settings, *,
                       queue: str | None = None, train: DataFile | None = None,
                       validation_examples: int = 0, gpu_bytes: int | None = None) -> dict | None:
    """The estimate the job is launched with, its predicted time on `queue` included; None while a non-catalog
    model's inventory is unknown. `gpu_bytes`: the memory of the GPUs it will get (what strategy auto needs)."""
    from app.estimator.matching import EstimateError

    try:
        inventory = get_inventory(config.model, settings)
    except InventoryUnavailable as exc:
        if exc.refused:  # an unknown model (or absurd config) is refused; one not computed yet is not
            raise LaunchError("model", exc.message, status=exc.status, code=exc.code) from None
        return None
    tokens, source = padded_tokens_per_example(settings, train, config.model, batch_size=config.training.batch_size,
                                               sequence_length=config.training.sequence_length,
                                               loss_on=config.training.loss_on) if train else (None, "sequence_length")
    request = EstimateRequest(**dict(config), dataset_examples=examples, has_validation_set=has_validation,
                              dataset_tokens_per_example=tokens, tokens_source=source,
                              validation_examples=validation_examples)
    try:
        result = estimate(inventory, request, gpu_bytes=gpu_bytes)
    except EstimateError as exc:
        raise LaunchError(f"lora.{exc.field}", exc.message, code="invalid_lora_config") from exc
    try:
        check_rank_limits(result.modules, config.lora.r)
    except ImpossibleSettings as exc:
        raise LaunchError(f"lora.{exc.field}", exc.message, code="rank_above_layer", status=exc.status) from exc
    throughput.predict(result.training_time, settings, queue or settings.default_queue)
    return result.model_dump(mode="json")


def _file(session: Session, principal: Principal, file_id: str | None, param: str) -> DataFile | None:
    if file_id is None:
        return None
    record = team_scoped(session, DataFile, file_id, principal)
    if record is None:
        raise LaunchError(param, f"No file with id {file_id!r}.", status=404, code="file_not_found")
    return record


def launch(session: Session, settings: Settings, principal: Principal, config: JobConfig, *, training_file: str,
           validation_file: str | None = None, suffix: str | None = None, metadata: dict[str, Any] | None = None,
           queue: str | None = None) -> Job:
    """Validate, estimate, store the job as queued and send it to its queue."""
    config = _continuing(session, principal, config)
    train = _file(session, principal, training_file, "training_file")
    validation = _file(session, principal, validation_file, "validation_file")
    split = config.training.validation_split
    if split and validation is not None:
        raise LaunchError("training.validation_split", "give a validation file or a validation split, not both")
    if split and held_out_examples(train.examples, split) < 1:
        raise LaunchError("training.validation_split",
                          f"{split}% of {train.examples} examples holds out no example; raise the split")
    _require_data_for_method(config, train, "training_file")
    if validation is not None:
        _require_data_for_method(config, validation, "validation_file")
    if config.training.eval_steps and validation is None and not split:
        raise LaunchError("training.eval_steps", "evaluation needs a validation file or a validation split")
    if queue is not None:
        _require_known_queue(queue, settings)
    if config.training.load_in_4bit:
        _require_qlora_worker(queue or settings.default_queue)
    able = _workers_with_gpus(queue or settings.default_queue, config.training.gpus)
    examples = training_examples(train.examples, split)
    has_validation = validation is not None or split > 0
    validation_examples = validation.examples if validation is not None else held_out_examples(train.examples, split)
    # `auto` is decided for the GPUs the job will get: the smallest of the workers that have enough of them.
    gpu_bytes = min((w.gpu_memory_bytes for w in able if w.gpu_memory_bytes), default=None)
    launch_estimate = estimate_at_launch(config, examples, has_validation, settings, queue=queue, train=train,
                                         validation_examples=validation_examples, gpu_bytes=gpu_bytes)
    if launch_estimate is not None:
        _require_memory_fits(launch_estimate["memory"]["total"], queue or settings.default_queue, able)
        if config.training.gpus > 1:  # the worker runs what the estimate assumed
            strategy = launch_estimate["memory"]["strategy"]
            config = config.model_copy(update={"training": config.training.model_copy(update={"strategy": strategy})})
    job = Job(model=config.model, queue=queue or settings.default_queue, config=config.model_dump(mode="json"),
              team_id=principal.team.id, created_by=principal.user.id,
              estimate=launch_estimate,
              training_file_id=train.id, validation_file_id=validation.id if validation else None,
              suffix=suffix, metadata_=metadata, parent_job_id=config.start_from.job_id if config.start_from else None)
    return lifecycle.submit(session, _redis_or_none(), job, settings)


def _continuing(session: Session, principal: Principal, config: JobConfig) -> JobConfig:
    """A model given as one of the team's fine_tuned_model (or checkpoint) ids: the run continues that adapter on its
    base, with its LoRA settings (an adapter's shape is fixed: other LoRA settings are refused, naming the field).
    `start_from` is set here only, from the team's own jobs: whatever a caller's config carried is dropped, so no
    storage key reaches a worker unless this lookup found it."""
    name = model_names.parse(config.model)
    if name is None:
        return config.model_copy(update={"start_from": None})
    try:
        found = find_adapter(session, principal.team.id, config.model, name)
    except AdapterNotFound as exc:  # another team's adapter is as unknown as one that never existed
        raise LaunchError("model", f"model: {exc}", status=404, code="model_not_found") from None
    parent = found.job
    parent_lora = JobConfig.model_validate(parent.config).lora
    if config.lora != LoraSettings() and config.lora != parent_lora:
        changed = next(name for name in LoraSettings.model_fields
                       if getattr(config.lora, name) != getattr(parent_lora, name))
        raise LaunchError(f"lora.{changed}", f"lora.{changed}: {config.model} is an adapter with "
                          f"{changed}={getattr(parent_lora, changed)!r}, and a run that continues it keeps its LoRA "
                          "settings; leave lora out", code="invalid_lora_config")
    start = StartFrom(model=config.model, job_id=parent.id, adapter_key=found.storage_key)
    return config.model_copy(update={"model": parent.model, "lora": parent_lora, "start_from": start})


def _require_data_for_method(config: JobConfig, data_file: DataFile, param: str) -> None:
    pairs = data_file.format == "preference"
    if config.method.type == "dpo" and not pairs:
        raise LaunchError(param, f"{param}: method dpo trains on preference pairs (prompt, chosen and rejected, or "
                          f"OpenAI's input, preferred_output and non_preferred_output); {data_file.filename} holds "
                          f"{data_file.format} records", code="invalid_method_data")
    if config.method.type == "supervised" and pairs:
        raise LaunchError(param, f"{param}: {data_file.filename} holds preference pairs, which train with method "
                          "dpo; supervised training needs chat, prompt/completion or text records",
                          code="invalid_method_data")


def _require_known_queue(queue: str, settings: Settings) -> None:
    client = _redis_or_none()
    served = worker_registry.queues_served(worker_registry.live_workers(client)) if client else {}
    allowed = worker_registry.allowed_queues(served, settings.default_queue, settings.extra_queue_list)
    if queue not in allowed:
        raise LaunchError("queue", f"queue: no live worker serves {queue!r} and no admin configured it "
                          f"(TUNEBOARD_QUEUES); allowed: {', '.join(allowed)}", code="unknown_queue")


def _workers_with_gpus(queue: str, gpus: int) -> list[worker_registry.WorkerInfo]:
    """The queue's live workers that can take a job on `gpus` GPUs (every one of them for a one-GPU job). A job
    needing more GPUs than any live worker has is refused; with no live worker at all it waits for one."""
    client = _redis_or_none()
    workers = worker_registry.queues_served(worker_registry.live_workers(client)).get(queue, []) if client else []
    if gpus == 1:
        return workers
    able = [w for w in workers if w.gpu_count >= gpus]
    if workers and not able:
        most = max(workers, key=lambda w: w.gpu_count)
        raise LaunchError("training.gpus", f"training.gpus: a job on {gpus} GPUs needs a worker that has {gpus}; "
                          f"the most any live worker on queue {queue!r} has is {most.gpu_count} ({most.device} on "
                          f"{most.hostname}). Lower gpus, or pick a queue with a larger host.", status=422,
                          code="exceeds_worker_gpus")
    return able


def _require_memory_fits(memory_total: int, queue: str, workers: list[worker_registry.WorkerInfo]) -> None:
    reason = memory_over_every_worker(memory_total, queue,
                                      [(w.hostname, w.device, w.training_memory_bytes) for w in workers])
    if reason:
        raise LaunchError("queue", f"queue: {reason}", status=422, code="exceeds_worker_memory")


def _require_qlora_worker(queue: str) -> None:
    client = _redis_or_none()
    workers = worker_registry.queues_served(worker_registry.live_workers(client)).get(queue, []) if client else []
    if not any(w.qlora for w in workers):
        raise LaunchError("training.load_in_4bit", f"4-bit QLoRA needs a worker with a CUDA GPU and bitsandbytes; "
                          f"no live worker on queue {queue!r} has both")


def _redis_or_none():
    try:
        client = redis_client.get_redis()
        client.ping()
        return client
    except Exception:  # the job is still stored; submit() reports the unreachable queue
        return None
