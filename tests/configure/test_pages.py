"""The configuration page and its HTMX fragments, with and without the HX-Request header."""

from __future__ import annotations

import html as html_text
import re

import pytest

from app.estimator import catalog
from tests.configure.lora_math import (
    GPT2,
    LLAMA_MODULES,
    PHI3,
    SMOL,
    config,
    gpt2_shapes,
    layers,
    llama_shapes,
    lora_params,
    phi3_shapes,
)

pytestmark = pytest.mark.one_database  # the form and the estimator: no database question here

HX = {"HX-Request": "true"}
SMOL_135M_LINE = "trainable params: 4,884,480 || all params: 139,399,488 || trainable%: 3.5039"


def form(**changes) -> dict:
    """The configuration form as the browser posts it: SmolLM2-135M, r=16, all 7 modules."""
    data = {
        "model": "HuggingFaceTB/SmolLM2-135M", "r": "16", "lora_alpha": "16", "alpha_locked": "on",
        "lora_dropout": "0", "bias": "none", "target_mode": "modules", "target_modules": LLAMA_MODULES,
        "target_regex": "", "exclude_modules": "", "layers_to_transform": "", "layers_pattern": "",
        "rank_pattern": "", "precision": "bf16", "sequence_length": "1024", "batch_size": "4",
        "dataset_examples": "", "gradient_checkpointing": "on",
    }
    data.update(changes)
    return data


def messages_beside(html: str, field: str) -> str:
    """The contents of the message slot that sits under a form field, entities decoded."""
    match = re.search(rf'<div class="field-msgs" id="msg-{field}"[^>]*>(.*?)</div>', html, re.S)
    assert match, f"no message slot for {field}"
    return html_text.unescape(match.group(1))


def box_targets(html: str) -> list[str]:
    return re.findall(r'class="module-box[^"]*" data-target="([^"]+)"', html)


def checked_targets(html: str) -> set[str]:
    return set(re.findall(r'name="target_modules" value="([^"]+)" checked', html))


