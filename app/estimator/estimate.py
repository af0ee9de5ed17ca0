"""The estimate: request and response shapes, and the one function that computes it from an inventory.

Pure stdlib + pydantic; must not import torch or `workers`.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.estimator.advice import Advice, advise
from app.estimator.counting import count, safetensors_sizes
from app.estimator.inventory import Inventory, Module
from app.estimator.job_config import JobConfig
from app.estimator.matching import select_modules
from app.estimator.memory import GPU_SIZES_GB, Device, Precision, estimate_memory
from app.estimator.parallelism import RunStrategy, per_gpu, resolve_strategy
from app.estimator.training_time import TokensSource, TrainingTime, training_time


class EstimateRequest(JobConfig):
    """A job's settings (the same body `POST /v1/fine_tuning/jobs` takes), plus facts about its data for advice."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _data_facts_in_training(cls, data: Any) -> Any:
        # Older clients sent the data facts inside `training`; they describe the data, not the run.
        if isinstance(data, dict) and isinstance(data.get("training"), dict):
            training = dict(data["training"])
            for key in ("dataset_examples", "has_validation_set"):
                if key in training:
                    data = {**data, key: training.pop(key)}
            data = {**data, "training": training}
        return data

    dataset_examples: int | None = Field(None, ge=1, description="Training examples, for rank advice and the "
                                                                 "run's length.")
    has_validation_set: bool = Field(False, description="Whether the run has validation data, for advice.")
    dataset_tokens_per_example: float | None = Field(
        None, gt=0, le=10_000_000, description="Expected tokens per training example once padded to its "
        "micro-batch's longest; sequence_length is assumed when not given.")
    tokens_source: TokensSource | None = Field(None, description="Where dataset_tokens_per_example comes from: "
                                               "'measured' (tokenized, the default), 'characters' (÷4).")
    validation_examples: int = Field(0, ge=0, description="Examples evaluated at each evaluation.")


class ModuleBreakdown(BaseModel):
    pattern: str = Field(..., description="Module name with the layer index as '*'.")
    type: str
    in_features: int
    out_features: int
    r: int
    count: int
    params_each: int
    params_total: int
    layers: list[int]
    experts: int = Field(1, description="Experts in a stacked expert weight adapted through target_parameters: "
                                        "LoRA of rank r for each.")
    parameter: bool = Field(False, description="Adapted through target_parameters rather than target_modules.")


class AdapterBytes(BaseModel):
    fp32: int
    bf16: int


class MemoryBreakdown(BaseModel):
    precision: Precision
    base_weights: int
    adapter_weights: int
    gradients: int
    optimizer_states: int
    activations: int
    logits: int
    cuda_overhead: int
    strategy_buffers: int = Field(0, description="What the multi-GPU strategy holds to move states between GPUs: "
                                                 "DDP's gradient buckets, ZeRO-2's reduce bucket, the block FSDP "
                                                 "and ZeRO-3 gather (and prefetch).")
    total: int = Field(..., description="Bytes each GPU holds at the peak.")
    fits: dict[str, bool] = Field(..., description="GPU size in GB -> whether each GPU's share fits.")
    gpus: int = Field(1, description="GPUs the run trains on; every figure here is per GPU.")
    strategy: RunStrategy = Field("single", description="How they share it (training.strategy, auto resolved).")
    effective_batch_size: int = Field(..., description="Examples per optimizer step: batch_size x "
                                                       "gradient_accumulation_steps x gpus.")


class EstimateResponse(BaseModel):
    model: str
    trainable_params: int
    all_params: int
    trainable_percent: float
    peft_summary: str = Field(..., description="The line PEFT's print_trainable_parameters() prints.")
    base_params: int
    adapter_params: int
    modules_to_save_params: int
    bias_params: int
    adapted_modules: int
    modules: list[ModuleBreakdown]
    modules_to_save: list[str]
    adapter_bytes: AdapterBytes
    scale: float = Field(..., description="lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA.")
    memory: MemoryBreakdown
    training_time: TrainingTime | None = Field(
        None, description="The run's FLOPs (when its length is known: dataset_examples or max_steps), and its "
        "duration on each live queue.")
    warnings: list[Advice]


