"""Training memory estimate for a LoRA run: weights, adapter, gradients, AdamW states, activations, logits.

An analytic model of what the worker's training step holds on a GPU (TRL's trainers on the Hugging Face Trainer +
PEFT, fused AdamW, autocast over bf16 / fp16 weights, every trainable weight in fp32, TRL's chunked LM head),
documented term by term so users can see where the bytes go. `bench/memory.py` checks it against measured
training steps (docs/benchmarks.md, "Memory").
Pure stdlib; must not import torch or `workers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from app.estimator.block_diagram import block_diagram
from app.estimator.inventory import LINEAR_KINDS, Inventory, Module

Precision = Literal["bf16", "fp16", "fp32", "4bit"]
GPU_SIZES_GB = (24, 48, 80)
GIB = 1024**3

# NF4 stores 4 bits a weight plus one fp8 absmax per 64 weights and, with double quantisation,
# one fp32 constant per 256 absmax values: 0.5 + 1/64 + 4/(64*256) bytes.
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)
# What the CUDA context, cuBLAS workspaces and allocator fragmentation hold beyond tensors.
CUDA_OVERHEAD_BYTES = int(0.9 * GIB)
# TRL's trainers never hold a batch's logits: their LM head (trl.kernels.chunked_logprob) projects tiles of at most
# 4,096 tokens by 32,768 vocabulary entries and folds each into per-token statistics. On a GPU a Triton kernel folds
# a tile in place, so backward, the peak, holds one tile in the compute dtype beside the hidden states' fp32
# gradient and a few fp32 numbers per token. Without Triton (a CPU) the fold is torch ops that hold seven more fp32
# tiles and a one-byte one (measured: tests/estimator/test_memory_model.py).
TILE_TOKENS, TILE_VOCAB = 4096, 32768
LM_HEAD_FLOATS_PER_TOKEN = 8
TILE_BYTES_WITHOUT_TRITON = 7 * 4 + 1
Device = Literal["cuda", "cpu"]


@dataclass(frozen=True, slots=True)
class Architecture:
    """What a model type's forward keeps for backward beyond the common decoder block."""

    eager_attention: bool = False  # no fused attention kernel: the per-head sequence x sequence scores are kept
    attention_softcap: bool = False  # scores soft-capped with tanh, whose output is kept too
    activation_tensors: int = 1  # tensors the MLP activation keeps: 1 for silu/gelu kernels
    dropouts_per_layer: int = 0  # dropouts with p > 0 on the residual stream, each keeping a 1-byte mask
    embedding_dropout: bool = False


# Facts the inventory does not carry, from each type's transformers modeling code. Gemma-2 declares no SDPA support
# (it soft-caps the attention scores) and so runs eager attention; GPT-2's gelu_new is written out in torch ops
# (x, tanh, 1 + tanh and x / 2 are kept) and its config trains with dropout 0.1 on embeddings and residuals (the
# attention dropout happens inside the fused kernel on a GPU). Other types: the common Llama-like block.
_ARCHITECTURES: dict[str, Architecture] = {
    # (its final logit soft-cap happens inside the LM head's tiles)
    "gemma2": Architecture(eager_attention=True, attention_softcap=True),
    "gpt2": Architecture(activation_tensors=4, dropouts_per_layer=2, embedding_dropout=True),
}


def architecture(inventory: Inventory) -> Architecture:
    """What this model type's forward does beyond the common decoder block."""
    return _ARCHITECTURES.get(inventory.model_type, Architecture())


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
    strategy_buffers: int = 0  # what a multi-GPU strategy holds to move states between GPUs (parallelism.py)
    gpus: int = 1  # the figures are per GPU, each of this many
    strategy: str = "single"

    @property
    def total(self) -> int:
        return (
            self.base_weights + self.adapter_weights + self.gradients + self.optimizer_states
            + self.activations + self.logits + self.cuda_overhead + self.strategy_buffers
        )

    def fits(self) -> dict[int, bool]:
        """Whether each GPU's share fits on a GPU of each common size (in GB as sold: 24, 48, 80 GiB usable)."""
        return {size: self.total <= size * GIB for size in GPU_SIZES_GB}


