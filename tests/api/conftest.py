"""Fixtures for driving the live server with the official `openai` SDK, unchanged."""

from __future__ import annotations

import io

import pytest

from tests.jobs.helpers import chat_records, json_lines

CATALOG_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # estimated from the catalog, no download needed
CONFIGURED_QUEUES = "no-worker-here,sdk-queue"


def sdk_client(base_url: str, api_key: str):
    """An OpenAI client aimed at Tuneboard; no retries, so every request in a test is seen exactly once."""
    from openai import OpenAI

    return OpenAI(base_url=base_url + "/v1", api_key=api_key, max_retries=0, timeout=60)


@pytest.fixture(autouse=True)
def configured_queues(tuneboard_env, monkeypatch):
    """The made-up queues these tests send jobs to, configured by an admin (jobs go only to known queues); autouse,
    so it is set before any live server of a test starts, whatever order the test names its fixtures in."""
    from app.settings import get_settings

    monkeypatch.setenv("TUNEBOARD_QUEUES", CONFIGURED_QUEUES)
    tuneboard_env.env["TUNEBOARD_QUEUES"] = CONFIGURED_QUEUES
    get_settings.cache_clear()


@pytest.fixture
def sdk(configured_queues, live_server, account):
    """The OpenAI SDK with the admin of team Alpha's API token."""
    client = sdk_client(live_server.url, account.token)
    yield client
    client.close()


def upload(client, records: list[dict] | None = None, name: str = "train.jsonl"):
    """files.create with a JSONL of chat records; the SDK's FileObject."""
    data = json_lines(records if records is not None else chat_records(8))
    return client.files.create(file=(name, io.BytesIO(data)), purpose="fine-tune")


def create_job(client, training_file: str, **fields):
    """jobs.create on the catalog model, queued on a queue no worker serves (so it stays queued)."""
    extra_body = {"queue": "no-worker-here", **fields.pop("extra_body", {})}
    return client.fine_tuning.jobs.create(model=CATALOG_MODEL, training_file=training_file, extra_body=extra_body,
                                          **fields)
