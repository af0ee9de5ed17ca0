"""Models outside the catalog: the inventory is computed once in a `workers.inventory` subprocess, then exact."""

from __future__ import annotations

import json

import pytest

from app.base_models.inventories import worker_stack_installed
from tests.configure.conftest import wait_until
from tests.configure.lora_math import peft_line
from tests.conftest import require

pytestmark = pytest.mark.one_database  # model folders and inventories: no database question here

ESTIMATE = "/v1/fine_tuning/estimate"


@pytest.fixture(autouse=True)
def _worker_stack():
    require(worker_stack_installed(), "torch, transformers and peft (the worker extra)")


def peft_counts(model_dir, **lora) -> tuple[int, int]:
    """(trainable, all) as PEFT itself reports them for the model in `model_dir`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return get_peft_model(model, LoraConfig(**lora)).get_nb_trainable_parameters()


def settled(client, body: dict):
    """The estimate once the inventory is no longer being computed."""
    def answer():
        response = client.post(ESTIMATE, json=body)
        return response if response.status_code != 202 else None

    return wait_until(answer)


def test_local_directory_is_computing_first_then_exact(client, tiny_llama_dir):
    model = str(tiny_llama_dir)
    page = client.get("/", params={"model": model})
    assert 'id="inventory-pending"' in page.text and "Computing the module inventory" in page.text
    assert 'id="peft-line"' not in page.text

    lora = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj", "down_proj"]}
    first = client.post(ESTIMATE, json={"model": model, "lora": lora})
    assert first.status_code == 202
    assert first.json()["error"]["code"] == "computing" and first.json()["error"]["param"] == "model"

    response = settled(client, {"model": model, "lora": lora})
    assert response.status_code == 200, response.text
    trainable, total = peft_counts(tiny_llama_dir, **lora)
    assert (response.json()["trainable_params"], response.json()["all_params"]) == (trainable, total)
    assert response.json()["peft_summary"] == peft_line(trainable, total)


def test_cached_local_inventory_serves_other_configs_exactly(client, tiny_llama_dir):
    model = str(tiny_llama_dir)
    settled(client, {"model": model})
    lora = {"r": 4, "target_modules": "all-linear", "modules_to_save": ["lm_head"], "bias": "lora_only"}
    body = client.post(ESTIMATE, json={"model": model, "lora": lora}).json()
    assert (body["trainable_params"], body["all_params"]) == peft_counts(tiny_llama_dir, **lora)
    html = client.post("/estimate", headers={"HX-Request": "true"}, data={
        "model": model, "r": "8", "alpha_locked": "on", "target_mode": "modules",
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "bias": "none", "precision": "bf16", "sequence_length": "512", "batch_size": "1",
    }).text
    expected = peft_counts(tiny_llama_dir, r=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                "gate_proj", "up_proj", "down_proj"])
    assert peft_line(*expected) in html, html[html.find("estimate-invalid"):][:1500]


def test_local_inventory_is_listed_under_v1_models_once_computed(client, tiny_llama_dir):
    model = str(tiny_llama_dir)
    settled(client, {"model": model})
    detail = client.get(f"/v1/models/{model}").json()
    assert detail["architecture"] == "LlamaForCausalLM"
    shapes = {m["name"]: (m["in_features"], m["out_features"]) for m in detail["modules"]}
    assert shapes["q_proj"] == (64, 64) and shapes["k_proj"] == (64, 32) and shapes["down_proj"] == (160, 64)


def test_directory_without_config_json_is_an_unknown_model(client, tmp_path):
    # The same words as for a path that does not exist (tests/security/test_local_model_roots.py).
    empty = tmp_path / "weights-only"
    empty.mkdir()
    error = client.post(ESTIMATE, json={"model": str(empty)}).json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert error["message"].startswith(f"Unknown model {str(empty)!r}: give a Hugging Face model id")
    page = client.get("/", params={"model": str(empty)}).text
    assert 'id="inventory-unavailable"' in page and "Unknown model" in page


def test_config_the_worker_cannot_build_ends_in_a_404_with_its_reason(client, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    assert client.post(ESTIMATE, json={"model": str(broken)}).status_code == 202
    response = settled(client, {"model": str(broken)})
    error = response.json()["error"]
    assert response.status_code == 404 and error["code"] == "model_not_found"
    assert error["message"].startswith("Could not build the module inventory:")
    assert "no-such-architecture" in error["message"]


def test_hub_id_that_cannot_be_fetched_says_offline_at_once(client, monkeypatch):
    # The web app asks the hub itself (app/base_models/hub_lookup.py) rather than starting a child that would fail
    # later; offline (HF_HUB_OFFLINE, as in every test) and not in the local cache is a 404 that says so.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    response = client.post(ESTIMATE, json={"model": "nobody/no-such-model"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "hub_unreachable"
    assert response.json()["error"]["message"].startswith("Offline: cannot look up 'nobody/no-such-model'")


def test_a_mixtral_folder_draws_its_experts_and_router_and_estimates_them_exactly(client, tmp_path):
    """A mixture-of-experts model: the picture shows the stacked experts and the router as boxes that set
    target_parameters, and ticking them gives PEFT's own counts."""
    directory = tmp_path / "tiny-mixtral"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({
        "model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "hidden_size": 32,
        "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_local_experts": 4, "num_experts_per_tok": 2, "vocab_size": 256, "max_position_embeddings": 64,
    }))
    model = str(directory)
    settled(client, {"model": model, "lora": {"target_modules": ["q_proj"]}})
    page = client.get("/", params={"model": model}).text
    assert 'name="target_parameters" value="experts.gate_up_proj"' in page
    assert "×4 experts, stacked" in page
    assert 'name="target_parameters" value="gate.weight"' in page

    html = client.post("/estimate", headers={"HX-Request": "true"}, data={
        "model": model, "r": "8", "alpha_locked": "on", "target_mode": "modules", "target_modules": ["q_proj"],
        "target_parameters": ["experts.gate_up_proj", "experts.down_proj", "gate.weight"],
        "bias": "none", "lora_dropout": "0", "precision": "bf16", "sequence_length": "512", "batch_size": "1",
    }).text
    expected = peft_counts(directory, r=8, lora_alpha=8, target_modules=["q_proj"],
                           target_parameters=["experts.gate_up_proj", "experts.down_proj", "gate.weight"])
    assert peft_line(*expected) in html, html[html.find("estimate-invalid"):][:1500]

    refused = client.post("/estimate", headers={"HX-Request": "true"}, data={
        "model": model, "r": "8", "alpha_locked": "on", "target_mode": "modules", "target_modules": ["q_proj"],
        "target_parameters": ["experts.down_proj"], "lora_dropout": "0.1",
        "bias": "none", "precision": "bf16", "sequence_length": "512", "batch_size": "1",
    }).text
    assert "needs lora_dropout 0" in refused
