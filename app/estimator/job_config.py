"""What a fine-tuning job carries: the base model, the LoRA settings, the training knobs and the method.

The one schema of a job's settings, the one the REST API documents: the configuration form, the estimate, the
launch, the clone and the worker all read it, so a default or a limit is written here once. It is stored with
the job, shown on its page and turned by the worker into `peft.LoraConfig` and `transformers.TrainingArguments`
in one place. Pure pydantic; must not import torch, transformers, peft or `workers`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from app.estimator.lora_settings import LoraSettings

Scheduler = Literal["linear", "cosine", "constant", "constant_with_warmup"]
TrainPrecision = Literal["bf16", "fp16", "fp32"]
Strategy = Literal["auto", "ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"]
MAX_GPUS = 64  # one host; several hosts are a cluster engine's job (docs/scaling.md)


class TrainingSettings(BaseModel):
    """Optimiser, schedule, batch and precision settings of one run."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _four_bit_shorthand(cls, data: Any) -> Any:
        # `precision: "4bit"` (the form's and the estimate's word for QLoRA) is NF4 weights computing in bf16.
        if isinstance(data, dict) and data.get("precision") == "4bit":
            data = {**data, "precision": "bf16", "load_in_4bit": True}
        return data

    learning_rate: float = Field(2e-4, gt=0, le=1, description="Peak learning rate of AdamW.")
    num_epochs: float = Field(3.0, gt=0, le=1000, description="Passes over the training set.")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides num_epochs when set.")
    batch_size: int = Field(4, ge=1, le=4096, description="Micro-batch size per device.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=4096)
    sequence_length: int = Field(
        1024, ge=16, le=1_048_576, description="Max tokens per example; longer ones are truncated."
    )
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of the steps spent warming up.")
    lr_scheduler: Scheduler = "linear"
    weight_decay: float = Field(0.0, ge=0, le=1)
    seed: int = Field(42, ge=0, le=2**32 - 1)
    precision: TrainPrecision = Field(
        "bf16", description="Compute precision; falls back to fp32 on a CPU worker. \"4bit\" is short for bf16 with "
        "load_in_4bit.")
    load_in_4bit: bool = Field(False, description="QLoRA: quantise the base to NF4 (needs CUDA and bitsandbytes).")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory, about a third slower.")
    logging_steps: int = Field(1, ge=1, le=100_000)
    eval_steps: int | None = Field(None, ge=1, description="Evaluate every N steps (needs validation data).")
    save_steps: int = Field(50, ge=1, le=1_000_000, description="Write a checkpoint every N steps.")
    loss_on: Literal["assistant", "all"] = Field(
        "assistant", description="Train on assistant / completion tokens only, or on every token."
    )
    validation_split: float = Field(
        0.0, ge=0, le=50, description="Percent of the training file held out for evaluation when no file is given."
    )
    held_out_samples: int = Field(
        8, ge=0, le=64, description="Held-out prompts that the base model and the adapter answer at the end of the "
        "run, shown beside the reference answers (needs validation data; 0 turns it off).")
    sample_max_new_tokens: int = Field(128, ge=1, le=4096,
                                       description="Longest answer to a held-out prompt, in tokens.")
    samples_at_checkpoints: bool = Field(
        False, description="Also answer the held-out prompts with the adapter at every checkpoint.")
    gpus: int = Field(1, ge=1, le=MAX_GPUS, description="GPUs one job trains on, one training process each, on one "
                      "worker that has that many.")
    strategy: Strategy = Field(
        "auto", description="How the GPUs share the run: ddp replicates the model and splits the batches; fsdp and "
        "deepspeed_zero3 also shard the weights, gradients and optimizer states; deepspeed_zero2 shards gradients "
        "and optimizer states. auto: ddp when a replica fits the GPU, else fsdp (resolved at launch).")

    @field_validator("strategy")
    @classmethod
    def _strategy_needs_gpus(cls, strategy: str, info: ValidationInfo) -> str:
        if info.data.get("gpus") == 1 and strategy != "auto":
            raise ValueError(f"strategy {strategy} spreads a run over several GPUs: set gpus to 2 or more, or "
                             "leave strategy at auto for one GPU")
        return strategy

    @property
    def effective_batch_size(self) -> int:
        """Examples per optimizer step: the micro-batch on each GPU, times accumulation, times GPUs."""
        return self.batch_size * self.gradient_accumulation_steps * self.gpus

    @property
    def weights_precision(self) -> Literal["bf16", "fp16", "fp32", "4bit"]:
        """How the base weights are held in memory: the compute precision, or 4bit under QLoRA."""
        return "4bit" if self.load_in_4bit else self.precision


DpoLoss = Literal["sigmoid", "ipo", "hinge", "robust"]


class DpoSettings(BaseModel):
    """Direct preference optimisation's own settings (TRL's DPOConfig)."""

    model_config = ConfigDict(extra="forbid")

    beta: float = Field(0.1, gt=0, le=10, description="How far the adapter may move from the reference: a larger "
                                                       "beta keeps it closer.")
    loss_type: DpoLoss = Field("sigmoid", description="sigmoid (the DPO paper), ipo, hinge (SLiC) or robust "
                                                      "(noisy preference labels).")


class TrainingMethod(BaseModel):
    """What the run optimises: supervised fine-tuning on examples, or DPO on preference pairs."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["supervised", "dpo"] = Field(
        "supervised", description="supervised trains on chat, prompt/completion or text records; dpo on preference "
        "pairs (prompt, chosen, rejected), against the model as it was before the run (the adapter disabled).")
    dpo: DpoSettings = Field(default_factory=DpoSettings)


class StartFrom(BaseModel):
    """The team's adapter a run continues (the usual recipe: supervised, then DPO from its result), set at launch
    from a fine_tuned_model id given as the model."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., description="The fine_tuned_model (or checkpoint) id the job was launched with.")
    job_id: str = Field(..., description="The job that trained that adapter.")
    adapter_key: str = Field(..., description="Where the adapter lies in the artifact store.")


class JobConfig(BaseModel):
    """Everything a worker needs to reproduce a run, apart from the data files."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., min_length=1, examples=["HuggingFaceTB/SmolLM2-135M-Instruct"])
    lora: LoraSettings = Field(default_factory=LoraSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    method: TrainingMethod = Field(default_factory=TrainingMethod)
    start_from: StartFrom | None = Field(None, description="The adapter this run continues; None trains a new one.")

    @model_validator(mode="after")
    def _qlora_precision(self) -> JobConfig:
        if self.training.load_in_4bit and self.training.precision == "fp32":
            raise ValueError("load_in_4bit computes in bf16 or fp16; choose one of those precisions")
        return self


def held_out_examples(examples: int, validation_split: float) -> int:
    """How many of a training file's examples a validation split holds out (rounded down)."""
    return int(examples * validation_split / 100)


def training_examples(examples: int, validation_split: float) -> int:
    """How many examples a run trains on once its validation split is held out."""
    return examples - held_out_examples(examples, validation_split)
