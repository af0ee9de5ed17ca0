"""adapter_bytes.fp32 vs the real adapter_model.safetensors that `PeftModel.save_pretrained` writes.

Tiny float32 models with random weights (catalog configs shrunk to a few small layers, and random
family configs) are wrapped with real PEFT and saved to a temporary directory; the file size must equal
the estimate byte for byte. Covers plain LoRA, DoRA's magnitude vectors, freed biases, modules_to_save
copies (a tied lm_head included, nested entries, and an adapted layer's base_layer), LoRA on embeddings
(whose base weights save_embedding_layers="auto" adds to the file) and per-module ranks.
On a mismatch the assertion lists the tensor names only one side has.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.estimator.counting import count
from app.estimator.lora_settings import LoraSettings
from app.estimator.matching import EstimateError, select_modules
from tests.estimator.lora_strategies import lora_options, random_family_configs
from tests.estimator.peft_reference import (
    ATTENTION_PARENT,
    EMBEDDING_NAMES,
    LINEAR_NAMES,
    MODEL_PREFIX,
    estimate_for,
    inventory_for,
    peft_model,
    quiet_warnings,
    real_model,
    shrunk_catalog_config,
)

MODELS = [
    "HuggingFaceTB/SmolLM2-135M",  # Llama, tied embeddings
    "meta-llama/Llama-3.1-8B",  # Llama, untied
    "Qwen/Qwen2.5-0.5B",  # q/k/v biases, tied
    "google/gemma-2-2b",
    "microsoft/Phi-3-mini-4k-instruct",  # fused projections
    "openai-community/gpt2",  # Conv1D layers, biases everywhere, tied
]


def _cases(config: Any) -> dict[str, dict[str, Any]]:
    family = config.model_type
    linear = list(LINEAR_NAMES[family][:3] if family == "gpt2" else LINEAR_NAMES[family])
    embedding, prefix = EMBEDDING_NAMES[family][0], MODEL_PREFIX[family]
    return {
        "attention lora": dict(r=8, target_modules=linear[:2]),
        "all-linear dora": dict(r=4, target_modules="all-linear", use_dora=True),
        "save lm_head": dict(target_modules="all-linear", modules_to_save=["lm_head"]),
        "save input embedding, bias all": dict(target_modules=linear[:1], modules_to_save=[embedding], bias="all"),
        "save mlp, bias all": dict(target_modules=linear[:1], modules_to_save=["mlp"], bias="all"),
        "save final norm, bias all": dict(target_modules=linear[:1], modules_to_save=["ln_f", "norm"], bias="all"),
        "bias lora_only dora": dict(target_modules=linear, bias="lora_only", use_dora=True),
        "embedding lora dora": dict(r=4, target_modules=[embedding, "lm_head"], use_dora=True),
        "regex naming the input embedding": dict(target_modules=rf"{prefix}\.{embedding}|.*\.{linear[0]}"),
        "rank pattern": dict(r=8, target_modules=linear, rank_pattern={linear[0]: 2}, alpha_pattern={linear[0]: 4}),
        # Entries match a plain suffix after injection: "base_layer" copies an adapted layer's original weights.
        "save base layers, bias all": dict(target_modules=linear[:1], modules_to_save=["base_layer"], bias="all"),
        "save base layers, bias lora_only": dict(target_modules=linear[:2], modules_to_save=["layer"],
                                                 bias="lora_only"),
        "nested saves": dict(target_modules=["c_fc"], modules_to_save=[ATTENTION_PARENT[family]])
        if family == "gpt2"
        else dict(target_modules=linear[:1], modules_to_save=["mlp", linear[-1]]),
    }


def _header_names(path: Path) -> set[str]:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return set(json.loads(raw[8 : 8 + length])) - {"__metadata__"}


def assert_adapter_file_size_matches(config: Any, options: dict[str, Any], directory: Path) -> int:
    """Save the real adapter and compare its size with adapter_bytes.fp32; returns the size."""
    inventory = inventory_for(config)
    expected = estimate_for(inventory, options).adapter_bytes.fp32
    wrapped = peft_model(real_model(config), options)
    with quiet_warnings():
        wrapped.save_pretrained(directory)
    path = directory / "adapter_model.safetensors"
    size = path.stat().st_size
    if size != expected:
        settings_ = LoraSettings(**options)
        estimated = {t.name for t in count(inventory, settings_, select_modules(inventory, settings_)).tensors}
        written = _header_names(path)
        pytest.fail(
            f"file {size:,} bytes, estimate {expected:,}; only in the file: {sorted(written - estimated)[:8]}; "
            f"only estimated: {sorted(estimated - written)[:8]}; model={config.model_type} options={options!r}"
        )
    return size


CASES = [(model_id, case) for model_id in MODELS for case in _cases(shrunk_catalog_config(model_id))]


@pytest.mark.parametrize(("model_id", "case"), CASES, ids=[f"{m}:{c}" for m, c in CASES])
def test_adapter_bytes_equal_saved_file_size(model_id, case, tmp_path):
    config = shrunk_catalog_config(model_id, layers=2)
    size = assert_adapter_file_size_matches(config, _cases(config)[case], tmp_path)
    assert size > 8


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_adapter_bytes_equal_saved_file_size_on_random_models(data, tmp_path_factory):
    config = data.draw(random_family_configs(), label="config")
    options = data.draw(lora_options(config), label="options")
    try:
        estimate_for(inventory_for(config), options)
    except (EstimateError, ValueError):
        return  # refused configs are the rejection tests' business
    assert_adapter_file_size_matches(config, options, tmp_path_factory.mktemp("adapter"))
