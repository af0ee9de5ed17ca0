"""LoRA training on a worker: `train(run, reporter)` and the types around it.

    from workers.training import TrainingRun, Reporter, TrainingResult, TrainingFailure, train

Importing this package is cheap (no torch): `train` imports the ML stack when it is called.
Only `workers/` imports torch / transformers / peft; `app` never imports `workers`.
"""

from __future__ import annotations

from workers.training.contract import Reporter, TrainingFailure, TrainingResult, TrainingRun
from workers.training.run import train

__all__ = ["Reporter", "TrainingFailure", "TrainingResult", "TrainingRun", "train"]