@dataclass(frozen=True, slots=True)
class BlockWidths:
    """The widths of one decoder block that decide what it keeps, per token."""

    norms: int
    qkv_width: int  # outputs of the attention's input projections together
    fused_qkv: bool  # one projection makes q, k and v (Phi-3, GPT-2)
    attention_out: int  # input width of the attention's output projection
    mlp_inner: int  # input width of the MLP's output projection
    gated: bool  # gate and up projections (or one fused gate_up)
    rotary: bool  # rotary positions: q and k are rotated into new tensors
    roles: dict[str, tuple[str, str]]  # module path in the block -> (section title, "input" or "output")


@lru_cache(maxsize=64)
def block_widths(inventory: Inventory) -> BlockWidths:
    """The widths of the model's decoder block that decide what a token's pass through it writes and keeps."""
    cfg = inventory.config
    hidden = cfg.get("hidden_size") or 0
    heads = cfg.get("num_attention_heads") or 1
    head_dim = cfg.get("head_dim") or hidden // heads
    kv_width = (cfg.get("num_key_value_heads") or heads) * head_dim
    inner = cfg.get("intermediate_size") or 4 * hidden
    # Defaults: a Llama block, for architectures whose block the diagram cannot lay out.
    block = {"norms": 2, "qkv_width": heads * head_dim + 2 * kv_width, "fused_qkv": False,
             "attention_out": heads * head_dim, "mlp_inner": inner, "gated": True}
    roles: dict[str, tuple[str, str]] = {}
    diagram = block_diagram(inventory)
    if diagram.sections:
        block["norms"] = len(diagram.norms)
    for section in diagram.sections:
        inputs = [box for box in section.inputs if box.field == "target_modules"]
        if not inputs or section.output is None:
            continue
        roles.update({box.path: (section.title, "input") for box in inputs})
        roles[section.output.path] = (section.title, "output")
        if section.title == "Attention":
            block.update(qkv_width=sum(box.out_features for box in inputs), fused_qkv=len(inputs) == 1,
                         attention_out=section.output.in_features)
        elif section.title == "MLP":
            inner = section.output.in_features
            block.update(mlp_inner=inner, gated=len(inputs) == 2 or sum(b.out_features for b in inputs) == 2 * inner)
    # A second embedding (GPT-2's wpe) means learned absolute positions instead of rotary ones.
    embeddings = [m for m in inventory.modules if m.kind == "embedding"]
    return BlockWidths(rotary=len(embeddings) < 2, roles=roles, **block)


def _bytes_per_value(precision: Precision) -> int:
    return {"bf16": 2, "fp16": 2, "fp32": 4, "4bit": 2}[precision]


def _quantised(inventory: Inventory) -> list[Module]:
    # bitsandbytes quantises the Linear layers; embeddings, norms and the output head keep their dtype.
    return [m for m in inventory.modules if m.kind in LINEAR_KINDS and m.name != inventory.output_embedding]


def _base_weight_bytes(inventory: Inventory, precision: Precision) -> int:
    if precision != "4bit":
        return inventory.base_params * _bytes_per_value(precision)
    quantised = sum(m.weight_numel for m in _quantised(inventory))
    # prepare_model_for_kbit_training casts every weight that is not 4-bit (embeddings, norms, the head) to fp32.
    return int(quantised * NF4_BYTES_PER_PARAM) + (inventory.base_params - quantised) * 4


def _relative(module: Module) -> str | None:
    """The module's path inside its decoder block ("self_attn.q_proj"), or None outside the blocks."""
    if module.layer is None:
        return None
    return module.name.split(f".{module.layer}.", 1)[-1]


