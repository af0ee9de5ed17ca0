"""A job on several GPUs, as the REST estimate and the configuration form show it: per-GPU memory under the
strategy, the effective batch, and a strategy for one GPU refused beside its field."""

from __future__ import annotations

import re
import time

import pytest

from app import redis_client
from app.fleet import worker_registry
from app.web.templating import duration
from tests.configure.test_pages import HX, LLAMA_MODULES, form, messages_beside

pytestmark = pytest.mark.one_database  # the estimator and the form: no database question here

LLAMA_8B = "meta-llama/Llama-3.1-8B"
LLAMA_70B = "meta-llama/Llama-3.1-70B"
LORA = {"r": 16, "lora_alpha": 16, "target_modules": "all-linear"}


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"])
def test_a_strategy_for_one_gpu_is_refused_naming_the_field(client, strategy):
    response = client.post("/v1/fine_tuning/estimate", json={
        "model": LLAMA_8B, "lora": LORA, "training": {"strategy": strategy}})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == "training.strategy" and "set gpus to 2 or more" in error["message"]


def test_the_rest_api_estimate_is_per_gpu(client):
    body = client.post("/v1/fine_tuning/estimate", json={
        "model": LLAMA_70B, "lora": LORA,
        "training": {"gpus": 8, "sequence_length": 4096, "batch_size": 1, "gradient_checkpointing": True}}).json()
    memory = body["memory"]
    assert (memory["gpus"], memory["strategy"], memory["effective_batch_size"]) == (8, "fsdp", 8)
    assert memory["fits"] == {"24": False, "48": True, "80": True}


def test_the_form_shows_memory_per_gpu_and_the_effective_batch(client):
    html = client.post("/estimate", headers=HX, data=form(model=LLAMA_70B, gpus="8", sequence_length="4096",
                                                          batch_size="1", gradient_accumulation_steps="4")).text
    assert "per GPU, 8 GPUs, FSDP" in html
    assert "FSDP gathered blocks (2)" in html
    assert "Effective batch: 32 examples a step (1 × 4 accumulation × 8 GPUs)" in html
    single = client.post("/estimate", headers=HX, data=form(model=LLAMA_70B, sequence_length="4096",
                                                            batch_size="1")).text
    assert "per GPU" not in single and "gathered blocks" not in single and "Effective batch" not in single


def test_the_form_says_a_sharding_strategy_needs_more_than_one_gpu_beside_the_field(client):
    html = client.post("/estimate", headers=HX, data=form(strategy="fsdp")).text
    assert "set gpus to 2 or more" in messages_beside(html, "strategy")


def _announce(queue: str, hostname: str, gpu_count: int) -> None:
    worker_registry.announce(redis_client.get_redis(), {
        "hostname": hostname, "host": "elsewhere", "queues": [queue], "seen_at": time.time(),
        "device": "NVIDIA H100 80GB HBM3", "gpu_memory_bytes": 80 * 1024**3, "gpu_count": gpu_count}, ttl_seconds=60)


def test_the_queue_field_says_when_no_live_worker_has_the_gpus_and_times_count_only_workers_that_do(
        client, tuneboard_env):
    queue = tuneboard_env.queue
    eight_gpus = form(model=LLAMA_70B, gpus="8", sequence_length="4096", batch_size="1", queue=queue,
                      dataset_examples="2000")
    _announce(queue, "onegpu", 1)
    html = client.post("/estimate", headers=HX, data=eight_gpus).text
    assert (f"No live worker on queue '{queue}' has 8 GPUs: the most is 1 (NVIDIA H100 80GB HBM3 on onegpu), so the "
            "launch would be refused") in messages_beside(html, "queue")
    assert f'<tr data-queue="{queue}"' not in html, "a one-GPU worker would hand the job back: no time for it"

    _announce(queue, "eightgpu", 8)
    html = client.post("/estimate", headers=HX, data=eight_gpus).text
    assert "No live worker" not in messages_beside(html, "queue")
    row = re.search(rf'<tr data-queue="{queue}">.*?class="predicted">≈ ([^<]+)<', html, re.S)
    assert row, "the eight-GPU worker's queue gets a time"
    # The page and the REST estimate predict the same time for the same run (each GPU does an eighth of it).
    run = {"sequence_length": 4096, "batch_size": 1, "gradient_checkpointing": True}
    body = {"model": LLAMA_70B, "lora": {"r": 16, "lora_alpha": 16, "lora_dropout": 0, "target_modules": LLAMA_MODULES},
            "dataset_examples": 2000}
    on_eight = client.post("/v1/fine_tuning/estimate", json={**body, "training": {**run, "gpus": 8}}).json()
    api = next(q for q in on_eight["training_time"]["queues"] if q["queue"] == queue)
    assert row.group(1).strip() == duration(api["seconds"])
    on_one = client.post("/v1/fine_tuning/estimate", json={**body, "training": run}).json()
    alone = next(q for q in on_one["training_time"]["queues"] if q["queue"] == queue)
    assert api["seconds"] < alone["seconds"] / 4, (api["seconds"], alone["seconds"])
