"""Mixture-of-experts models: the estimator against real PEFT, counts and adapter files.

On transformers 5 the experts of Mixtral, Qwen3-MoE, OLMoE and the like are stacked 3-D parameters and
PEFT rewrites LoRA configs naming the old per-expert Linear layers (and adapts the router's weight); gpt-oss
and Qwen2-MoE keep their names but store experts the same way. LoRA reaches experts through
`target_parameters`. The cases from the field (a small Mixtral where 6 of 18 configurations disagreed) are
pinned first; then random MoE configs and random options, and real saved adapter files.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.estimator.matching import EstimateError
from tests.estimator.moe_strategies import moe_config, moe_lora_options, random_moe_configs
from tests.estimator.peft_reference import (
    compare_on_config,
    estimate_for,
    fresh_meta_model,
    inventory_for,
    peft_outcome,
)
from tests.estimator.test_adapter_file_size import assert_adapter_file_size_matches
from tests.estimator.test_exactness_random import property_settings


def _mixtral():
    return moe_config("mixtral", layers=3, heads=4, kv_heads=2, head_dim=8, experts=4, intermediate=48, vocab=256,
                      tie=False)


FIELD_CASES = {
    "all-linear adapts experts and router": dict(r=8, target_modules="all-linear"),
    "all-linear, bias lora_only": dict(r=2, target_modules="all-linear", bias="lora_only"),
    "regex reduced to leaf names": dict(r=64, target_modules=r"(?!.*\.2\.).*\.v_proj", rank_pattern={".*_proj": 4}),
    "old expert names": dict(target_modules=["w1", "w2", "w3"]),
    "router by its old name": dict(target_modules=["q_proj", "v_proj", "gate"]),
    "expert weights as parameters": dict(target_modules=["q_proj"], target_parameters=["experts.gate_up_proj",
                                                                                        "experts.down_proj"]),
    "parameters alone": dict(target_modules=[], target_parameters=["gate_up_proj"]),
}
REFUSED = {
    "target_modules omitted": (dict(), "target_modules"),
    "half of a fused pair": (dict(target_modules=["w1"]), "target_modules"),
    "DoRA on expert weights": (dict(target_modules=["w1", "w3"], use_dora=True), "use_dora"),
    "dropout on expert weights": (dict(target_modules=["q_proj"], target_parameters=["down_proj"], lora_dropout=0.1),
                                  "lora_dropout"),
    "a parameter of an adapted module": (dict(target_modules=["q_proj"], target_parameters=["q_proj.weight"]),
                                         "target_parameters"),
    "a 1-D parameter": (dict(target_modules=["q_proj"], target_parameters=["norm.weight"]), "target_parameters"),
}


@pytest.mark.parametrize("case", FIELD_CASES)
def test_mixtral_cases_from_the_field_equal_peft(case):
    outcome = compare_on_config(_mixtral(), FIELD_CASES[case])
    assert not outcome.rejected and outcome.trainable > 0


def test_all_linear_on_mixtral_counts_experts_router_and_attention():
    """The issue's figures, on its 3-layer Mixtral: PEFT adapts 8 experts' fused weights at double rank."""
    config = moe_config("mixtral", layers=3, heads=4, kv_heads=2, head_dim=8, experts=4, intermediate=48, vocab=256,
                        tie=False)
    result = estimate_for(inventory_for(config), dict(r=8, target_modules="all-linear"))
    patterns = {m.pattern: m for m in result.modules}
    gate_up = patterns["model.layers.*.mlp.experts.gate_up_proj"]
    assert (gate_up.r, gate_up.experts, gate_up.count) == (16, 4, 3)  # w1 + w3 fused: rank doubled
    assert gate_up.params_each == 16 * 4 * (32 + 96)
    assert patterns["model.layers.*.mlp.gate.weight"].params_each == 8 * (32 + 4)


@pytest.mark.parametrize("case", REFUSED)
def test_configs_peft_refuses_on_mixtral_are_refused_naming_the_field(case):
    options, field = REFUSED[case]
    config = _mixtral()
    real = peft_outcome(fresh_meta_model(config), options)
    assert real.rejected, f"PEFT accepts {options!r}; not a refusal case"
    with pytest.raises(EstimateError) as error:
        estimate_for(inventory_for(config), options)
    assert error.value.field == field, error.value.message


@property_settings(max_examples=300)
@given(data=st.data())
def test_estimator_matches_peft_on_random_moe_configs(data):
    config = data.draw(random_moe_configs(), label="config")
    options = data.draw(moe_lora_options(config), label="options")
    compare_on_config(config, options)


FILE_CASES = [
    ("mixtral", dict(r=4, target_modules="all-linear")),
    ("qwen3_moe", dict(r=4, target_modules=["q_proj", "gate_proj", "up_proj", "down_proj"])),
    ("gpt_oss", dict(r=2, target_modules=["q_proj"], target_parameters=["experts.gate_up_proj", "experts.down_proj",
                                                                        "router.weight"], bias="lora_only")),
    ("qwen2_moe", dict(r=2, target_modules="all-linear", target_parameters=["gate_up_proj"], bias="all")),
    ("olmoe", dict(r=3, target_modules=["gate_proj", "up_proj"], modules_to_save=["lm_head"])),
]


@pytest.mark.parametrize(("family", "options"), FILE_CASES, ids=[f for f, _ in FILE_CASES])
def test_moe_adapter_bytes_equal_the_saved_file(family, options, tmp_path):
    config = moe_config(family, layers=2, heads=2, kv_heads=1, head_dim=8, experts=3, intermediate=12, vocab=40,
                        tie=False)
    assert assert_adapter_file_size_matches(config, options, tmp_path) > 8