def _layer_bytes_per_token(inventory: Inventory, arch: Architecture, act: int, mixed: bool, seq: int) -> int:
    """What one decoder block keeps for backward per token, before LoRA adds its own."""
    cfg, block = inventory.config, block_widths(inventory)
    hidden = cfg.get("hidden_size") or 0
    heads = cfg.get("num_attention_heads") or 1
    head_dim = cfg.get("head_dim") or hidden // heads
    kv_width = (cfg.get("num_key_value_heads") or heads) * head_dim
    # RMSNorm / LayerNorm keep their input in fp32 (under autocast an fp32 copy of it).
    norms = block.norms * hidden * 4
    if arch.eager_attention:
        # q (rotated), k and v repeated to every head, and the output; then per head and token a row of
        # `seq` scores: the fp32 softmax, its cast back to the compute dtype, and the soft-cap's tanh.
        attention = act * 4 * heads * head_dim
        attention += heads * seq * (4 + (act if mixed else 0) + (act if arch.attention_softcap else 0))
    else:
        # A fused kernel (SDPA, flash) keeps q, k, v and its output; the scores are recomputed in backward.
        attention = act * (block.qkv_width + block.attention_out)
        if block.fused_qkv and block.rotary:
            # v is a view of the fused projection, which stays alive beside the rotated copies of q and k.
            attention += act * (heads * head_dim + kv_width)
    # The activation keeps its input (GPT-2's written-out gelu_new keeps four tensors); a gated MLP also keeps
    # the activation's output and the up projection for their product.
    mlp = act * block.mlp_inner * (arch.activation_tensors + (2 if block.gated else 0))
    return norms + attention + mlp + arch.dropouts_per_layer * hidden


def _lora_bytes_per_token(inventory: Inventory, arch: Architecture, adapted: Sequence[tuple[Module, int]], act: int,
                          mixed: bool, dropout: bool) -> tuple[dict[int | None, int], int]:
    """What the LoRA layers keep per token: by layer (None: outside the blocks), and the most any one layer keeps."""
    block = block_widths(inventory)
    by_layer: dict[int | None, int] = {}
    shared: set[tuple[int | None, str]] = set()  # (layer, section) whose input is already counted
    for module, r in adapted:
        kept = act * r  # lora_A's output, kept for lora_B's weight gradient
        if module.kind == "embedding":  # the input is token ids
            by_layer[module.layer] = by_layer.get(module.layer, 0) + kept
            continue
        width = module.in_features or 0
        if dropout:
            kept += width  # the dropout mask, one byte a value
        role = block.roles.get(_relative(module) or "")
        if mixed or dropout:
            # PEFT casts the input to the fp32 LoRA weights' dtype and autocast casts it back for the matmul: each
            # adapted layer keeps its own compute-dtype copy (the dropped-out copy, with dropout).
            kept += act * width
        elif role is not None and role[1] == "input":
            # In fp32, q/k/v (or gate/up) read one tensor, the norm's output, which nothing else keeps.
            if (module.layer, role[0]) not in shared:
                shared.add((module.layer, role[0]))
                kept += act * width
        elif role is None or role[0] != "Attention" or arch.eager_attention:
            # The MLP's product (or an eager attention's transposed output, or an input outside the blocks) is kept
            # only for this; a fused attention kernel already keeps its output, which o_proj reads.
            kept += act * width
        by_layer[module.layer] = by_layer.get(module.layer, 0) + kept
    in_layers = [value for layer, value in by_layer.items() if layer is not None]
    return by_layer, max(in_layers, default=0)


def _layers_keeping_activations(inventory: Inventory, adapted: Sequence[tuple[Module, int]],
                                saved: Sequence[Module], biases_train: bool) -> int:
    """Blocks from the first one that holds a trainable weight: without checkpointing, no gradient flows through
    the blocks before it, so they keep nothing."""
    layers = inventory.num_layers or 1
    if biases_train:
        return layers
    first = layers
    for module in [m for m, _ in adapted] + list(saved):
        if module.layer is not None:
            first = min(first, module.layer)
        elif module.name != inventory.output_embedding:
            return layers  # an embedding (or anything outside the blocks but the head) trains: every block
    return layers - first


def lm_head_bytes(scored_tokens: int, vocab: int, hidden: int, act: int, device: Device = "cuda") -> int:
    """What TRL's chunked LM head holds at its peak (its backward) for `scored_tokens` positions: one tile of logits
    in the compute dtype (`act` bytes), the fp32 gradient of the hidden states, and per-token statistics."""
    tile = min(scored_tokens, TILE_TOKENS) * min(vocab, TILE_VOCAB)
    tile_bytes = act + (TILE_BYTES_WITHOUT_TRITON if device == "cpu" else 0)
    return tile * tile_bytes + scored_tokens * (hidden + LM_HEAD_FLOATS_PER_TOKEN) * 4


