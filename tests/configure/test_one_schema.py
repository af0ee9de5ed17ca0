"""One schema for a job's settings: the same body gives the same settings and the same memory estimate through the
estimate API, the job API, the configuration form, a launch from the form, a clone and what the worker reads."""

from __future__ import annotations

import io
import re

import pytest
from sqlalchemy import select

from app.configure import form_fields
from app.configure.launch_form import job_config
from app.db import new_session
from app.estimator.job_config import JobConfig
from app.tables import Job
from app.web.templating import human_bytes
from tests.configure.test_pages import HX, form, messages_beside
from tests.jobs.helpers import chat_records, json_lines

MODEL = "HuggingFaceTB/SmolLM2-135M"
LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}


def _upload(client) -> str:
    response = client.post("/v1/files", data={"purpose": "fine-tune"},
                           files={"file": ("train.jsonl", io.BytesIO(json_lines(chat_records(20))))})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def _job(job_id: str) -> Job:
    with new_session() as session:
        return session.scalars(select(Job).where(Job.id == job_id)).one()


def _api_job(client, training: dict) -> Job:
    body = {"model": MODEL, "training_file": _upload(client), "lora": LORA, "training": training}
    response = client.post("/v1/fine_tuning/jobs", json=body)
    assert response.status_code == 200, response.text
    return _job(response.json()["id"])


def _estimate(client, training: dict, lora: dict = LORA, model: str = MODEL) -> dict:
    response = client.post("/v1/fine_tuning/estimate", json={"model": model, "lora": lora, "training": training})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("training", [
    {},  # every default
    {"batch_size": 8, "sequence_length": 512, "gradient_checkpointing": True, "precision": "fp16"},
])
def test_the_estimate_api_and_the_job_api_read_a_body_alike(client, training):
    job = _api_job(client, training)
    estimate = _estimate(client, training)
    assert job.config["training"] == JobConfig(model=MODEL, training=training).training.model_dump(mode="json")
    assert job.estimate["memory"] == estimate["memory"]
    assert job.estimate["trainable_params"] == estimate["trainable_params"]


def test_defaults_are_the_schemas_everywhere(client):
    defaults = JobConfig(model=MODEL).training
    assert not defaults.gradient_checkpointing and defaults.weights_precision == "bf16"
    values = form_fields.default_values(MODEL)
    state = form_fields.parse({**values, "target_modules": LORA["target_modules"]})
    assert state.request is not None and state.request.training == defaults
    assert _estimate(client, {})["memory"]["precision"] == "bf16"


def test_qlora_is_one_setting_through_form_api_and_clone(client):
    # A QLoRA job needs a CUDA worker to be created; the settings are compared where no worker is needed.
    shorthand, spelled_out = _estimate(client, {"precision": "4bit"}), _estimate(client, {"load_in_4bit": True})
    assert shorthand["memory"] == spelled_out["memory"] and shorthand["memory"]["precision"] == "4bit"
    config = JobConfig(model=MODEL, lora=LORA, training={"precision": "4bit"}).model_dump(mode="json")
    assert config["training"]["load_in_4bit"] is True and config["training"]["precision"] == "bf16"
    values = form_fields.values_from_job_config(config)
    assert values["precision"] == "4bit"
    state = form_fields.parse({**values, "training_file": "file-1"})
    assert job_config(state).model_dump(mode="json") == config
    refused = client.post("/v1/fine_tuning/jobs", json={"model": MODEL, "training_file": _upload(client),
                                                        "training": {"precision": "4bit"}})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "training.load_in_4bit"


def test_a_form_launch_stores_what_the_page_estimated_and_a_clone_reads_it_back(client):
    file_id = _upload(client)
    fields = form(training_file=file_id, precision="fp16", batch_size="2", sequence_length="256",
                  gradient_checkpointing="", learning_rate="0.001", max_steps="9", validation_split="10")
    panel = client.post("/estimate", data=fields, headers=HX).text
    shown_total = re.search(r'id="memory-total">([^<]+)<', panel).group(1)
    launched = client.post("/launch", data=fields, follow_redirects=False)
    assert launched.status_code == 303, launched.text
    job = _job(launched.headers["location"].removeprefix("/jobs/"))
    worker_reads = JobConfig.model_validate(job.config)
    assert worker_reads.training.batch_size == 2 and worker_reads.training.precision == "fp16"
    assert worker_reads.training.gradient_checkpointing is False and worker_reads.training.validation_split == 10
    api_estimate = _estimate(client, job.config["training"], lora=job.config["lora"], model=job.model)
    assert job.estimate["memory"] == api_estimate["memory"]
    assert shown_total == human_bytes(job.estimate["memory"]["total"])
    cloned = form_fields.parse({**form_fields.values_from_job_config(job.config), "training_file": file_id})
    assert job_config(cloned) == worker_reads


def test_a_schema_error_lands_beside_its_form_field(client):
    response = client.post("/launch", data=form(training_file="file-x", warmup_ratio="1.5", seed="-3"),
                           follow_redirects=False)
    assert response.status_code == 422
    assert "less than 1" in messages_beside(response.text, "warmup_ratio")
    assert "greater than or equal to 0" in messages_beside(response.text, "seed")
