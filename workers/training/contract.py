"""What the Celery task hands the trainer and gets back: the run, the reporter, the result, the failure.

Torch-free on purpose, so the task module and its tests can build these objects cheaply; the
torch side lives in `workers.training.run` and is imported only when a run starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from app.estimator.job_config import JobConfig

if TYPE_CHECKING:
    from app.datasets.format_common import Example

FailureCode = Literal["out_of_memory", "model_not_found", "dataset_problem", "unsupported", "diverged"]
FAILURE_CODES: frozenset[str] = frozenset({"out_of_memory", "model_not_found", "dataset_problem", "unsupported",
                                           "diverged"})


class TrainingFailure(Exception):
    """A run that cannot succeed as configured; `reason` says why in plain words, `code` classifies it."""

    def __init__(self, code: FailureCode, reason: str):
        if code not in FAILURE_CODES:
            raise ValueError(f"unknown failure code {code!r}")
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class TrainingRun:
    """One attempt at one job: config, data, and where to write."""

    job_id: str
    config: JobConfig
    train_examples: list[Example]
    eval_examples: list[Example] | None
    output_dir: Path  # checkpoints in output_dir/checkpoints/checkpoint-<step>, adapter in output_dir/adapter
    resume_from: Path | None  # a checkpoint dir from an earlier attempt
    data_dir: Path  # the Tuneboard data dir (converted demo model cache)
    start_adapter: Path | None = None  # the folder of the adapter this run continues (config.start_from)

    @property
    def checkpoints_dir(self) -> Path:
        return Path(self.output_dir) / "checkpoints"

    @property
    def adapter_dir(self) -> Path:
        return Path(self.output_dir) / "adapter"


class Reporter(Protocol):
    """Where progress goes. Called on the training thread: every method must return quickly.

    A reporter may also have a boolean `attempt_lost`: True once a newer attempt owns the job, when
    `should_stop` ends the run without a last log or checkpoint."""

    def on_start(
        self, *, total_steps: int, trainable_params: int, all_params: int, device: str, resumed_from_step: int
    ) -> None: ...

    def on_log(self, *, step: int, epoch: float, metrics: dict[str, float]) -> None: ...

    def on_checkpoint(self, *, step: int, path: Path) -> None: ...

    def on_samples(self, *, step: int, samples: list[dict], seconds: float) -> None: ...

    def on_event(self, message: str, *, level: str = "info") -> None: ...

    def should_stop(self) -> bool: ...


@dataclass
class TrainingResult:
    """What a finished or stopped run leaves behind."""

    trainable_params: int
    all_params: int
    global_step: int
    total_steps: int
    stopped: bool
    adapter_dir: Path | None  # None when stopped
    final_metrics: dict[str, float] = field(default_factory=dict)
    trained_tokens: int = 0
