"""Past jobs for the history, compare and clone tests, written straight into the test's database.

A real run takes minutes; the history only reads rows, so these build finished (or queued) job rows with
the config, estimate, metrics and checkpoints a worker would have left behind.
"""

from __future__ import annotations

import itertools

from app.tables import Checkpoint, Job, Metric, new_id
from tests.jobs.helpers import chat_records, json_lines

SMOL = "HuggingFaceTB/SmolLM2-135M"
T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC
_clock = itertools.count()


def stored_file(account, name: str = "train.jsonl", count: int = 24) -> str:
    """Upload a small valid chat dataset for the account's team, as the API would; returns its id."""
    from app.accounts import users
    from app.datasets import files
    from app.db import new_session
    from app.settings import get_settings

    with new_session() as session:
        principal = users.principal_for_token(session, account.token)
        record = files.store_upload(session, get_settings(), principal, filename=name,
                                    data=json_lines(chat_records(count)), purpose="fine-tune", column_mapping=None)
        return record.id


def job_config(model: str = SMOL, lora: dict | None = None, training: dict | None = None,
               method: dict | None = None) -> dict:
    """A validated JobConfig dump, as the job row stores it."""
    from app.estimator.job_config import JobConfig

    lora = {"r": 16, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], **(lora or {})}
    return JobConfig(model=model, lora=lora, training=training or {},
                     method=method or {"type": "supervised"}).model_dump(mode="json")


def add_job(account, file_id: str, *, suffix: str | None = None, status: str = "succeeded", model: str = SMOL,
            lora: dict | None = None, training: dict | None = None, created_at: float | None = None,
            runtime: float | None = 120.0, loss: float | None = 1.25, eval_loss: float | None = None,
            notes: str = "", tags: list[str] | None = None, user_id: str | None = None,
            losses: list[float] | None = None, eval_every: int = 0, checkpoints: list[int] = (),
            validation_file_id: str | None = None, method: dict | None = None,
            margins: list[float] | None = None) -> Job:
    """A job of the account's team; a finished one has its estimate, final metrics and (optionally) a curve, and a
    DPO one (`method`) its reward margins step by step."""
    from app.db import new_session
    from app.estimator.job_config import JobConfig
    from app.jobs.launch import estimate_at_launch
    from app.settings import get_settings

    config = job_config(model, lora, training, method)
    created = created_at if created_at is not None else T0 + next(_clock)
    finished = status in ("succeeded", "failed", "cancelled")
    estimate = estimate_at_launch(JobConfig.model_validate(config), 24, validation_file_id is not None, get_settings())
    final = {"loss": loss, "eval_loss": eval_loss, "train_runtime": runtime, "tokens_per_second": 900.0} \
        if status == "succeeded" else None
    job = Job(id=new_id("ftjob"), team_id=account.team_id, created_by=user_id or account.user_id, status=status,
              model=model, queue="default", config=config, estimate=estimate, training_file_id=file_id,
              validation_file_id=validation_file_id, suffix=suffix, created_at=created,
              started_at=created + 5 if finished and runtime is not None else None,
              finished_at=created + 5 + runtime if finished and runtime is not None else None,
              trainable_params=estimate["trainable_params"] if status == "succeeded" and estimate else None,
              final_metrics=final, notes=notes, tags=list(tags or []),
              step=len(losses or []), total_steps=len(losses or []) or None,
              adapter_key=f"adapters/{created}" if status == "succeeded" else None)
    with new_session() as session:
        session.add(job)
        session.flush()
        for step, value in enumerate(losses or [], start=1):
            evaluated = eval_every and step % eval_every == 0
            margin = margins[step - 1] if margins else None
            eval_margin = margin - 0.2 if evaluated and margin is not None else None
            session.add(Metric(job_id=job.id, step=step, epoch=step / max(1, len(losses)), loss=value,
                               eval_loss=value + 0.1 if evaluated else None, learning_rate=2e-4,
                               reward_margin=margin, eval_reward_margin=eval_margin))
        for step in checkpoints:
            # As the worker records them: the losses live in the step's logged metrics, not on the checkpoint.
            session.add(Checkpoint(job_id=job.id, step=step, storage_key=f"checkpoints/{job.id}/{step}"))
        session.commit()
        return job


def bulk_jobs(team_id: str, user_id: str, file_id: str, count: int, *, start: float = T0) -> None:
    """`count` finished jobs for a team in one multi-row INSERT (the 10,000-job history)."""
    from sqlalchemy import insert

    from app.db import new_session

    statuses = ("succeeded", "failed", "cancelled", "succeeded", "running")
    config = job_config()
    rows = [{"id": new_id("ftjob"), "team_id": team_id, "created_by": user_id, "status": statuses[i % 5],
             "model": SMOL, "queue": "default", "config": config, "training_file_id": file_id,
             "suffix": f"bulk-{i}", "created_at": start + i * 60, "started_at": start + i * 60 + 1,
             "finished_at": start + i * 60 + 1 + (i % 97), "final_metrics": {"loss": 1 + (i % 89) / 100},
             "trainable_params": 1000 + i % 7, "notes": "", "tags": ["bulk"] if i % 10 == 0 else []}
            for i in range(count)]
    with new_session() as session:
        for chunk in range(0, len(rows), 2000):
            session.execute(insert(Job), rows[chunk:chunk + 2000])
        session.commit()