def estimate(inventory: Inventory, request: EstimateRequest, *, device: Device = "cuda",
             gpu_bytes: int | None = None) -> EstimateResponse:
    """Exact counts, adapter size, memory and advice for a LoRA config on a model (memory as a GPU holds it, or as
    a CPU does with device="cpu", for checks against measurements); `gpu_bytes`: the memory of the GPUs the run
    will get, which decides what strategy `auto` becomes (80 GiB when not known)."""
    lora, training = request.lora, request.training
    selection = select_modules(inventory, lora)
    counts = count(inventory, lora, selection)
    fp32_bytes, bf16_bytes = safetensors_sizes(counts.files, (4, 2))
    # DPO: a micro-batch of B pairs is 2B sequences, and TRL keeps a frozen copy of the adapter as the reference.
    preference = request.method.type == "dpo"
    memory = estimate_memory(
        inventory,
        counts.trainable,
        reference_adapter=preference,
        adapted=[(a.module, a.r) for a in selection.adapted],
        saved=selection.saved,
        biases_train=counts.bias_params > 0,
        lora_dropout=lora.lora_dropout,
        precision=training.weights_precision,
        sequence_length=training.sequence_length,
        batch_size=training.batch_size * (2 if preference else 1),
        gradient_checkpointing=training.gradient_checkpointing,
        device=device,
    )
    strategy = resolve_strategy(training.gpus, training.strategy, memory.total, gpu_bytes)
    memory = per_gpu(memory, inventory, gpus=training.gpus, strategy=strategy, trainable_params=counts.trainable)
    return EstimateResponse(
        model=inventory.model_id,
        trainable_params=counts.trainable,
        all_params=counts.all,
        trainable_percent=counts.trainable_percent,
        peft_summary=counts.peft_line(),
        base_params=inventory.base_params,
        adapter_params=counts.adapter_params,
        modules_to_save_params=counts.saved_params,
        bias_params=counts.bias_params,
        adapted_modules=len(selection.adapted),
        modules=[
            ModuleBreakdown(
                pattern=g.pattern, type=g.type, in_features=g.in_features, out_features=g.out_features, r=g.r,
                count=g.count, params_each=g.params_each, params_total=g.params_total, layers=list(g.layers),
                experts=g.experts, parameter=g.parameter,
            )
            for g in counts.groups
        ],
        modules_to_save=[m.name for m in selection.saved],
        adapter_bytes=AdapterBytes(fp32=fp32_bytes, bf16=bf16_bytes),
        scale=lora.lora_alpha / (math.sqrt(lora.r) if lora.use_rslora else lora.r),
        memory=MemoryBreakdown(
            precision=memory.precision,
            base_weights=memory.base_weights,
            adapter_weights=memory.adapter_weights,
            gradients=memory.gradients,
            optimizer_states=memory.optimizer_states,
            activations=memory.activations,
            logits=memory.logits,
            cuda_overhead=memory.cuda_overhead,
            strategy_buffers=memory.strategy_buffers,
            total=memory.total,
            fits={str(size): ok for size, ok in zip(GPU_SIZES_GB, memory.fits().values(), strict=True)},
            gpus=memory.gpus,
            strategy=strategy,
            effective_batch_size=training.effective_batch_size,
        ),
        training_time=_training_time(inventory, request, counts.adapter_params, counts.saved_params,
                                     [(a.module, a.r) for a in selection.adapted]),
        warnings=advise(
            inventory, lora, selection,
            dataset_examples=request.dataset_examples, has_validation_set=request.has_validation_set,
        ),
    )


def _training_time(inventory: Inventory, request: EstimateRequest, adapter_params: int, saved_params: int,
                   adapted: list[tuple[Module, int]]) -> TrainingTime | None:
    training = request.training
    examples = request.dataset_examples
    if examples is None and training.max_steps:
        examples = training.max_steps * training.effective_batch_size
    if examples is None:
        return None
    return training_time(
        inventory, training, adapter_params=adapter_params, saved_params=saved_params, adapted=adapted,
        lora_dropout=request.lora.lora_dropout > 0, examples=examples, preference=request.method.type == "dpo",
        validation_examples=request.validation_examples if request.has_validation_set else 0,
        tokens_per_example=request.dataset_tokens_per_example,
        tokens_source=request.tokens_source or "measured",
    )
