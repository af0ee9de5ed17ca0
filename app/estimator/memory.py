"""Training memory estimate for a LoRA run: weights, adapter, gradients, AdamW states, activations.

An analytic model, documented term by term so users can see where the bytes go. Pure stdlib;
must not import torch or `workers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from app.estimator.inventory import LINEAR_KINDS, Inventory

Precision = Literal["bf16", "fp16", "fp32", "4bit"]
GPU_SIZES_GB = (24, 48, 80)
GIB = 1024**3

# NF4 stores 4 bits a weight plus one fp8 absmax per 64 weights and, with double quantisation,
# one fp32 constant per 256 absmax values: 0.5 + 1/64 + 4/(64*256) bytes.
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)
# What the CUDA context, cuBLAS workspaces and allocator fragmentation hold beyond tensors.
CUDA_OVERHEAD_BYTES = int(0.9 * GIB)


@dataclass(frozen=True, slots=True)
class MemoryEstimate:
    precision: Precision
    base_weights: int
    adapter_weights: int
    gradients: int
    optimizer_states: int
    activations: int
    logits: int
    cuda_overhead: int

    @property
    def total(self) -> int:
        return (
            self.base_weights + self.adapter_weights + self.gradients + self.optimizer_states
            + self.activations + self.logits + self.cuda_overhead
        )

    def fits(self) -> dict[int, bool]:
        """Whether the run fits on a GPU of each common size (in GB as sold: 24, 48, 80 GiB usable)."""
        return {size: self.total <= size * GIB for size in GPU_SIZES_GB}


def _bytes_per_value(precision: Precision) -> int:
    return {"bf16": 2, "fp16": 2, "fp32": 4, "4bit": 2}[precision]


def _base_weight_bytes(inventory: Inventory, precision: Precision) -> int:
    if precision != "4bit":
        return inventory.base_params * _bytes_per_value(precision)
    # bitsandbytes quantises the Linear layers; embeddings, norms and the output head stay in bf16.
    quantised = sum(
        m.weight_numel for m in inventory.modules if m.kind in LINEAR_KINDS and m.name != inventory.output_embedding
    )
    return int(quantised * NF4_BYTES_PER_PARAM) + (inventory.base_params - quantised) * 2


def _activation_bytes_per_token_per_layer(inventory: Inventory, act_bytes: int) -> int:
    cfg = inventory.config
    hidden = cfg.get("hidden_size") or 0
    inter = cfg.get("intermediate_size") or 4 * hidden
    kv_dim = (cfg.get("num_key_value_heads") or 1) * (cfg.get("head_dim") or 0) or hidden
    # Saved for backward with fused (SDPA / flash) attention: two norm inputs and outputs, q, k, v, the
    # attention output, the o_proj input and residual (about 10 x hidden), and the MLP's gate, up,
    # activation and product (4 x intermediate). Norms upcast to fp32 add their inputs once more.
    elements = 10 * hidden + 2 * kv_dim + 4 * inter
    return elements * act_bytes + 2 * hidden * 4


def estimate_memory(
    inventory: Inventory,
    trainable_adapter_params: int,
    trainable_saved_params: int,
    *,
    precision: Precision,
    sequence_length: int,
    batch_size: int,
    gradient_checkpointing: bool,
) -> MemoryEstimate:
    """Peak training memory for one micro-batch, by component."""
    act_bytes = 4 if precision == "fp32" else 2
    full_copy_bytes = _bytes_per_value(precision)
    # PEFT keeps LoRA weights in fp32 even on a bf16 base; full copies keep the base dtype.
    adapter_weights = trainable_adapter_params * 4 + trainable_saved_params * full_copy_bytes
    gradients = adapter_weights
    # torch AdamW keeps exp_avg and exp_avg_sq in each parameter's dtype.
    optimizer_states = 2 * adapter_weights

    tokens = sequence_length * batch_size
    layers = inventory.num_layers or 1
    hidden = inventory.hidden_size or 0
    per_layer = _activation_bytes_per_token_per_layer(inventory, act_bytes) * tokens
    if gradient_checkpointing:
        # Each layer keeps only its input; one layer at a time is recomputed in full during backward.
        activations = layers * tokens * hidden * act_bytes + per_layer
    else:
        activations = layers * per_layer
    vocab = inventory.config.get("vocab_size") or 0
    # Logits in the model dtype, their fp32 upcast for the loss, and the fp32 gradient of the softmax.
    logits = tokens * vocab * (act_bytes + 4 + 4)
    return MemoryEstimate(
        precision=precision,
        base_weights=_base_weight_bytes(inventory, precision),
        adapter_weights=adapter_weights,
        gradients=gradients,
        optimizer_states=optimizer_states,
        activations=activations,
        logits=logits,
        cuda_overhead=CUDA_OVERHEAD_BYTES,
    )
