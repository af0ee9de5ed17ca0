"""Settings PEFT or the hardware cannot run are refused with a 422 naming the field and the limit, through the
API and the form; what is merely unwise stays a warning and launches.

SmolLM2-135M (the catalog's demo model) adapts q/k/v/o and the MLP: its k_proj and v_proj map 576 -> 192, so
192 is the highest rank attention + MLP can take. Worker memory comes from the announcements in the real
registry (Redis) that `workers/reaper.py` writes; the GPU worker here is announced the same way.
"""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from app import redis_client
from app.fleet import worker_registry
from tests.configure.test_pages import HX, form, messages_beside
from tests.jobs.helpers import chat_records, upload

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GIB = 1024**3


@pytest.fixture
def client(tuneboard_env, account):
    from app.main import create_app

    with TestClient(create_app(), headers=account.headers, follow_redirects=False) as test_client:
        yield test_client


def _job(client, file_id, **extra):
    return client.post("/v1/fine_tuning/jobs", json={"model": MODEL, "training_file": file_id, **extra})


def test_rank_above_the_adapted_layers_smaller_dimension_is_a_422_naming_the_field_and_limit(client):
    file_id = upload(client, chat_records(24))["id"]
    response = _job(client, file_id, lora={"r": 100_000, "target_modules": ALL})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == "lora.r"
    assert "above 192" in error["message"] and "k_proj" in error["message"] and "r ≤ 192" in error["message"]
    assert client.get("/v1/fine_tuning/jobs").json()["data"] == []
    assert error["code"] == "rank_above_layer"
    # The same rank on q_proj alone (576 -> 576) is still too high; 192 on every module is the limit and runs.
    q_only = _job(client, file_id, lora={"r": 577, "target_modules": ["q_proj"]})
    assert q_only.status_code == 422 and "above 576" in q_only.json()["error"]["message"]
    assert _job(client, file_id, lora={"r": 192, "target_modules": ALL}).status_code == 200
    # A rank_pattern entry is judged on its own layer and named as such.
    pattern = _job(client, file_id, lora={"r": 8, "target_modules": ALL, "rank_pattern": {"v_proj": 300}})
    assert pattern.status_code == 422 and pattern.json()["error"]["param"] == "lora.rank_pattern"


def test_the_form_refuses_an_impossible_rank_beside_the_field_and_keeps_the_unwise_as_advice(client):
    html = client.post("/estimate", data=form(r="100000"), headers=HX).text
    beside = messages_beside(html, "r")
    assert "above 192" in beside and "field-error" in beside
    assert 'id="trainable-params"' not in html, "no 30.5 B figure for a rank no layer has"
    file_id = upload(client, chat_records(24))["id"]
    launch = client.post("/launch", data=form(r="100000", training_file=file_id))
    assert launch.status_code == 422 and "above 192" in launch.text and 'id="launch-problems"' in launch.text
    # r=128 on 24 examples is unwise, not impossible: amber advice, and it launches.
    html = client.post("/estimate", data=form(r="128", training_file=file_id), headers=HX).text
    assert "advice warning" in messages_beside(html, "r") and 'id="trainable-params"' in html
    assert client.post("/launch", data=form(r="128", training_file=file_id)).status_code == 303


def _announce_gpu_worker(queue: str, memory_bytes: int, hostname: str = "gpu-small") -> None:
    worker_registry.announce(redis_client.get_redis(), {
        "hostname": hostname, "host": "elsewhere", "queues": [queue], "seen_at": time.time(),
        "device": "NVIDIA T4", "gpu_memory_bytes": memory_bytes, "qlora": False}, ttl_seconds=60)


def test_a_run_bigger_than_every_live_workers_memory_is_a_422_naming_the_queue_and_the_limit(client, tuneboard_env):
    _announce_gpu_worker(tuneboard_env.queue, 16 * GIB)
    file_id = upload(client, chat_records(24))["id"]
    huge = {"sequence_length": 4096, "batch_size": 16, "gradient_checkpointing": False}  # ≈ 73 GiB
    response = _job(client, file_id, training=huge)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == "queue" and error["code"] == "exceeds_worker_memory"
    assert "16.0 GiB" in error["message"] and "NVIDIA T4 on gpu-small" in error["message"]
    assert client.get("/v1/fine_tuning/jobs").json()["data"] == []
    # The form says the same beside the queue and at the Launch button.
    huge_form = form(training_file=file_id, sequence_length="4096", batch_size="16")
    del huge_form["gradient_checkpointing"]  # an unticked box is absent from the post
    page = client.post("/launch", data=huge_form)
    assert page.status_code == 422 and "16.0 GiB" in messages_beside(page.text, "queue")
    # A second, larger worker on the queue can take it: accepted (the small one keeps its warning).
    _announce_gpu_worker(tuneboard_env.queue, 141 * GIB, hostname="gpu-big")
    assert _job(client, file_id, training=huge).status_code == 200
    # A run that fits is accepted.
    assert _job(client, file_id).status_code == 200


def test_a_run_bigger_than_a_cpu_workers_ram_is_refused(client, tuneboard_env, start_worker):
    """A CPU worker trains in RAM: the real worker announces its RAM, and launch judges the run against it."""
    import psutil

    start_worker(TUNEBOARD_WORKER_PRELOAD="false")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        served = worker_registry.queues_served(worker_registry.live_workers(redis_client.get_redis()))
        workers = served.get(tuneboard_env.queue, [])
        if workers:
            break
        time.sleep(0.2)
    assert [w.device for w in workers] == ["cpu"] and workers[0].ram_bytes == psutil.virtual_memory().total
    file_id = upload(client, chat_records(24))["id"]
    beyond_ram = {"sequence_length": 8192, "batch_size": 64, "gradient_checkpointing": False}
    response = _job(client, file_id, training=beyond_ram)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "exceeds_worker_memory" and f"(cpu on {workers[0].hostname})" in error["message"]
    assert _job(client, file_id).status_code == 200  # a run that fits the worker's RAM is accepted
