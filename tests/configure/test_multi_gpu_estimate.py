"""A job on several GPUs, as the REST estimate and the configuration form show it: per-GPU memory under the
strategy, the effective batch, and a strategy for one GPU refused beside its field."""

from __future__ import annotations

import pytest

from tests.configure.test_pages import HX, form, messages_beside

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