def estimate_memory(
    inventory: Inventory,
    trainable_params: int,
    *,
    adapted: Sequence[tuple[Module, int]] = (),
    saved: Sequence[Module] = (),
    biases_train: bool = False,
    lora_dropout: float = 0.0,
    reference_adapter: bool = False,
    precision: Precision,
    sequence_length: int,
    batch_size: int,
    gradient_checkpointing: bool,
    device: Device = "cuda",
) -> MemoryEstimate:
    """Peak training memory for one micro-batch of `batch_size` sequences, by component; `adapted` is (module, rank)
    of each LoRA layer; `reference_adapter`: DPO's frozen copy of the adapter is held too; `device`: "cpu" for the
    LM head's tiles as a CPU holds them (the measured checks run there)."""
    # A multimodal model's vision tower is not called by a text-only step: its LoRA layers keep nothing.
    adapted = [(module, r) for module, r in adapted if inventory.in_language_model(module)]
    saved = [module for module in saved if inventory.in_language_model(module)]
    mixed = precision != "fp32"
    act = 4 if not mixed else 2  # bytes of an activation: autocast computes in bf16 / fp16 (4bit: bf16)
    arch = architecture(inventory)
    # The worker trains every trainable weight in fp32 (LoRA matrices, modules_to_save copies, freed biases); DPO
    # keeps a frozen fp32 copy of them as its reference.
    adapter_weights = trainable_params * 4 * (2 if reference_adapter else 1)
    gradients = trainable_params * 4
    # torch AdamW keeps exp_avg and exp_avg_sq in each parameter's dtype: fp32.
    optimizer_states = 2 * trainable_params * 4

    tokens = sequence_length * batch_size
    hidden = inventory.hidden_size or 0
    per_layer = _layer_bytes_per_token(inventory, arch, act, mixed, sequence_length)
    lora_by_layer, lora_one_layer = _lora_bytes_per_token(inventory, arch, adapted, act, mixed, lora_dropout > 0)
    # After the blocks: the final norm's fp32 input, LoRA on modules outside the blocks, the inputs of full
    # trainable copies (a saved lm_head needs its input for its weight gradient), GPT-2's embedding dropout mask.
    after = hidden * 4 + lora_by_layer.get(None, 0) + (hidden if arch.embedding_dropout else 0)
    after += sum(act * (m.in_features or 0) for m in saved if m.kind in LINEAR_KINDS)
    # Backward holds the gradients of a block's widest tensors beside what it kept: about two of them, in fp32.
    widest = max(block_widths(inventory).mlp_inner,
                 (inventory.config.get("num_attention_heads") or 1) * sequence_length if arch.eager_attention else 0)
    in_flight = 2 * widest * 4
    if gradient_checkpointing:
        # Each block keeps only its input. transformers makes the embeddings' output require a gradient for
        # checkpointing, so every block runs backward and that output gets a gradient too. The rest comes and goes:
        # what follows the blocks lives until the loss's backward, then one block at a time is recomputed in full.
        layers = inventory.num_layers or 1
        per_token = (layers + 1) * hidden * act + max(after, per_layer + lora_one_layer + in_flight)
    else:
        keeping = _layers_keeping_activations(inventory, adapted, saved, biases_train)
        per_token = keeping * per_layer + sum(value for layer, value in lora_by_layer.items() if layer is not None)
        per_token += after + in_flight
    activations = tokens * per_token
    if mixed:
        # Autocast's compute-dtype copies of the fp32 trainable weights, kept for backward.
        activations += trainable_params * 2
    if precision == "4bit":
        # bitsandbytes de-quantises one weight at a time to bf16 for its matmul.
        activations += 2 * max((m.weight_numel for m in _quantised(inventory)), default=0)
    vocab = inventory.config.get("vocab_size") or 0
    logits = lm_head_bytes(tokens - batch_size, vocab, hidden, act, device)
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
