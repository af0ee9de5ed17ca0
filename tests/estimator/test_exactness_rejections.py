"""Configs PEFT rejects must be rejected by the estimator too, before anything runs.

Each case is tried on real PEFT first (the test fails if PEFT accepts it, so the list stays honest),
then on the estimator, which must raise `EstimateError` naming the offending field, or refuse the
settings in `LoraSettings` validation (what `LoraConfig.__post_init__` and the LoRA layer reject).
Models: catalog architectures built from their committed configs on the meta device.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from app.estimator.matching import EstimateError
from tests.estimator.peft_reference import (
    ATTENTION_PARENT,
    LAYERS_PATTERN,
    LINEAR_NAMES,
    OTHER_NAMES,
    catalog_config,
    catalog_inventory,
    estimate_for,
    fresh_meta_model,
    peft_model,
    peft_outcome,
)

MODELS = [
    "HuggingFaceTB/SmolLM2-135M",
    "openai-community/gpt2",
    "microsoft/Phi-3-mini-4k-instruct",
    "google/gemma-2-2b",
]

VALIDATION = "settings validation"


def _cases(model_id: str) -> dict[str, tuple[dict[str, Any], str]]:
    """name -> (options, the field the estimator must blame, or VALIDATION)."""
    family = catalog_config(model_id).model_type
    first = LINEAR_NAMES[family][0]
    one = [first]
    container, norm = ATTENTION_PARENT[family], OTHER_NAMES[family][2]
    return {
        "no module matched": (dict(target_modules=["query_key_value"]), "target_modules"),
        "no module matched by regex": (dict(target_modules=r".*\.no_such_layer"), "target_modules"),
        "attention container targeted": (dict(target_modules=[container]), "target_modules"),
        "mlp container targeted": (dict(target_modules=["mlp"]), "target_modules"),
        "norm targeted": (dict(target_modules=[first, norm]), "target_modules"),
        "container matched by regex": (dict(target_modules=r".*\.mlp"), "target_modules"),
        "all-linear with layers_to_transform": (dict(target_modules="all-linear", layers_to_transform=[0]), VALIDATION),
        "regex with layers_to_transform": (dict(target_modules=rf".*\.{first}", layers_to_transform=0), VALIDATION),
        "regex with layers_pattern": (dict(target_modules=rf".*\.{first}", layers_pattern="layers"), VALIDATION),
        "layers_pattern without layers_to_transform": (dict(target_modules=one, layers_pattern="layers"), VALIDATION),
        "r = 0": (dict(r=0, target_modules=one), VALIDATION),
        "r < 0": (dict(r=-4, target_modules=one), VALIDATION),
        "rank_pattern r = 0": (dict(r=8, target_modules=one, rank_pattern={first: 0}), "rank_pattern"),
        "r written as a float": (dict(r=4.0, target_modules=one), "r"),
        "rank_pattern rank written as a float": (dict(r=4, target_modules=one, rank_pattern={first: 4.0}),
                                                 "rank_pattern"),
        "every target excluded": (dict(target_modules=one, exclude_modules=[first]), "exclude_modules"),
        "every target excluded by regex": (dict(target_modules=one, exclude_modules=".*"), "exclude_modules"),
        "every target in modules_to_save": (dict(target_modules=one, modules_to_save=[container]), "modules_to_save"),
        # "proj" (or GPT-2's "attn") also selects the adapted layer itself, by plain suffix.
        "adapted layer also in modules_to_save": (
            dict(target_modules=one, modules_to_save=[first[-4:]]),
            "modules_to_save",
        ),
        "layers_to_transform beyond the model": (
            dict(target_modules=one, layers_to_transform=[999]),
            "layers_to_transform",
        ),
        "layers_pattern that names no layer list": (
            dict(target_modules=one, layers_to_transform=[0], layers_pattern="blocks"),
            "layers_to_transform",
        ),
        "empty target list": (dict(target_modules=[]), "target_modules"),
        # modules_to_save matching runs after LoRA injection and reaches what PEFT inserted.
        "modules_to_save naming a LoRA ModuleDict": (dict(target_modules=one, modules_to_save=["lora_A"]),
                                                     "modules_to_save"),
        "modules_to_save naming the adapter": (dict(target_modules=one, modules_to_save=["default"]),
                                               "modules_to_save"),
        "modules_to_save hitting lora_dropout": (dict(target_modules=one, modules_to_save=["dropout"]),
                                                 "modules_to_save"),
        "modules_to_save naming DoRA magnitudes": (
            dict(target_modules=one, use_dora=True, modules_to_save=["magnitude_vector"]),
            "modules_to_save",
        ),
        "modules_to_save naming the block list": (
            dict(target_modules=["lm_head"], modules_to_save=[LAYERS_PATTERN[family]]),
            "modules_to_save",
        ),
    }


CASES = [(model_id, name) for model_id in MODELS for name in _cases(model_id)]


@pytest.mark.parametrize(("model_id", "case"), CASES, ids=[f"{m}:{c}" for m, c in CASES])
def test_config_peft_rejects_is_rejected_by_the_estimator(model_id, case):
    options, field = _cases(model_id)[case]
    real = peft_outcome(fresh_meta_model(catalog_config(model_id)), options)
    assert real.rejected, f"PEFT accepts {options!r} ({real}); this is not a rejection case"

    if field == VALIDATION:
        with pytest.raises(ValidationError):
            estimate_for(catalog_inventory(model_id), options)
    else:
        with pytest.raises(EstimateError) as error:
            estimate_for(catalog_inventory(model_id), options)
        assert error.value.field == field, f"blamed {error.value.field!r}: {error.value.message}"


@pytest.mark.parametrize("model_id", ["microsoft/Phi-3-mini-4k-instruct"])
def test_default_targets_rejected_where_peft_has_none(model_id):
    assert catalog_inventory(model_id).peft_default_targets is None
    assert peft_outcome(fresh_meta_model(catalog_config(model_id)), {}).rejected
    with pytest.raises(EstimateError) as error:
        estimate_for(catalog_inventory(model_id), {})
    assert error.value.field == "target_modules"


def test_saving_a_module_that_holds_lora_targets_is_refused_though_peft_accepts_it():
    """The one deliberate difference from PEFT, pinned so it stays deliberate.

    "attn" matches Llama's "self_attn" by plain suffix, yet PEFT's LoRA exclusion needs a '.' boundary,
    so q/k/v/o get LoRA and the saved copy of self_attn then carries a second, trainable adapter.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    model_id = "HuggingFaceTB/SmolLM2-135M"
    options = dict(target_modules="all-linear", modules_to_save=["attn"])
    wrapped = peft_model(fresh_meta_model(catalog_config(model_id)), options)
    saved_attention = wrapped.base_model.model.model.layers[0].self_attn
    assert any(isinstance(m, BaseTunerLayer) for m in saved_attention.modules_to_save["default"].modules())

    with pytest.raises(EstimateError) as error:
        estimate_for(catalog_inventory(model_id), options)
    assert error.value.field == "modules_to_save"
    assert "'self_attn'" in error.value.message  # tells the user the exact name to use instead


def test_saving_an_adapted_layers_base_layer_copies_its_original_weights_as_peft_does():
    """"base_layer" names nothing in the base model, but after injection every adapted layer has one.

    PEFT then trains a full copy of each original weight beside the adapter; the estimate counts it, and says
    so in a warning, instead of silently counting the adapter alone."""
    model_id = "HuggingFaceTB/SmolLM2-135M"
    options = dict(r=8, target_modules=["q_proj"], modules_to_save=["base_layer"])
    real = peft_outcome(fresh_meta_model(catalog_config(model_id)), options)
    result = estimate_for(catalog_inventory(model_id), options)
    assert (result.trainable_params, result.all_params) == (real.trainable, real.all) == (10_229_760, 144_744_768)
    assert result.modules_to_save[0] == "model.layers.0.self_attn.q_proj.base_layer"
    assert any("base_layer" in w.message and w.field == "modules_to_save" for w in result.warnings)
