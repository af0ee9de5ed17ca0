"""How the GPUs of one job share its run: what each GPU holds under DDP, FSDP or DeepSpeed ZeRO, and what the
strategy `auto` becomes.

Data parallel in every case: each GPU runs its own micro-batches, so activations and the LM head's tiles are per
GPU as on one. What differs is whether the weights, gradients and optimizer states are replicated or split in N,
and what the strategy itself holds to move them (DDP's gradient buckets, the layer FSDP and ZeRO-3 gather).
Pure stdlib; must not import torch or `workers`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from app.estimator.inventory import Inventory
from app.estimator.job_config import Strategy
from app.estimator.memory import GIB, NF4_BYTES_PER_PARAM, MemoryEstimate

# A strategy as the worker runs it: `auto` resolved, and "single" for one GPU.
RunStrategy = Literal["single", "ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"]
# What `auto` assumes a GPU holds when no live worker says: the largest common card.
DEFAULT_GPU_BYTES = 80 * GIB
# DeepSpeed's default reduce bucket (elements) when the config leaves it to the engine.
ZERO_REDUCE_BUCKET = 500_000_000

STRATEGY_LABELS: dict[str, str] = {"single": "one GPU", "ddp": "DDP", "fsdp": "FSDP", "deepspeed_zero2": "ZeRO-2",
                                   "deepspeed_zero3": "ZeRO-3"}
# What the strategy_buffers figure is, by strategy.
STRATEGY_BUFFERS: dict[str, str] = {"ddp": "DDP gradient buckets", "deepspeed_zero2": "ZeRO-2 reduce bucket",
                                    "fsdp": "FSDP gathered blocks (2)", "deepspeed_zero3": "ZeRO-3 gathered blocks (2)"}


@dataclass(frozen=True, slots=True)
class Sharding:
    """Which of a run's states a strategy splits across the GPUs instead of replicating."""

    weights: bool  # base weights and the trainable (adapter) weights
    gradients: bool
    optimizer_states: bool


SHARDING: dict[RunStrategy, Sharding] = {
    "single": Sharding(weights=False, gradients=False, optimizer_states=False),
    "ddp": Sharding(weights=False, gradients=False, optimizer_states=False),
    "deepspeed_zero2": Sharding(weights=False, gradients=True, optimizer_states=True),
    "deepspeed_zero3": Sharding(weights=True, gradients=True, optimizer_states=True),
    "fsdp": Sharding(weights=True, gradients=True, optimizer_states=True),
}


def resolve_strategy(gpus: int, strategy: Strategy, replica_bytes: int, gpu_bytes: int | None = None) -> RunStrategy:
    """The strategy a run uses: "single" on one GPU; `auto` is DDP when a whole replica (`replica_bytes`, the
    one-GPU estimate) fits the GPU, else FSDP, which splits the weights too."""
    if gpus == 1:
        return "single"
    if strategy != "auto":
        return strategy
    return "ddp" if replica_bytes <= (gpu_bytes or DEFAULT_GPU_BYTES) else "fsdp"


def largest_layer_bytes(inventory: Inventory, weight_bytes: float) -> int:
    """The weights of the largest decoder block: what FSDP and ZeRO-3 gather whole on every GPU to run it."""
    by_layer: dict[int, int] = {}
    for module in inventory.modules:
        if module.layer is not None:
            by_layer[module.layer] = by_layer.get(module.layer, 0) + module.weight_numel
    return math.ceil(max(by_layer.values(), default=0) * weight_bytes)


def _weight_bytes(precision: str) -> float:
    return {"bf16": 2, "fp16": 2, "fp32": 4, "4bit": NF4_BYTES_PER_PARAM}[precision]


def per_gpu(memory: MemoryEstimate, inventory: Inventory, *, gpus: int, strategy: RunStrategy,
            trainable_params: int) -> MemoryEstimate:
    """What each of `gpus` GPUs holds under `strategy`, from the one-GPU estimate `memory`."""
    if strategy == "single":
        return memory
    sharding = SHARDING[strategy]

    def split(value: int, sharded: bool) -> int:
        return math.ceil(value / gpus) if sharded else value

    if strategy == "ddp":
        # DDP reduces gradients through buckets: a flat fp32 copy of every trainable gradient.
        buffers = trainable_params * 4
    elif strategy == "deepspeed_zero2":
        # ZeRO-2 reduce-scatters the gradients through one bucket at a time.
        buffers = min(trainable_params, ZERO_REDUCE_BUCKET) * 4
    else:
        # FSDP and ZeRO-3 gather a block's weights whole before running it, and prefetch the next one.
        buffers = 2 * largest_layer_bytes(inventory, _weight_bytes(memory.precision))
    return replace(
        memory,
        base_weights=split(memory.base_weights, sharding.weights),
        adapter_weights=split(memory.adapter_weights, sharding.weights),
        gradients=split(memory.gradients, sharding.gradients),
        optimizer_states=split(memory.optimizer_states, sharding.optimizer_states),
        strategy_buffers=buffers,
        gpus=gpus,
        strategy=strategy,
    )

