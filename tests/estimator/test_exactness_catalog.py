"""Estimator vs real PEFT on every catalog model, and the verified numbers of shared/LORA.md.

Each catalog architecture is built from its committed config.json on the meta device (the 70B one
too: no weights are allocated) and wrapped with `get_peft_model(model, LoraConfig(**options))`; the
estimator runs on the committed inventory the web app serves. Trainable and all-params counts must be
identical for every option the configuration page offers: rank, alpha, dropout, target_modules as a
list / regex / "all-linear" / PEFT's default, bias, rsLoRA, DoRA, modules_to_save (tied lm_head
included), exclude_modules, layers_to_transform / layers_pattern, rank_pattern / alpha_pattern.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.estimator import catalog
from tests.estimator.peft_reference import (
    ATTENTION_PARENT,
    CATALOG_IDS,
    EMBEDDING_NAMES,
    LAYERS_PATTERN,
    LINEAR_NAMES,
    MODEL_PREFIX,
    OTHER_NAMES,
    catalog_config,
    catalog_inventory,
    compare_on_catalog_model,
    estimate_for,
    fresh_meta_model,
    peft_outcome,
    quiet_warnings,
)
from workers.inventory import build_inventory

ALL_SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _option_cases(model_id: str) -> dict[str, dict[str, Any]]:
    """One option set per knob (and a few combinations), spelled with this model family's module names."""
    config = catalog_config(model_id)
    family = config.model_type
    layers = config.get_text_config().num_hidden_layers
    linear = list(LINEAR_NAMES[family][:3] if family == "gpt2" else LINEAR_NAMES[family])
    attention = [linear[0]] if family in ("gpt2", "phi3") else ["q_proj", "v_proj"]
    embedding, pattern, prefix = EMBEDDING_NAMES[family][0], LAYERS_PATTERN[family], MODEL_PREFIX[family]
    parent = ATTENTION_PARENT[family]
    missing_embedding = "wte" if family != "gpt2" else "embed_tokens"
    linear_full_names = sorted(
        m.name for m in catalog_inventory(model_id).modules if m.kind in ("linear", "conv1d") and m.name != "lm_head"
    )
    cases = {
        "peft default targets": {},
        "attention list, r16 alpha32 dropout": dict(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=attention),
        "all names, r1": dict(r=1, target_modules=linear),
        "regex, one layer": dict(target_modules=rf"{prefix}\.{pattern}\.1\.\w+\.({'|'.join(linear)})"),
        "all-linear rslora": dict(r=4, lora_alpha=8, use_rslora=True, target_modules="all-linear"),
        "all-linear dora bias all": dict(r=8, use_dora=True, bias="all", target_modules="all-linear"),
        "all names bias lora_only": dict(bias="lora_only", target_modules=linear),
        "save lm_head": dict(target_modules=attention, modules_to_save=["lm_head"]),
        "save input embedding": dict(target_modules="all-linear", modules_to_save=[embedding]),
        "save both embeddings, bias all": dict(
            target_modules=attention, modules_to_save=["lm_head", embedding], bias="all"
        ),
        # PEFT matches modules_to_save by plain suffix ("norm" hits every *norm) and ignores entries hitting nothing.
        "save norms and a missing name": dict(
            target_modules=attention, modules_to_save=[OTHER_NAMES[family][-1], missing_embedding]
        ),
        "exclude list": dict(target_modules="all-linear", exclude_modules=[linear[-1], f"{parent}.{linear[0]}"]),
        "exclude regex": dict(target_modules=linear, exclude_modules=rf".*\.{pattern}\.0\..*"),
        "layers_to_transform list": dict(target_modules=attention, layers_to_transform=[0, layers - 1]),
        "layers_to_transform int with layers_pattern": dict(
            target_modules=linear, layers_to_transform=1, layers_pattern=pattern
        ),
        "rank and alpha patterns": dict(
            r=8, target_modules=linear, rank_pattern={linear[0]: 2, rf"{pattern}\.0\..*": 32},
            alpha_pattern={linear[-1]: 64},
        ),
        # A zero rank is PEFT's to refuse only where its key gives it to an adapted module: here nothing matches.
        "zero rank on a key that matches nothing": dict(r=4, target_modules=linear, rank_pattern={"nonexistent": 0}),
        "embedding and lm_head LoRA with DoRA": dict(target_modules=[embedding, "lm_head"], use_dora=True),
        # PEFT condenses 20+ names to suffixes, so the exact-name exemption from layers_to_transform no longer applies.
        "20+ full names with layers_to_transform": dict(target_modules=linear_full_names, layers_to_transform=[1]),
        # GPT-2's "attn" also hits "attn.c_attn"; PEFT wraps the inner one again inside the outer copy.
        "nested modules_to_save": dict(target_modules=["c_fc"], modules_to_save=[parent])
        if family == "gpt2"
        else dict(target_modules=[linear[0]], modules_to_save=["mlp", linear[-1], f"{pattern}.{layers - 1}"]),
    }
    if catalog_inventory(model_id).peft_moe_conversion:
        # Mixtral, Qwen3-MoE: "all-linear" reaches the stacked expert weights, whose ParamWrapper refuses DoRA
        # (a case PEFT refuses, kept: the estimator must refuse it too); DoRA and bias="all" on attention instead.
        cases["attention dora bias all"] = dict(r=8, use_dora=True, bias="all", target_modules=attention)
    return cases


