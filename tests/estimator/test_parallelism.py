"""The estimate per GPU for a job on several GPUs: what DDP replicates, what ZeRO-2, ZeRO-3 and FSDP split, the
strategy's own buffers, what `auto` becomes, and the run's steps and effective batch."""

from __future__ import annotations

import math

from app.estimator import catalog
from app.estimator.estimate import EstimateRequest, estimate
from app.estimator.inventory import load_inventory
from app.estimator.memory import GIB
from app.estimator.parallelism import largest_layer_bytes

LLAMA_70B = "meta-llama/Llama-3.1-70B"
LLAMA_8B = "meta-llama/Llama-3.1-8B"
LORA = {"r": 16, "lora_alpha": 16, "target_modules": "all-linear"}


def _estimate(model: str, gpu_bytes: int | None = None, **training):
    request = EstimateRequest.model_validate({"model": model, "lora": LORA, "training": {
        "sequence_length": 4096, "batch_size": 1, "gradient_checkpointing": True, **training}})
    return estimate(load_inventory(catalog.inventory_path(model)), request, gpu_bytes=gpu_bytes)


def test_llama_70b_does_not_fit_one_80_gb_gpu_and_auto_shards_it_over_eight():
    one = _estimate(LLAMA_70B).memory
    assert one.gpus == 1 and one.strategy == "single" and not one.fits["80"]
    eight = _estimate(LLAMA_70B, gpus=8).memory
    assert eight.strategy == "fsdp" and eight.gpus == 8 and eight.fits["80"]
    assert eight.base_weights == math.ceil(one.base_weights / 8)
    assert eight.optimizer_states == math.ceil(one.optimizer_states / 8)
    # Activations and the LM head's tiles are each GPU's own micro-batch: as on one GPU.
    assert (eight.activations, eight.logits) == (one.activations, one.logits)
    # FSDP gathers a whole decoder block in bf16 to run it, and prefetches the next.
    block = largest_layer_bytes(load_inventory(catalog.inventory_path(LLAMA_70B)), 2)
    assert eight.strategy_buffers == 2 * block
    assert 1.5 * GIB < block < 2 * GIB  # 8192 wide, 28672 MLP: 0.86 B weights a block
    assert eight.total == sum(getattr(eight, k) for k in (
        "base_weights", "adapter_weights", "gradients", "optimizer_states", "activations", "logits",
        "cuda_overhead", "strategy_buffers"))


def test_ddp_replicates_everything_and_adds_its_gradient_buckets():
    one = _estimate(LLAMA_8B)
    two = _estimate(LLAMA_8B, gpus=2, strategy="ddp")
    assert two.memory.strategy == "ddp"
    for key in ("base_weights", "adapter_weights", "gradients", "optimizer_states", "activations", "logits"):
        assert getattr(two.memory, key) == getattr(one.memory, key), key
    assert two.memory.strategy_buffers == one.trainable_params * 4
    assert two.memory.total == one.memory.total + one.trainable_params * 4


def test_zero2_splits_gradients_and_optimizer_states_but_not_weights():
    one, four = _estimate(LLAMA_8B).memory, _estimate(LLAMA_8B, gpus=4, strategy="deepspeed_zero2").memory
    assert four.base_weights == one.base_weights and four.adapter_weights == one.adapter_weights
    assert four.gradients == math.ceil(one.gradients / 4)
    assert four.optimizer_states == math.ceil(one.optimizer_states / 4)


def test_zero3_splits_what_fsdp_splits():
    zero3 = _estimate(LLAMA_70B, gpus=8, strategy="deepspeed_zero3").memory
    fsdp = _estimate(LLAMA_70B, gpus=8, strategy="fsdp").memory
    assert zero3.total == fsdp.total and zero3.strategy == "deepspeed_zero3"


def test_auto_is_ddp_when_a_replica_fits_the_gpus_the_job_gets_else_fsdp():
    assert _estimate(LLAMA_8B, gpus=2).memory.strategy == "ddp"  # ~21 GiB fits the assumed 80 GB card
    assert _estimate(LLAMA_8B, gpus=2, gpu_bytes=16 * GIB).memory.strategy == "fsdp"  # not a 16 GB one


def test_gpus_multiply_the_effective_batch_and_divide_the_steps():
    one = _estimate(LLAMA_8B, batch_size=2, gradient_accumulation_steps=3, max_steps=None, num_epochs=1)
    request = EstimateRequest.model_validate({"model": LLAMA_8B, "lora": LORA, "dataset_examples": 1200, "training": {
        "sequence_length": 512, "batch_size": 2, "gradient_accumulation_steps": 3, "num_epochs": 1}})
    inventory = load_inventory(catalog.inventory_path(LLAMA_8B))
    single = estimate(inventory, request)
    quad = estimate(inventory, request.model_copy(update={
        "training": request.training.model_copy(update={"gpus": 4})}))
    assert one.memory.effective_batch_size == 6
    assert quad.memory.effective_batch_size == 24
    assert single.training_time.steps == 200 and quad.training_time.steps == 50
    # Each queue's duration splits the FLOPs over the GPUs (throughput.predict divides by this).
    assert (single.training_time.gpus, quad.training_time.gpus) == (1, 4)
    # The same examples are computed on, spread over the GPUs: the FLOPs do not change.
    assert quad.training_time.padded_tokens == single.training_time.padded_tokens
