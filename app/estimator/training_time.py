"""The compute a run will need before it starts: padded tokens, training and evaluation FLOPs.

Steps follow transformers' Trainer (see `run_plan`). Every micro-batch is padded to its longest example,
so the tokens computed on are steps × batch × accumulation × the expected padded length; evaluation runs
at the start, then every `eval_steps` (the worker's default is a tenth of the run). Dividing by a queue's
measured FLOP/s (`app.fleet.throughput`) gives the time. Pure stdlib + pydantic; must not import torch or
`workers`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, Field

from app.estimator.inventory import Inventory, Module
from app.estimator.job_config import TrainingSettings
from app.estimator.run_plan import plan_run
from app.estimator.training_flops import FlopsPerToken, elementwise_values_per_token, flops_per_token

# The worker evaluates every tenth of the run when eval_steps is not set (workers.training.arguments).
DEFAULT_EVAL_FRACTION = 0.1
TokensSource = Literal["measured", "characters", "sequence_length"]


class FlopsModel(BaseModel):
    """FLOPs per token as `fixed + per_length × L`, training and evaluation; kept with a job to re-cost it."""

    fixed: float
    per_length: float
    forward_fixed: float
    forward_per_length: float
    # Values written per token (`elementwise_values_per_token`); 0 in estimates stored before it was counted.
    elementwise: float = 0.0
    forward_elementwise: float = 0.0

    def run_flops(self, training_tokens: float, training_length_sum: float, evaluation_tokens: float = 0,
                  evaluation_length_sum: float = 0) -> float:
        """FLOPs of a run that computed on these padded tokens (and sums of their sequences' lengths)."""
        return (self.fixed * training_tokens + self.per_length * training_length_sum
                + self.forward_fixed * evaluation_tokens + self.forward_per_length * evaluation_length_sum)

    def run_elementwise(self, training_tokens: float, evaluation_tokens: float = 0) -> float:
        """Values written by a run that computed on these padded tokens."""
        return self.elementwise * training_tokens + self.forward_elementwise * evaluation_tokens


class QueueTime(BaseModel):
    """How long the run takes on one queue's workers of one device class."""

    queue: str
    device: str = Field(..., description="The worker's GPU name, or 'cpu'.")
    flops_per_second: float = Field(..., description="The FLOP/s this run achieves there: its FLOPs ÷ seconds.")
    seconds_per_step: float = Field(0.0, description="What each optimizer step costs beyond its FLOPs, as measured.")
    seconds_per_value: float = Field(0.0, description="What each value written outside matrix multiplies costs.")
    calibrated_runs: int = Field(..., description="Finished runs on this queue and device it was measured from; "
                                                  "0 means a stated default.")
    seconds: float


class TrainingTime(BaseModel):
    """The run's compute, and its duration on each live queue (filled in by the web layer)."""

    steps: int
    padded_tokens: int = Field(..., description="Training tokens computed on, padding included.")
    tokens_per_example: float = Field(..., description="Expected padded length of an example.")
    tokens_source: TokensSource = Field(..., description="Where tokens_per_example comes from: the tokenized "
                                                         "dataset, its characters (÷4), or sequence_length.")
    evaluations: int
    flops: float = Field(..., description="Training and evaluation FLOPs of the whole run.")
    elementwise_values: float = Field(0.0, description="Values the whole run writes outside matrix multiplies, "
                                                       "whose memory traffic dominates narrow models.")
    flops_model: FlopsModel
    gpus: int = Field(1, description="GPUs sharing the FLOPs: each queue's duration assumes they split them evenly "
                                     "(data parallel), every step's fixed cost still paid once.")
    queues: list[QueueTime] = Field(default_factory=list)


def evaluations(steps: int, eval_steps: int | None, has_validation: bool) -> int:
    """How many evaluations the worker runs: one before training, then every eval_steps."""
    if not has_validation:
        return 0
    interval = eval_steps or max(1, math.ceil(DEFAULT_EVAL_FRACTION * steps))
    return 1 + steps // interval


def training_time(
    inventory: Inventory,
    training: TrainingSettings,
    *,
    adapter_params: int,
    saved_params: int,
    adapted: Sequence[tuple[Module, int]] = (),
    lora_dropout: bool = False,
    examples: int,
    validation_examples: int,
    tokens_per_example: float | None,
    tokens_source: TokensSource,
    preference: bool = False,
) -> TrainingTime:
    """The run's steps, padded tokens and FLOPs; `tokens_per_example` None assumes full sequences. A preference
    (DPO) run computes on two sequences an example (prompt + chosen, prompt + rejected), each also run forward
    through the reference (the adapter swapped for its frozen copy), in training and in evaluation;
    `tokens_per_example` is then the length of one of those sequences."""
    if tokens_per_example is None:
        tokens_per_example, tokens_source = float(training.sequence_length), "sequence_length"
    length = min(float(tokens_per_example), float(training.sequence_length))
    # Each of the GPUs takes its own micro-batch: a step consumes batch_size x gpus examples per accumulation.
    plan = plan_run(examples=examples, batch_size=training.batch_size * training.gpus,
                    gradient_accumulation_steps=training.gradient_accumulation_steps,
                    num_epochs=training.num_epochs, max_steps=training.max_steps,
                    tokens_per_example=length, tokens_measured=tokens_source == "measured")
    per_token: FlopsPerToken = flops_per_token(inventory, adapter_params=adapter_params, saved_params=saved_params,
                                               gradient_checkpointing=training.gradient_checkpointing)
    values = elementwise_values_per_token(inventory, adapted, lora_dropout=lora_dropout,
                                          gradient_checkpointing=training.gradient_checkpointing)
    reference = 1 if preference else 0  # forward passes through the reference, per pass of the policy
    model = FlopsModel(fixed=per_token.fixed + reference * per_token.forward_fixed,
                       per_length=per_token.per_length + reference * per_token.forward_per_length,
                       forward_fixed=(1 + reference) * per_token.forward_fixed,
                       forward_per_length=(1 + reference) * per_token.forward_per_length,
                       elementwise=values.training + reference * values.evaluation,
                       forward_elementwise=(1 + reference) * values.evaluation)
    sequences = 2 if preference else 1
    padded = plan.steps * training.effective_batch_size * sequences * length
    evals = evaluations(plan.steps, training.eval_steps, validation_examples > 0)
    evaluated = evals * validation_examples * sequences * length
    flops = model.run_flops(padded, padded * length, evaluated, evaluated * length)
    return TrainingTime(steps=plan.steps, padded_tokens=round(padded), tokens_per_example=length,
                        tokens_source=tokens_source, evaluations=evals, flops=flops,
                        elementwise_values=model.run_elementwise(padded, evaluated), flops_model=model,
                        gpus=training.gpus)
