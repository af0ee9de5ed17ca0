"""The playground's own endpoints in-process, on SQLite and PostgreSQL: a job's held-out rows (its validation file,
or its split, the examples training held out) with their reference answers, conversations saved within their
bounds and opened by the team only, and the page's list of what may be compared.
"""

from __future__ import annotations

import io
import json

import pytest
from fastapi.testclient import TestClient

from app.datasets.validator import load_examples, split_validation
from tests.jobs.helpers import chat_records, json_lines, stored_job
from tests.service_fixtures import make_account


@pytest.fixture
def client(tuneboard_env, account):
    from app.main import create_app

    with TestClient(create_app(), headers=account.headers) as test_client:
        yield test_client


def _upload(client, records, name="train.jsonl") -> str:
    answer = client.post("/v1/files", files={"file": (name, io.BytesIO(json_lines(records)))},
                         data={"purpose": "fine-tune"})
    assert answer.status_code == 200, answer.text
    return answer.json()["id"]


def _job_on(account, training_file: str, training: dict | None = None, **fields) -> str:
    from app.db import new_session
    from app.estimator.job_config import JobConfig
    from app.tables import DataFile, Job

    config = JobConfig.model_validate({"model": "org/base", "training": training or {}}).model_dump(mode="json")
    with new_session() as session:
        job = Job(training_file_id=training_file, team_id=account.team_id, config=config,
                  **{"model": "org/base", "queue": "q", "status": "succeeded", "adapter_key": "jobs/x/a",
                     "suffix": "s", **fields})
        session.add(job)
        session.commit()
        assert session.get(DataFile, training_file) is not None
        return job.id


def test_held_out_rows_are_the_examples_training_held_out_with_their_answers(client, account, tuneboard_env):
    records = chat_records(40)
    train = _upload(client, records)
    job_id = _job_on(account, train, training={"validation_split": 20, "seed": 7})
    answer = client.get("/playground/held-out", params={"job_id": job_id})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["source"] == "20% held out of the training file" and len(body["rows"]) == 8
    # The same examples the worker evaluates on: split_validation with the job's seed.
    path = tuneboard_env.data_dir / "sample.jsonl"
    path.write_bytes(json_lines(records))
    _, held = split_validation(load_examples(path).examples, 20, 7)
    assert [row["user"] for row in body["rows"]] == [example.messages[-2]["content"] for example in held]
    assert [row["reference"] for row in body["rows"]] == [example.messages[-1]["content"] for example in held]

    validation = _upload(client, chat_records(3), name="valid.jsonl")
    with_file = _job_on(account, train, validation_file_id=validation)
    rows = client.get("/playground/held-out", params={"job_id": with_file}).json()
    assert rows["source"] == "validation file" and len(rows["rows"]) == 3
    no_held_out = client.get("/playground/held-out", params={"job_id": _job_on(account, train)}).json()
    assert no_held_out["rows"] == [] and no_held_out["source"] is None


def test_conversations_are_saved_within_bounds_and_opened_by_the_team_only(client, account):
    conversation = {"title": "first try", "base_model": "org/base", "models": ["org/base", "org/base:ft-s"],
                    "system": "Be brief.", "settings": {"max_tokens": 64, "temperature": 0, "top_p": 1, "stop": []},
                    "turns": [{"user": "hi", "reference": "hello",
                               "replies": [{"model": "org/base", "text": "hey", "tokens_per_second": 12.5},
                                           {"model": "org/base:ft-s", "text": "hello", "finish_reason": "stop"}]}]}
    saved = client.post("/playground/conversations", content=json.dumps(conversation))
    assert saved.status_code == 201, saved.text
    link = saved.json()["url"]
    page = client.get(link)
    assert page.status_code == 200 and "first try · Playground" in page.text
    assert "tokens_per_second" in page.text and "hello" in page.text  # the saved turns ride in the page

    too_many = {**conversation, "models": [f"m{i}" for i in range(6)]}
    refused = client.post("/playground/conversations", content=json.dumps(too_many))
    assert refused.status_code == 422 and refused.json()["error"]["param"] == "models"
    huge = {**conversation, "turns": [{**conversation["turns"][0], "user": "x" * 20_001}]}
    refused = client.post("/playground/conversations", content=json.dumps(huge))
    assert refused.status_code == 422 and refused.json()["error"]["param"] == "turns.0.user"

    from app.db import new_session
    from app.main import create_app

    beta = make_account(new_session, "carol@example.com", "Beta")
    with TestClient(create_app(), headers=beta.headers) as other:
        assert other.get(link).status_code == 404
        assert other.get("/playground/held-out", params={"job_id": stored_job(account.team_id)}).status_code == 404
        assert "first try" not in other.get("/playground").text


def test_the_page_offers_each_base_with_its_adapters_and_checkpoints(client, account):
    from app.db import new_session
    from app.tables import Checkpoint

    train = _upload(client, chat_records(8))
    job_id = _job_on(account, train)
    with new_session() as session:
        session.add(Checkpoint(job_id=job_id, step=5, storage_key=f"jobs/{job_id}/attempt-1/checkpoint-5"))
        session.commit()
    page = client.get("/playground", params={"models": "org/base:ft-s"})
    assert page.status_code == 200
    marker = "data-choices='"
    choices = json.loads(page.text.split(marker, 1)[1].split("'", 1)[0].replace("&#34;", '"'))
    assert choices["bases"][0] == "org/base" and "HuggingFaceTB/SmolLM2-135M-Instruct" in choices["bases"]
    assert [item["id"] for item in choices["adapters"]["org/base"]] == ["org/base:ft-s", "org/base:ft-s:ckpt-step-5"]
