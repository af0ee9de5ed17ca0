"""The one place a multi-GPU strategy (`training.strategy`, resolved) becomes Trainer settings: DDP, FSDP through
Accelerate, or a DeepSpeed ZeRO config. The Trainer and Accelerate do the distributing; this only chooses.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from workers.training.contract import TrainingFailure

# Strategies that split the weights themselves over the GPUs (each holds a shard), not only gradients and states.
SHARDING_STRATEGIES = ("fsdp", "deepspeed_zero3")


def run_strategy(gpus: int, strategy: str) -> str:
    """The strategy a run uses: "single" on one GPU; `auto` left unresolved at launch (the model's size was not known
    yet) is DDP."""
    if gpus == 1:
        return "single"
    return "ddp" if strategy == "auto" else strategy


def trainer_checkpointing(strategy: str, gradient_checkpointing: bool) -> bool:
    """Whether the Trainer itself checkpoints activations: not under FSDP, which does it per wrapped block."""
    return gradient_checkpointing and strategy != "fsdp"


def strategy_arguments(strategy: str, *, gradient_checkpointing: bool, no_split_modules: list[str]) -> dict[str, Any]:
    """TrainingArguments values for `strategy` ("single", "ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3");
    `no_split_modules`: the model's decoder block classes, the units FSDP wraps."""
    if strategy in ("single", "auto"):
        return {}
    if strategy == "ddp":
        # LoRA leaves most parameters frozen and every trainable one used: no search for unused ones each step.
        return {"ddp_find_unused_parameters": False}
    if strategy == "fsdp":
        return {
            "fsdp": "full_shard auto_wrap",
            "fsdp_config": {
                "transformer_layer_cls_to_wrap": no_split_modules,
                # Frozen and trainable weights share the blocks FSDP flattens: keep each parameter its own.
                "use_orig_params": True,
                "sync_module_states": True,
                # FSDP checkpoints its wrapped blocks itself (the run's own checkpointing is turned off for it:
                # `trainer_checkpointing`).
                "activation_checkpointing": gradient_checkpointing,
            },
        }
    if importlib.util.find_spec("deepspeed") is None:
        raise TrainingFailure("unsupported", f"strategy {strategy} needs DeepSpeed on the worker "
                              "(pip install deepspeed), which this worker does not have; choose fsdp or ddp")
    stage = 3 if strategy == "deepspeed_zero3" else 2
    # "auto" values are filled in by the Trainer from its own arguments, so the two never disagree.
    config = {"zero_optimization": {"stage": stage, "overlap_comm": True, "contiguous_gradients": True},
              "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
              "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
              "gradient_accumulation_steps": "auto", "gradient_clipping": "auto"}
    if stage == 3:
        # Gather the full weights when saving, so the adapter written at the end is a normal PEFT adapter.
        config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    return {"deepspeed": config}
