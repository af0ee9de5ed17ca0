"""The create-job request as OpenAI's API shapes it, plus Tuneboard's `lora` / `training` extensions.

Turns it into the JobConfig the job stores. OpenAI's hyperparameters map onto the training settings:
n_epochs -> num_epochs, batch_size -> batch_size, learning_rate_multiplier x BASE_LEARNING_RATE ->
learning_rate; an explicit `training.learning_rate` wins. Must not import torch or `workers`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.estimator.job_config import DpoLoss, DpoSettings, JobConfig, TrainingMethod, TrainingSettings
from app.estimator.lora_settings import LoraSettings

# The schema's own default: a multiplier of 1 trains at the rate a job gets when it names none.
BASE_LEARNING_RATE = TrainingSettings.model_fields["learning_rate"].default
Auto = Literal["auto"]
# OpenAI's limits on metadata: 16 pairs, keys up to 64 characters, values up to 512.
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Bounds checked here so an error names the field the caller sent, not the training setting it maps to.
    n_epochs: Annotated[int, Field(ge=1, le=1000)] | Auto | None = Field(
        None, description="Passes over the training file."
    )
    batch_size: Annotated[int, Field(ge=1, le=4096)] | Auto | None = Field(None, description="Micro-batch size.")
    learning_rate_multiplier: Annotated[float, Field(gt=0)] | Auto | None = Field(
        None, description=f"Multiplies Tuneboard's base learning rate of {BASE_LEARNING_RATE}."
    )


class SupervisedMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: Hyperparameters | None = None


class DpoHyperparameters(Hyperparameters):
    beta: Annotated[float, Field(gt=0, le=10)] | Auto | None = Field(
        None, description="How far the adapter may move from the reference; TRL's default 0.1 when auto.")
    loss_type: DpoLoss | None = Field(None, description="Tuneboard's extension: TRL's DPO loss, sigmoid by default.")


class DpoMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: DpoHyperparameters | None = None


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["supervised", "dpo"] = Field(
        "supervised", description="supervised: LoRA on chat, prompt/completion or text records; dpo: LoRA by direct "
        "preference optimisation on preference pairs (TRL's DPOTrainer).")
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None

    def training_method(self) -> TrainingMethod:
        """The stored form of this method."""
        given = self.dpo.hyperparameters if self.dpo and self.dpo.hyperparameters else DpoHyperparameters()
        dpo = DpoSettings(**{key: value for key, value in (("beta", given.beta), ("loss_type", given.loss_type))
                             if value is not None and value != "auto"})
        return TrainingMethod(type=self.type, dpo=dpo)


class CreateJobRequest(BaseModel):
    """POST /v1/fine_tuning/jobs."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., min_length=1, examples=["HuggingFaceTB/SmolLM2-135M-Instruct"])
    training_file: str = Field(..., min_length=1)
    validation_file: str | None = None
    suffix: str | None = Field(None, max_length=64)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    metadata: dict[MetadataKey, MetadataValue] | None = Field(
        None, max_length=16, description="Up to 16 string pairs, echoed back and filterable in the list."
    )
    hyperparameters: Hyperparameters | None = Field(None, description="Deprecated by OpenAI; use method.")
    method: Method | None = None
    integrations: list[Any] | None = Field(None, max_length=0, description="Not supported; leave empty.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="peft.LoraConfig fields.")
    training: TrainingSettings = Field(
        default_factory=TrainingSettings, description="The run's training settings; those given override `method`'s "
        "hyperparameters and `seed`.")
    queue: str | None = Field(None, min_length=1, max_length=128, description="Worker queue (GPU class).")

    def hyperparameters_given(self) -> Hyperparameters:
        """The hyperparameters from `method` (of its type), else the legacy top-level field, else none."""
        if self.method and self.method.type == "dpo":
            return self.method.dpo.hyperparameters if self.method.dpo and self.method.dpo.hyperparameters \
                else Hyperparameters()
        if self.method and self.method.supervised and self.method.supervised.hyperparameters:
            return self.method.supervised.hyperparameters
        return self.hyperparameters or Hyperparameters()

    def to_job_config(self) -> JobConfig:
        """The stored config; raises pydantic's ValidationError naming the `training.*` field at fault."""
        training: dict[str, Any] = {}
        given = self.hyperparameters_given()
        if isinstance(given.n_epochs, int):
            training["num_epochs"] = given.n_epochs
        if isinstance(given.batch_size, int):
            training["batch_size"] = given.batch_size
        if isinstance(given.learning_rate_multiplier, float | int):
            training["learning_rate"] = BASE_LEARNING_RATE * given.learning_rate_multiplier
        if self.seed is not None:
            training["seed"] = self.seed
        training.update(self.training.model_dump(include=self.training.model_fields_set))
        method = self.method.training_method() if self.method else TrainingMethod()
        return JobConfig(model=self.model, lora=self.lora, training=TrainingSettings.model_validate(training),
                         method=method)
