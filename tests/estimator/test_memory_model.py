"""The memory estimate against a measured training step: one small point of `bench/memory.py`'s grid.

A random-weight SmolLM2 (Llama) at a small size with its real 49,152-token vocabulary trains two optimizer steps on
the worker's own path under torch's memory profiler (`workers.memory_probe`); the estimate's total (without the
CUDA overhead, which a CPU does not have) must be within 15 % of the most tensor bytes live at once, and the
components the model states exactly (weights, adapter, AdamW states, logits) must match what their tensors held.
A behavioural check of the model, not a timing: the measured bytes are the same on every run.
"""

from __future__ import annotations

import pytest

from app.estimator.estimate import EstimateRequest, estimate
from app.estimator.inventory import Inventory
from app.estimator.job_config import JobConfig
from workers.inventory import build_inventory
from workers.memory_probe import COMPONENTS, Shape, measure_training_memory, scaled_catalog_config

MODEL = "HuggingFaceTB/SmolLM2-135M"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_estimate_is_within_15_percent_of_a_measured_training_step(precision):
    config = scaled_catalog_config(MODEL, Shape(hidden=256, layers=2, intermediate=768, heads=4, kv_heads=2))
    job = JobConfig.model_validate({"model": MODEL, "lora": {"r": 16, "lora_alpha": 16, "target_modules": "all-linear"},
                                    "training": {"precision": precision, "sequence_length": 128, "batch_size": 2}})
    memory = estimate(Inventory(build_inventory(config, MODEL)), EstimateRequest.model_validate(job.model_dump()),
                      device="cpu")
    measured = measure_training_memory(config, job)

    predicted = {name: getattr(memory.memory, name) for name in COMPONENTS}
    total = sum(predicted.values())
    assert abs(total / measured.peak - 1) <= 0.15, (total, measured.peak, predicted, measured.components)
    for name in ("base_weights", "adapter_weights", "optimizer_states", "logits"):
        assert predicted[name] == pytest.approx(measured.components[name], rel=0.01), (name, measured.components)


def test_a_dpo_estimate_holds_two_sequences_a_pair_and_a_frozen_copy_of_the_adapter():
    from app.estimator import catalog
    from app.estimator.estimate import EstimateRequest, estimate
    from app.estimator.inventory import load_inventory

    inventory = load_inventory(catalog.inventory_path("HuggingFaceTB/SmolLM2-135M"))
    body = {"model": "HuggingFaceTB/SmolLM2-135M", "lora": {"r": 8, "target_modules": ["q_proj", "v_proj"]},
            "training": {"batch_size": 4, "sequence_length": 512}}
    supervised = estimate(inventory, EstimateRequest(**body)).memory
    doubled = estimate(inventory, EstimateRequest(**{**body, "training": {"batch_size": 8, "sequence_length": 512}}))
    dpo = estimate(inventory, EstimateRequest(**body, method={"type": "dpo"})).memory
    assert (dpo.activations, dpo.logits) == (doubled.memory.activations, doubled.memory.logits)
    assert dpo.adapter_weights == 2 * supervised.adapter_weights
    assert (dpo.gradients, dpo.optimizer_states, dpo.base_weights) == (supervised.gradients,
                                                                       supervised.optimizer_states,
                                                                       supervised.base_weights)
