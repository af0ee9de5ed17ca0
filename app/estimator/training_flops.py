"""Training FLOPs of a LoRA run, per token and in total, from the inventory and the run's settings.

A token's forward pass costs 2 FLOPs per weight it meets in a matrix multiply (every block's projections,
only the routed share of a mixture-of-experts layer's experts, and the output head; embeddings are a
lookup) plus causal attention's score and value products, 2·L·(heads·head_dim) per layer for a sequence of
L tokens. The backward pass computes gradients of the activations through the frozen base (as much again)
and, for attention, twice the forward; only trainable weights get weight gradients: the LoRA factors
(2 + 4 FLOPs per parameter per token) and full copies saved with `modules_to_save` (2 more per weight).
Gradient checkpointing runs each block's forward a second time. Evaluation is forward only.

FLOPs alone under-predict narrow models: a token's pass also writes every layer's outputs (norms, projections,
activations, residual sums, LoRA's scaled additions, the logits and their log-softmax), and at small widths
moving those values costs more time than the arithmetic on them. `elementwise_values_per_token` counts them, so
a queue can fit a cost per value beside its FLOP/s (`app.fleet.throughput`).

The per-token cost is `fixed + per_length · L`, so a finished run can be re-costed at the padded length it
really trained on. Pure stdlib; must not import torch or `workers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.estimator.inventory import Inventory, Module
from app.estimator.memory import architecture, block_widths

_TWO_D = 2
_EXPERT_DIMS = 3


@dataclass(frozen=True, slots=True)
class FlopsPerToken:
    """Training FLOPs per token: `fixed + per_length · L` for sequences of L tokens (padding included)."""

    fixed: float
    per_length: float
    forward_fixed: float  # a forward pass alone (evaluation), for sequences of the same length
    forward_per_length: float

    def training(self, length: float) -> float:
        """FLOPs to train on one token of an L-token sequence."""
        return self.fixed + self.per_length * length

    def evaluation(self, length: float) -> float:
        """FLOPs to evaluate one token of an L-token sequence."""
        return self.forward_fixed + self.forward_per_length * length


def matmul_weights_per_token(inventory: Inventory) -> float:
    """Weights a token meets in matrix multiplies: 2-D weights (the output head included, however tied) and
    the routed share of stacked expert weights; the input embedding is a lookup and costs nothing."""
    experts_per_token = inventory.config.get("num_experts_per_tok")
    total = 0.0
    for module in inventory.modules:
        if module.name == inventory.input_embedding or module.kind == "embedding":
            continue
        if not inventory.in_language_model(module):
            continue  # a multimodal model's vision tower: a text-only step never calls it
        for param in module.params:
            dims = len(param.shape)
            if "bias" in param.full_name.rpartition(".")[2]:
                continue  # an expert layer's stacked biases (gpt-oss) are added, not multiplied
            if dims == _TWO_D:
                total += param.numel
            elif dims == _EXPERT_DIMS and experts_per_token:
                total += param.numel * min(1.0, experts_per_token / param.shape[0])
    return total


def _output_head_weights(inventory: Inventory) -> int:
    head = inventory.by_name.get(inventory.output_embedding or "")
    return head.weight_numel if head is not None else 0


def attention_width(inventory: Inventory) -> int:
    """heads × head_dim: the width of the query-key and attention-value products per layer."""
    config = inventory.config
    heads = config.get("num_attention_heads") or 0
    head_dim = config.get("head_dim") or ((config.get("hidden_size") or 0) // heads if heads else 0)
    return heads * head_dim


def flops_per_token(
    inventory: Inventory, *, adapter_params: int, saved_params: int, gradient_checkpointing: bool
) -> FlopsPerToken:
    """The per-token FLOPs of a LoRA training step and of an evaluation step."""
    matmul = 2.0 * matmul_weights_per_token(inventory)
    # Causal attention: each of L tokens attends to L/2 on average, in QKᵀ and in the weighted sum of V.
    attention = 2.0 * (inventory.num_layers or 0) * attention_width(inventory)
    forward_fixed = matmul + 2.0 * adapter_params
    backward_fixed = matmul + 4.0 * adapter_params + 2.0 * saved_params
    # Checkpointing recomputes the blocks, not the output head that follows them.
    recompute = forward_fixed - 2.0 * _output_head_weights(inventory) if gradient_checkpointing else 0.0
    attention_passes = 1 + 2 + (1 if gradient_checkpointing else 0)
    return FlopsPerToken(
        fixed=forward_fixed + backward_fixed + recompute,
        per_length=attention * attention_passes,
        forward_fixed=forward_fixed,
        forward_per_length=attention,
    )


@dataclass(frozen=True, slots=True)
class ValuesPerToken:
    """Values written per token, a proxy for the memory traffic of everything but the matrix multiplies."""

    training: float
    evaluation: float


def elementwise_values_per_token(inventory: Inventory, adapted: Sequence[tuple[Module, int]], *, lora_dropout: bool,
                                 gradient_checkpointing: bool) -> ValuesPerToken:
    """What a token's pass writes, each op's output once: the forward's, three times over in training (the
    backward writes a gradient for each, and for each op's inputs), the blocks' once more under gradient
    checkpointing; the loss's log-softmax and its gradients are counted as they are, vocab-wide."""
    block, arch = block_widths(inventory), architecture(inventory)
    hidden = inventory.hidden_size or 0
    experts_per_token = inventory.config.get("num_experts_per_tok") or 1
    # A norm computes in fp32: the squares (or centred values), the normalised values, their scaling.
    norms = block.norms * 3 * hidden
    # Rotary positions rotate q and k: two products, the half-rotation (negate, concatenate) and their sum.
    kv_width = (block.qkv_width - block.attention_out) // 2
    rotary = 5 * (block.attention_out + kv_width) if block.rotary else 0
    # q, k, v, the attention output, o_proj's output and its residual sum.
    attention = block.qkv_width + block.attention_out + 2 * hidden
    # gate and up (or one projection), the activation's tensors, the gated product; down_proj and its residual sum.
    inner = block.mlp_inner * experts_per_token
    mlp = inner * ((2 if block.gated else 1) + arch.activation_tensors + (1 if block.gated else 0)) + 2 * hidden
    dropouts = arch.dropouts_per_layer * 2 * hidden  # a mask and the dropped-out values
    per_layer = norms + rotary + attention + mlp + dropouts
    in_blocks = outside = 0.0
    for module, r in adapted:
        if not inventory.in_language_model(module):
            continue
        # lora_A's output, lora_B's, its scaling and the sum with the base output (the dropout's mask and output).
        values = r + 3 * (module.out_features or 0) + (2 * (module.in_features or 0) if lora_dropout else 0)
        if module.layer is None:
            outside += values
        else:
            in_blocks += values
    blocks = (inventory.num_layers or 0) * per_layer + in_blocks
    forward = blocks + outside + 3 * hidden  # and the final norm
    vocab = inventory.config.get("vocab_size") or 0
    # The logits and their log-softmax; in training also the loss's gradient and the log-softmax's backward.
    return ValuesPerToken(training=3 * forward + (blocks if gradient_checkpointing else 0) + 4 * vocab,
                          evaluation=forward + 2 * vocab)
