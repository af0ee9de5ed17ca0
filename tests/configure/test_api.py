"""REST: `POST /v1/fine_tuning/estimate`, `/v1/models`, the error envelope and the OpenAPI schema."""

from __future__ import annotations

import json

import pytest

from tests.configure.lora_math import (
    CONFIGS,
    GPT2,
    LLAMA_MODULES,
    config,
    gpt2_shapes,
    layers,
    llama_shapes,
    lora_params,
    peft_line,
)

pytestmark = pytest.mark.one_database  # the estimator's API: no database question here

ESTIMATE = "/v1/fine_tuning/estimate"
SMOL = "HuggingFaceTB/SmolLM2-135M"


def estimate(client, model: str = SMOL, **lora):
    return client.post(ESTIMATE, json={"model": model, "lora": lora})


def assert_error(response, status: int, param: str | None, code: str | None = None) -> dict:
    """The response is an OpenAI-style error naming `param`; returns the error object."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    assert body["error"]["param"] == param
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


def test_estimate_for_smollm2_all_seven_modules_matches_peft(client):
    body = estimate(client, r=16, lora_alpha=16, target_modules=LLAMA_MODULES).json()
    # LORA.md, verified with peft 0.21.2: 4,884,480 trainable of 139,399,488.
    assert body["trainable_params"] == 4_884_480
    assert body["all_params"] == 139_399_488
    assert body["trainable_percent"] == pytest.approx(100 * 4_884_480 / 139_399_488)
    assert body["peft_summary"] == peft_line(4_884_480, 139_399_488)


def test_estimate_breakdown_has_one_row_per_projection_with_r_times_in_plus_out(client):
    cfg = config(SMOL)
    shapes = llama_shapes(cfg)
    body = estimate(client, r=16, target_modules=LLAMA_MODULES).json()
    rows = {row["pattern"].rsplit(".", 1)[-1]: row for row in body["modules"]}
    assert set(rows) == set(LLAMA_MODULES)
    for name, (d_in, d_out) in shapes.items():
        row = rows[name]
        assert (row["in_features"], row["out_features"], row["r"]) == (d_in, d_out, 16)
        assert row["count"] == layers(cfg) and row["layers"] == list(range(layers(cfg)))
        assert row["params_each"] == 16 * (d_in + d_out)
        assert row["params_total"] == row["params_each"] * row["count"]
    assert sum(row["params_total"] for row in body["modules"]) == body["trainable_params"]
    assert body["adapted_modules"] == 7 * layers(cfg)


def test_estimate_adapter_bytes_are_the_weights_plus_a_small_safetensors_header(client):
    body = estimate(client, r=16, target_modules=LLAMA_MODULES).json()
    trainable = body["trainable_params"]
    fp32, bf16 = body["adapter_bytes"]["fp32"], body["adapter_bytes"]["bf16"]
    assert 4 * trainable < fp32 < 4 * trainable + 200_000
    assert 2 * trainable < bf16 < 2 * trainable + 200_000


def test_estimate_memory_parts_add_up_and_say_which_gpus_fit(client):
    memory = estimate(client, r=16, target_modules=LLAMA_MODULES).json()["memory"]
    parts = ["base_weights", "adapter_weights", "gradients", "optimizer_states", "activations", "logits",
             "cuda_overhead"]
    assert memory["total"] == sum(memory[p] for p in parts)
    assert memory["adapter_weights"] == 4 * 4_884_480  # fp32 master copy of the LoRA weights
    assert memory["fits"] == {"24": True, "48": True, "80": True}


def test_big_model_in_bf16_does_not_fit_a_24gb_card(client):
    memory = client.post(ESTIMATE, json={"model": "meta-llama/Llama-3.1-70B"}).json()["memory"]
    assert memory["fits"]["24"] is False and memory["total"] > 70e9 * 2


def test_estimate_warns_about_a_missing_validation_set_and_high_rank_on_little_data(client):
    response = client.post(ESTIMATE, json={
        "model": SMOL, "lora": {"r": 128, "target_modules": LLAMA_MODULES},
        "training": {"dataset_examples": 200, "has_validation_set": False},
    })
    warnings = response.json()["warnings"]
    assert all(set(w) == {"field", "level", "message"} for w in warnings)
    fields = {w["field"] for w in warnings}
    assert {"validation", "r"} <= fields


@pytest.mark.parametrize(("model", "lora", "trainable", "total"), [
    ("meta-llama/Llama-3.1-8B", {"r": 16, "target_modules": LLAMA_MODULES}, 41_943_040, 8_072_204_288),
    ("meta-llama/Llama-3.1-8B", {"r": 8, "target_modules": ["q_proj", "v_proj"]}, 3_407_872, 8_033_669_120),
    (GPT2, {"r": 8, "target_modules": ["c_attn", "c_proj"]}, 811_008, 125_250_816),
    (GPT2, {"r": 8, "target_modules": "all-linear"}, 1_179_648, 125_619_456),
])
def test_estimate_reproduces_the_verified_counts(client, model, lora, trainable, total):
    body = client.post(ESTIMATE, json={"model": model, "lora": lora}).json()
    assert (body["trainable_params"], body["all_params"]) == (trainable, total)


def test_gpt2_count_follows_the_formula_from_its_config(client):
    cfg = config(GPT2)
    shapes = gpt2_shapes(cfg)
    body = estimate(client, GPT2, r=4, target_modules=["c_attn", "mlp.c_proj"]).json()
    assert body["trainable_params"] == lora_params(4, shapes, ["c_attn", "mlp.c_proj"], layers(cfg))


def test_rank_zero_is_a_422_naming_lora_r(client):
    error = assert_error(estimate(client, r=0), 422, "lora.r", "invalid_value")
    assert error["type"] == "invalid_request_error"


def test_target_modules_that_match_nothing_are_a_422_naming_target_modules(client):
    error = assert_error(estimate(client, target_modules=["nope_proj"]), 422, "lora.target_modules")
    assert "nope_proj" in error["message"]


def test_all_linear_with_layers_to_transform_is_a_422_naming_layers_to_transform(client):
    response = estimate(client, target_modules="all-linear", layers_to_transform=[0, 1])
    error = assert_error(response, 422, "lora.layers_to_transform")
    assert "cannot be used when `target_modules` is a str" in error["message"]


def test_layers_pattern_without_layers_is_a_422_naming_layers_pattern(client):
    assert_error(estimate(client, target_modules=["q_proj"], layers_pattern="layers"), 422, "lora.layers_pattern")


def test_invalid_regex_is_a_422_naming_target_modules(client):
    assert_error(estimate(client, target_modules=r".*\.(q_proj"), 422, "lora.target_modules")


def test_unknown_lora_field_is_a_422_naming_it(client):
    assert_error(estimate(client, rank=16), 422, "lora.rank")


def test_missing_model_is_a_422_naming_model(client):
    assert_error(client.post(ESTIMATE, json={"lora": {"r": 8}}), 422, "model")


def test_model_that_is_neither_an_id_nor_a_directory_is_a_404(client):
    error = assert_error(client.post(ESTIMATE, json={"model": "not a model!"}), 404, "model", "model_not_found")
    assert "give a Hugging Face model id (org/name)" in error["message"]


def test_missing_local_directory_is_a_404(client, tmp_path):
    missing = tmp_path / "nowhere"
    error = assert_error(client.post(ESTIMATE, json={"model": str(missing)}), 404, "model", "model_not_found")
    # The words an existing folder outside the model roots gets too (tests/security/test_local_model_roots.py).
    assert error["message"].startswith(f"Unknown model {str(missing)!r}")


def test_models_lists_the_28_catalog_models(client):
    body = client.get("/v1/models").json()
    catalog_ids = [entry["id"] for entry in json.loads((CONFIGS.parent / "catalog.json").read_text())]
    assert len(catalog_ids) == 29
    assert body["object"] == "list"
    assert [card["id"] for card in body["data"]] == catalog_ids
    assert all(card["object"] == "model" and card["owned_by"] == card["id"].split("/")[0] for card in body["data"])


def test_gpt2_detail_lists_its_conv1d_projections_with_shapes(client):
    response = client.get(f"/v1/models/{GPT2}")
    assert response.status_code == 200
    body = response.json()
    assert body["architecture"] == "GPT2LMHeadModel" and body["model_type"] == "gpt2"
    modules = {m["pattern"]: m for m in body["modules"]}
    cfg = config(GPT2)
    where = {"c_attn": "attn.c_attn", "attn.c_proj": "attn.c_proj", "c_fc": "mlp.c_fc", "mlp.c_proj": "mlp.c_proj"}
    for target, (d_in, d_out) in gpt2_shapes(cfg).items():
        module = modules[f"transformer.h.*.{where[target]}"]
        assert (module["in_features"], module["out_features"]) == (d_in, d_out)
        assert module["kind"] == "conv1d" and module["type"] == "Conv1D" and module["bias"] is True
        assert module["count"] == layers(cfg)
        assert module["params_per_rank"] == d_in + d_out
    assert {m["name"] for m in body["modules"]} >= {"c_attn", "c_proj", "c_fc"}


def test_unknown_model_detail_is_a_404_envelope(client):
    assert_error(client.get("/v1/models/not a model!"), 404, "model", "model_not_found")


def test_openapi_documents_the_estimate_and_models_endpoints(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    post = paths["/v1/fine_tuning/estimate"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/EstimateRequest")
    assert post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/EstimateResponse")
    assert post["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorEnvelope")
    assert {"202", "404"} <= set(post["responses"])
    assert "get" in paths["/v1/models"] and "get" in paths["/v1/models/{model_id}"]
    components = schema["components"]["schemas"]
    assert {"trainable_params", "all_params", "trainable_percent", "modules", "adapter_bytes", "memory",
            "warnings"} <= set(components["EstimateResponse"]["properties"])
    assert "r" in components["LoraSettings"]["properties"]


def test_openapi_leaves_out_the_html_pages(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert not {"/", "/configure", "/estimate", "/models/search"} & set(paths)