def test_get_page_without_htmx_is_a_whole_document(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.text.lstrip().lower().startswith("<!doctype html>")
    assert '<script src="/vendor/htmx.org/dist/htmx.min.js"' in response.text
    assert 'id="config-form"' in response.text and 'id="estimate"' in response.text


def test_get_page_with_htmx_is_only_the_main_fragment(client):
    response = client.get("/", headers=HX)
    assert response.status_code == 200
    assert "<html" not in response.text and "<head" not in response.text
    assert response.text.lstrip().startswith('<form id="config-form"')


def test_page_starts_on_the_default_model_with_the_balanced_pattern(client):
    html = client.get("/").text
    cfg = config(SMOL)
    trainable = lora_params(16, llama_shapes(cfg), LLAMA_MODULES, layers(cfg))
    assert f'id="trainable-params">{trainable:,d}<' in html
    assert checked_targets(html) == set(LLAMA_MODULES)


def test_htmx_estimate_returns_the_panel_with_the_peft_line(client):
    response = client.post("/estimate", data=form(), headers=HX)
    assert response.status_code == 200
    assert response.text.lstrip().startswith('<aside id="estimate"')
    assert "<html" not in response.text and 'id="config-form"' not in response.text
    assert f'<pre class="peft-line" id="peft-line">{SMOL_135M_LINE}</pre>' in response.text
    # Field messages ride along out of band, so advice beside the fields refreshes too.
    assert 'id="msg-r" hx-swap-oob="true"' in response.text


def test_estimate_without_htmx_returns_the_whole_page_with_the_posted_values(client):
    response = client.post("/estimate", data=form(r="8"))
    assert response.text.lstrip().lower().startswith("<!doctype html>")
    assert re.search(r'name="r" id="r"[^>]*value="8"', response.text)
    cfg = config("HuggingFaceTB/SmolLM2-135M")
    trainable = lora_params(8, llama_shapes(cfg), LLAMA_MODULES, layers(cfg))
    assert f'id="trainable-params">{trainable:,d}<' in response.text


def test_rank_zero_comes_back_with_the_error_beside_the_rank(client):
    for headers in (HX, {}):
        html = client.post("/estimate", data=form(r="0"), headers=headers).text
        assert 'data-error-for="r"' in messages_beside(html, "r")
        assert "greater than or equal to 1" in messages_beside(html, "r")
        assert 'id="estimate-invalid"' in html and 'id="peft-line"' not in html


def test_bad_regex_error_sits_beside_the_regex_box(client):
    data = form(target_mode="regex", target_regex=r".*\.(q_proj")
    for headers in (HX, {}):
        html = client.post("/estimate", data=data, headers=headers).text
        assert "not a valid regular expression" in messages_beside(html, "target_regex")
        assert "field-error" not in messages_beside(html, "target_modules")


def test_regex_that_matches_nothing_is_reported_beside_the_regex_box(client):
    html = client.post("/estimate", data=form(target_mode="regex", target_regex=r".*\.nothing"), headers=HX).text
    assert "not found in the base model" in messages_beside(html, "target_regex")


def test_unparseable_layers_to_transform_is_reported_beside_it_and_opens_the_advanced_section(client):
    html = client.post("/estimate", data=form(layers_to_transform="0-3, x")).text
    assert "'x' is not a layer number or range" in messages_beside(html, "layers_to_transform")
    assert re.search(r'<details class="advanced"\s+open>', html)


def test_layers_with_all_linear_is_reported_beside_layers_to_transform(client):
    html = client.post("/estimate", data=form(target_mode="all-linear", layers_to_transform="0-3"), headers=HX).text
    assert "cannot be used when `target_modules` is a str" in messages_beside(html, "layers_to_transform")


def test_layers_to_transform_limits_the_count_to_those_layers(client):
    html = client.post("/estimate", data=form(layers_to_transform="0-3, 10"), headers=HX).text
    cfg = config("HuggingFaceTB/SmolLM2-135M")
    trainable = lora_params(16, llama_shapes(cfg), LLAMA_MODULES, 5)
    assert f'id="trainable-params">{trainable:,d}<' in html


def test_every_invalid_field_is_reported_at_once(client):
    data = form(r="0", target_mode="regex", target_regex="((", layers_to_transform="x", rank_pattern="down_proj")
    html = client.post("/estimate", data=data, headers=HX).text
    for field in ("r", "target_regex", "layers_to_transform", "rank_pattern"):
        assert "field-error" in messages_beside(html, field), field


def test_form_values_survive_a_failed_validation(client):
    html = client.post("/estimate", data=form(r="0", lora_dropout="0.1", sequence_length="2048")).text
    assert re.search(r'name="lora_dropout"[^>]*value="0.1"', html)
    assert re.search(r'name="sequence_length"[^>]*value="2048"', html)


def test_changing_the_model_rerenders_picture_and_estimate_for_gpt2(client):
    response = client.post("/configure", data=form(model=GPT2, model_changed="1"), headers=HX)
    assert response.text.lstrip().startswith('<form id="config-form"')
    shapes = gpt2_shapes(config(GPT2))
    assert box_targets(response.text)[:4] == list(shapes)
    trainable = lora_params(16, shapes, shapes, layers(config(GPT2)))
    assert f'id="trainable-params">{trainable:,d}<' in response.text


def test_get_page_for_gpt2_draws_its_block(client):
    html = client.get("/", params={"model": GPT2}).text
    assert box_targets(html) == ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj", "wte", "wpe", "lm_head"]
    assert "768 → 2304" in html


def test_model_search_filters_the_catalog(client):
    html = client.get("/models/search", params={"q": "gpt"}).text
    assert re.findall(r'data-model-id="([^"]+)"', html) == [GPT2, "openai/gpt-oss-20b"]
    html = client.get("/models/search", params={"q": "gpt 124m"}).text
    assert re.findall(r'data-model-id="([^"]+)"', html) == [GPT2]
    html = client.get("/models/search", params={"q": "smollm2 360"}).text
    assert re.findall(r'data-model-id="([^"]+)"', html) == ["HuggingFaceTB/SmolLM2-360M"]


def test_model_search_with_no_hit_offers_the_text_as_an_id(client):
    html = client.get("/models/search", params={"q": "acme/secret-model"}).text
    assert "Not in the catalog" in html and "<code>acme/secret-model</code>" in html
    assert "data-model-id" not in html


def test_model_search_with_an_empty_query_lists_the_catalog_up_to_the_search_limit(client):
    # The 29 catalog models are more than catalog.search's limit of 20: an empty query (the picker focused) shows
    # the first 20 in catalog order, and the rest appear as the user types.
    catalog_ids = [entry.id for entry in catalog.entries()]
    assert len(catalog_ids) == 29
    html = client.get("/models/search").text
    assert re.findall(r'data-model-id="([^"]+)"', html) == catalog_ids[:20]
    html = client.get("/models/search", params={"q": "olmo"}).text
    assert re.findall(r'data-model-id="([^"]+)"', html) == ["allenai/OLMo-2-1124-7B"]


def test_model_that_is_neither_an_id_nor_a_directory_shows_why(client):
    html = client.get("/", params={"model": "not a model!"}).text
    assert 'id="inventory-unavailable"' in html
    assert "give a Hugging Face model id (org/name)" in html


def test_model_change_carries_attention_plus_mlp_onto_phi3s_fused_projections(client):
    data = form(model=PHI3, model_changed="1", drawn_for="HuggingFaceTB/SmolLM2-135M")
    html = client.post("/configure", data=data, headers=HX).text
    assert checked_targets(html) == set(phi3_shapes(config(PHI3)))


def test_model_change_carries_query_value_onto_gpt2s_fused_attention(client):
    data = form(model=GPT2, model_changed="1", drawn_for="HuggingFaceTB/SmolLM2-135M",
                target_modules=["q_proj", "v_proj"])
    assert checked_targets(client.post("/configure", data=data, headers=HX).text) == {"c_attn"}


def test_model_change_keeps_a_custom_selection_where_the_new_model_has_it(client):
    data = form(model="meta-llama/Llama-3.1-8B", model_changed="1", drawn_for="HuggingFaceTB/SmolLM2-135M",
                target_modules=["k_proj", "down_proj"])
    assert checked_targets(client.post("/configure", data=data, headers=HX).text) == {"k_proj", "down_proj"}


def test_phi3_attention_is_drawn_qkv_first_then_o_proj(client):
    html = client.get("/", params={"model": PHI3}).text
    attention = html[html.index('data-section="Attention"'):html.index('data-section="MLP"')]
    assert box_targets(attention) == ["qkv_proj", "o_proj"]


def test_phi3_query_value_preset_selects_the_fused_qkv_projection(client):
    html = client.get("/", params={"model": PHI3}).text
    assert re.search(r'data-preset="attention-qv" data-mode="modules"\s+data-targets="qkv_proj"', html)


def test_a_catalog_moe_model_starts_with_attention_and_its_experts(client):
    """On Mixtral "attention + MLP" means the stacked experts too, which only target_parameters reaches."""
    page = client.get("/", params={"model": "mistralai/Mixtral-8x7B-v0.1"}).text
    assert 'name="target_parameters" value="experts.gate_up_proj" checked' in page
    assert 'name="target_parameters" value="experts.down_proj" checked' in page
    assert 'name="target_parameters" value="gate.weight" checked' not in page  # the router is left to the user
    assert 'data-preset="conservative"' in page and 'data-parameters=""' in page  # q+v only: no experts
    assert checked_targets(page) == {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_the_demo_dataset_follows_the_method(client):
    chat = client.post("/datasets/demo", headers=HX, data=form()).text
    assert re.search(r'<option value="file-[^"]+"\s+selected>demo_chat\.jsonl', chat)
    pairs = client.post("/datasets/demo", headers=HX, data=form(method_type="dpo")).text
    chosen = re.search(r'<option value="(file-[^"]+)"\s+selected>demo_preferences\.jsonl', pairs)
    assert chosen, pairs
    files = client.get("/v1/files").json()["data"]
    assert {f["filename"] for f in files} == {"demo_chat.jsonl", "demo_preferences.jsonl"}
    stored = client.post("/datasets/demo", headers=HX, data=form(method_type="dpo")).text
    assert chosen.group(1) in stored and len(client.get("/v1/files").json()["data"]) == 2  # stored once
