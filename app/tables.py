"""Database tables: uploaded files, jobs, their metrics, events and checkpoints.

Timestamps are Unix seconds (float), as the OpenAI API reports them, and compare the same way on
SQLite and PostgreSQL. Every schema change is an Alembic migration. Must not import torch or `workers`.
"""

from __future__ import annotations

import secrets
import string
import time
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.job_status import TERMINAL_STATUSES, JobStatus

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    """An OpenAI-style object id, e.g. 'ftjob-3fQ9...' (24 random characters)."""
    return f"{prefix}-" + "".join(secrets.choice(_ALPHABET) for _ in range(24))


def now() -> float:
    """The current time in Unix seconds."""
    return time.time()


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class DataFile(Base):
    """An uploaded dataset (OpenAI's file object with purpose fine-tune)."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("file"))
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32), default="fine-tune")
    bytes: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(32))
    examples: Mapped[int] = mapped_column(Integer)
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    column_mapping: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    storage_key: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[float] = mapped_column(Float, default=now)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id"), index=True)
    created_by: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)


class Job(Base):
    """A fine-tuning job: its config, where it runs, how far it got and how it ended."""

    __tablename__ = "jobs"
    # The history walks the ix_jobs_team_* index of its filter, newest (or oldest) first, and stops after a page:
    # with `id` as the tie-break inside the index, ORDER BY created_at, id LIMIT n needs no sort.
    __table_args__ = (Index("ix_jobs_status_lease", "status", "lease_expires_at"),
                      Index("ix_jobs_created", "created_at"),
                      Index("ix_jobs_team_created", "team_id", "created_at", "id"),
                      Index("ix_jobs_team_status_created", "team_id", "status", "created_at", "id"),
                      Index("ix_jobs_team_model_created", "team_id", "model", "created_at", "id"),
                      Index("ix_jobs_team_user_created", "team_id", "created_by", "created_at", "id"))

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("ftjob"))
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id"))
    created_by: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    status: Mapped[str] = mapped_column(String(32), default=JobStatus.QUEUED)
    model: Mapped[str] = mapped_column(String(512))
    queue: Mapped[str] = mapped_column(String(128))
    config: Mapped[dict[str, Any]] = mapped_column()
    estimate: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    training_file_id: Mapped[str] = mapped_column(ForeignKey("files.id"))
    validation_file_id: Mapped[str | None] = mapped_column(ForeignKey("files.id"), nullable=True)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The job whose adapter this one continues (config.start_from); indexed so a job page lists its continuations.
    parent_job_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    # What the team writes about a run afterwards (the history searches both).
    notes: Mapped[str] = mapped_column(Text, default="", server_default="")
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list, server_default=text("'[]'"))

    created_at: Mapped[float] = mapped_column(Float, default=now)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    cancel_requested_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    task_id: Mapped[str | None] = mapped_column(String(255), nullable=True)  # the Celery task running it
    # When its task was last sent to the broker: a job queued longer than that without a message is sent again.
    sent_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    epoch: Mapped[float | None] = mapped_column(Float, nullable=True)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    trainable_params: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    all_params: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    device: Mapped[str | None] = mapped_column(String(255), nullable=True)
    final_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    adapter_key: Mapped[str | None] = mapped_column(String(512), nullable=True)

    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_traceback: Mapped[str | None] = mapped_column(Text, nullable=True)

    @property
    def is_finished(self) -> bool:
        return self.status in TERMINAL_STATUSES




class Metric(Base):
    """One logged training step: train loss and friends, and the eval loss when evaluated there."""

    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("job_id", "step", name="uq_metrics_job_step"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[float | None] = mapped_column(Float, nullable=True)
    loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    eval_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    learning_rate: Mapped[float | None] = mapped_column(Float, nullable=True)
    grad_norm: Mapped[float | None] = mapped_column(Float, nullable=True)
    tokens_per_second: Mapped[float | None] = mapped_column(Float, nullable=True)
    # DPO's own curves (TRL's rewards/*): the implicit rewards β·log(π/π_ref) of the chosen and rejected answers,
    # their margin, and how often the chosen one wins; on the held-out pairs too.
    rewards_chosen: Mapped[float | None] = mapped_column(Float, nullable=True)
    rewards_rejected: Mapped[float | None] = mapped_column(Float, nullable=True)
    reward_margin: Mapped[float | None] = mapped_column(Float, nullable=True)
    reward_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    eval_reward_margin: Mapped[float | None] = mapped_column(Float, nullable=True)
    eval_reward_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)


PREFERENCE_METRIC_FIELDS = ("rewards_chosen", "rewards_rejected", "reward_margin", "reward_accuracy",
                            "eval_reward_margin", "eval_reward_accuracy")
METRIC_FIELDS = ("epoch", "loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_second",
                 *PREFERENCE_METRIC_FIELDS)


class Event(Base):
    """Something that happened to a job, as the events list and the job page's log show it."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_job", "job_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[float] = mapped_column(Float, default=now)
    level: Mapped[str] = mapped_column(String(16), default="info")
    type: Mapped[str] = mapped_column(String(32), default="message")
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Checkpoint(Base):
    """A checkpoint written during training, kept for resuming and download."""

    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step", name="uq_checkpoints_job_step"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    storage_key: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[float] = mapped_column(Float, default=now)


