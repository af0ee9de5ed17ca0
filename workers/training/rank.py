"""One training process of a multi-GPU job, started by torchrun (`workers.training.multi_gpu`): reads the attempt
it belongs to from a spec file, trains its share with `train()`, and, on rank 0 only, reports to the job and
writes how the run ended for the worker process that started it.

Run as `python -m torch.distributed.run ... -m workers.training.rank SPEC.json`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

log = logging.getLogger("workers.training.rank")


class QuietReporter:
    """The Reporter of ranks other than 0: rank 0 speaks for the job; these never ask to stop on their own (a
    stop reaches them through the step's sync)."""

    attempt_lost = False

    def on_start(self, **_: object) -> None: ...

    def on_log(self, **_: object) -> None: ...

    def on_checkpoint(self, **_: object) -> None: ...

    def on_samples(self, **_: object) -> None: ...

    def on_event(self, message: str, **_: object) -> None: ...

    def should_stop(self) -> bool:
        return False


def _write_outcome(path: Path, outcome: dict) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(outcome, default=str))
    partial.replace(path)  # the worker never reads half a file


def main(spec_path: str) -> int:
    """Train this rank's share of the attempt the spec names; the exit status is 0 unless it crashed."""
    import torch
    import torch.distributed as dist

    from app import redis_client
    from app.datasets.job_examples import job_examples
    from app.db import new_session
    from app.estimator.job_config import JobConfig
    from app.settings import get_settings
    from app.tables import Job
    from workers.job_reporter import JobReporter
    from workers.training import TrainingFailure, TrainingRun, train

    spec = json.loads(Path(spec_path).read_text())
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # "cuda" now means this rank's GPU
    # Joined before the model loads, so the run knows its rank from the start; Accelerate finds it joined.
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    settings = get_settings()
    config = JobConfig.model_validate(spec["config"])
    with new_session() as session:
        job = session.get(Job, spec["job_id"])
        train_examples, eval_examples = job_examples(settings, session, job, seed=config.training.seed,
                                                     validation_split=config.training.validation_split)
    run = TrainingRun(job_id=spec["job_id"], config=config, train_examples=train_examples, eval_examples=eval_examples,
                      output_dir=Path(spec["output_dir"]), data_dir=Path(spec["data_dir"]),
                      resume_from=Path(spec["resume_from"]) if spec["resume_from"] else None,
                      start_adapter=Path(spec["start_adapter"]) if spec["start_adapter"] else None)
    if rank == 0:
        reporter = JobReporter(settings, redis_client.get_redis(), spec["job_id"], worker=spec["worker"],
                               attempt=spec["attempt"])
        reporter.continue_after(spec["resume_step"])
    else:
        reporter = QuietReporter()
    outcome_path = Path(spec["outcome"])
    try:
        result = train(run, reporter)
        outcome = {"result": asdict(result)}
    except TrainingFailure as exc:  # the same on every rank: each ends cleanly, rank 0 says why
        outcome = {"failure": {"code": exc.code, "reason": exc.reason}}
    finally:
        if rank == 0:
            reporter.flush()
    if rank == 0:
        _write_outcome(outcome_path, outcome)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def exit_without_teardown(run: Callable[[], int]) -> None:
    """Run a rank's main and end the process with its status, skipping the interpreter's teardown: freeing a
    process group there can deadlock (gloo's worker thread waits for the GIL the finalizing thread holds while it
    waits for that worker), and a rank that never exits would hold its job forever. By then the rank has written
    all it writes."""
    import traceback

    try:
        status = run()
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # a crash still exits, with a status torchrun reports
        traceback.print_exc()
        status = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format=f"[rank {os.environ.get('RANK', '0')}] %(levelname)s %(name)s: "
                                                   "%(message)s")
    exit_without_teardown(lambda: main(sys.argv[1]))
