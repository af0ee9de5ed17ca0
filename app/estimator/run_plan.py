"""How long a run will be before it starts: optimizer steps and tokens seen (its duration: `training_time`).

Steps follow transformers' Trainer: ceil(ceil(examples / batch) / accumulation) per epoch, or
max_steps. Tokens use the dataset's measured token lengths when known, else ~4 characters a token.
Pure stdlib.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CHARACTERS_PER_TOKEN = 4.0  # a common rule of thumb for English text with BPE tokenizers


@dataclass(frozen=True, slots=True)
class RunPlan:
    steps: int
    steps_per_epoch: int
    epochs: float
    tokens: int
    tokens_measured: bool  # False when tokens are estimated from characters


def plan_run(*, examples: int, batch_size: int, gradient_accumulation_steps: int, num_epochs: float,
             max_steps: int | None, tokens_per_example: float, tokens_measured: bool) -> RunPlan:
    """The step count and tokens of a run over `examples` training examples."""
    batches = math.ceil(examples / batch_size)
    per_epoch = max(1, math.ceil(batches / gradient_accumulation_steps))
    steps = max_steps if max_steps else math.ceil(per_epoch * num_epochs)
    epochs = steps / per_epoch
    tokens = round(tokens_per_example * examples * epochs)
    return RunPlan(steps, per_epoch, epochs, tokens, tokens_measured)
