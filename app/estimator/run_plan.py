"""How long a run will be before it starts: optimizer steps, tokens seen, and an approximate duration.

Steps follow transformers' Trainer: ceil(ceil(examples / batch) / accumulation) per epoch, or
max_steps. Tokens use the dataset's measured token lengths when known, else ~4 characters a token.
Duration needs a throughput, taken from earlier runs of the same base model. Pure stdlib.
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
    seconds: float | None  # None without a throughput to go on

    @property
    def duration_text(self) -> str:
        """'about 12 min', or '' when unknown."""
        if self.seconds is None:
            return ""
        minutes = self.seconds / 60
        if minutes < 1:
            return f"about {max(1, round(self.seconds))} s"
        if minutes < 90:
            return f"about {round(minutes)} min"
        return f"about {minutes / 60:.1f} h"


def plan_run(*, examples: int, batch_size: int, gradient_accumulation_steps: int, num_epochs: float,
             max_steps: int | None, tokens_per_example: float, tokens_measured: bool,
             tokens_per_second: float | None) -> RunPlan:
    """The step count, tokens and duration of a run over `examples` training examples."""
    batches = math.ceil(examples / batch_size)
    per_epoch = max(1, math.ceil(batches / gradient_accumulation_steps))
    steps = max_steps if max_steps else math.ceil(per_epoch * num_epochs)
    epochs = steps / per_epoch
    tokens = round(tokens_per_example * examples * epochs)
    seconds = tokens / tokens_per_second if tokens_per_second else None
    return RunPlan(steps, per_epoch, epochs, tokens, tokens_measured, seconds)