def _refused_by_peft(model_id: str, case: str) -> bool:
    """The cases PEFT refuses on purpose for this model; every other case must be a valid config."""
    if catalog_inventory(model_id).peft_moe_conversion:
        # Without target_modules PEFT refuses these types ("no target_modules ... no target_parameters"), even
        # Mixtral, which has default targets; "all-linear" adapts expert weights through ParamWrapper, which
        # refuses DoRA.
        return case in ("peft default targets", "all-linear dora bias all")
    return False


CASES = [(model_id, name) for model_id in CATALOG_IDS for name in _option_cases(model_id)]


@pytest.mark.slow
@pytest.mark.parametrize(("model_id", "case"), CASES, ids=[f"{m}:{c}" for m, c in CASES])
def test_estimator_counts_equal_peft_on_catalog_model(model_id, case):
    options = _option_cases(model_id)[case]
    outcome = compare_on_catalog_model(model_id, options)
    if _refused_by_peft(model_id, case):
        assert outcome.rejected, f"PEFT was expected to refuse this case, and counted {outcome}"
    elif case != "peft default targets" or catalog_inventory(model_id).peft_default_targets:
        assert not outcome.rejected, f"the case is meant to be a valid config: {outcome.error}"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model_id", "options", "trainable", "all_params"),
    [
        ("meta-llama/Llama-3.1-8B", dict(r=16, target_modules=ALL_SEVEN), 41_943_040, 8_072_204_288),
        ("openai-community/gpt2", dict(r=8, target_modules=["c_attn", "c_proj"]), 811_008, 125_250_816),
        ("openai-community/gpt2", dict(r=8, target_modules="all-linear"), 1_179_648, 125_619_456),
        ("HuggingFaceTB/SmolLM2-135M", dict(r=16, target_modules=ALL_SEVEN), 4_884_480, 139_399_488),
    ],
    ids=["llama-3.1-8b-r16-all7", "gpt2-r8-c_attn-c_proj", "gpt2-r8-all-linear", "smollm2-135m-r16-all7"],
)
def test_lora_md_verified_counts(model_id, options, trainable, all_params):
    result = estimate_for(catalog_inventory(model_id), options)
    assert (result.trainable_params, result.all_params) == (trainable, all_params)
    assert result.peft_summary.startswith(f"trainable params: {trainable:,d} || all params: {all_params:,d}")
    real = peft_outcome(fresh_meta_model(catalog_config(model_id)), options)
    assert (real.trainable, real.all) == (trainable, all_params)


@pytest.mark.parametrize("model_id", CATALOG_IDS)
def test_committed_inventory_is_what_the_committed_config_builds(model_id):
    """The exactness above holds for the served inventories only if they match the installed transformers."""
    with quiet_warnings():
        fresh = build_inventory(catalog_config(model_id), model_id)
    committed = json.loads(catalog.inventory_path(model_id).read_text())
    for key in ("architecture", "model_type", "peft_default_targets", "input_embedding", "output_embedding", "modules"):
        assert fresh[key] == committed[key], f"{key} differs; regenerate with `python -m workers.inventory --catalog`"