class HeldOutSample(Base):
    """One held-out prompt answered at one step: by the base (once per job, repeated on later steps) and by the
    adapter as trained to that step, beside the reference answer from the data."""

    __tablename__ = "held_out_samples"
    __table_args__ = (UniqueConstraint("job_id", "step", "position", name="uq_held_out_samples_job_step_position"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)  # the prompt's place among the job's held-out prompts
    line: Mapped[int] = mapped_column(Integer)  # the example's line in its file
    prompt: Mapped[dict[str, Any]] = mapped_column()  # {"messages": [...]} or {"prompt": "..."}
    reference: Mapped[str] = mapped_column(Text)
    base_answer: Mapped[str] = mapped_column(Text)
    adapter_answer: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class Export(Base):
    """A file set built from a finished job on a worker (a merged model), stored for download; one per kind."""

    __tablename__ = "exports"
    __table_args__ = (UniqueConstraint("job_id", "kind", name="uq_exports_job_kind"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("export"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(32))  # queued, running, succeeded, failed
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # 0..1
    stage: Mapped[str] = mapped_column(String(500), default="")  # what it is doing, in words
    storage_key: Mapped[str | None] = mapped_column(String(512), nullable=True)
    files: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)  # [{"name", "bytes"}] once stored
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # Renewed while a worker builds it: past this, the worker is taken for gone and the export may be asked again.
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Conversation(Base):
    """A playground conversation saved to share with the team: the models compared, the settings, every turn's
    replies side by side (`data`, see app.inference.conversations)."""

    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_team_created", "team_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("conv"))
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    created_by: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    title: Mapped[str] = mapped_column(String(200))
    data: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[float] = mapped_column(Float, default=now)


class User(Base):
    """A person who signs in (browser) or whose tokens call the API."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("user"))
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # When the current password was set: a sign-in link made before it no longer works.
    password_set_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The last sign-in (link or password). Never signed in and no password: the account is still an unclaimed
    # invitation, the only kind an invitation may carry a sign-in link for.
    signed_in_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class Team(Base):
    """A team: it owns jobs and files; its members see them and nobody else does."""

    __tablename__ = "teams"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("team"))
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class Membership(Base):
    """A user's role in a team: admin (manages members) or member. Only an accepted invitation becomes one."""

    __tablename__ = "memberships"

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(16), default="member")
    created_at: Mapped[float] = mapped_column(Float, default=now)


class TeamInvitation(Base):
    """An invitation to a team that its user has not accepted yet: it grants nothing until then."""

    __tablename__ = "team_invitations"
    __table_args__ = (UniqueConstraint("team_id", "user_id", name="uq_team_invitations_team_user"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("inv"))
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16), default="member")
    invited_by: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class ApiToken(Base):
    """A personal API token acting for its user in one team; only its digest is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("tok"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(String(16))  # the last characters, to tell tokens apart
    created_at: Mapped[float] = mapped_column(Float, default=now)
    last_used_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class BrowserSession(Base):
    """A signed-in browser: the cookie holds the session token, the row its digest and CSRF token."""

    __tablename__ = "browser_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float, default=now)
    expires_at: Mapped[float] = mapped_column(Float)
    # Started from a one-time link: until this time the session may set a password without the current one
    # (a forgotten password, reset through an operator's link).
    password_reset_until: Mapped[float | None] = mapped_column(Float, nullable=True)


class SignInLink(Base):
    """A one-time sign-in link (first run, a new account's invitation, an operator's CLI); only its digest is
    stored. A user has at most one unused link; it stops working once the user sets a password after it."""

    __tablename__ = "sign_in_links"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    created_at: Mapped[float] = mapped_column(Float, default=now)
    expires_at: Mapped[float] = mapped_column(Float)
    used_at: Mapped[float | None] = mapped_column(Float, nullable=True)
