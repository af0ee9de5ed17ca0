"""A job on several GPUs, from the worker process that claimed it: start one training process per GPU with
torchrun (`workers.training.rank`), watch them, and turn how they ended into the `train()` result or failure.

The worker process keeps what is the attempt's own (the claim, the lease, the final write); rank 0 reports the
run's progress itself. The ranks die with the worker: torchrun gets SIGTERM the moment its parent dies
(PR_SET_PDEATHSIG) and ends every rank, and when one rank fails torchrun ends the others. Nothing here imports
torch: the training happens in the children.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from workers.training.contract import Reporter, TrainingFailure, TrainingResult, TrainingRun
from workers.training.strategies import run_strategy

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1
# How long the ranks get to stop on SIGTERM (after a lost lease) before they are killed.
STOP_GRACE_SECONDS = 30
# How long the ranks get to exit once rank 0 has written the outcome; one that lingers is stuck, not working.
EXIT_GRACE_SECONDS = 60
LOG_LINES_KEPT = 40


class RankCrashed(Exception):
    """A training process of the job ended without an outcome (killed, or crashed): the whole attempt ends."""


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if this worker process dies (even by SIGKILL), torchrun gets
    # SIGTERM and takes every rank down with it; no rank outlives the attempt that started it. Linux only: elsewhere
    # (a developer's Mac) a worker killed outright leaves torchrun to finish or fail on its own.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    os.setsid()


def torchrun_command(gpus: int, spec_path: Path) -> list[str]:
    """The torchrun command line that starts `gpus` ranks of `workers.training.rank` on this host."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
            "--max-restarts=0", "-m", "workers.training.rank", str(spec_path)]


def train_on_gpus(run: TrainingRun, reporter: Reporter, *, worker: str, attempt: int,
                  resume_step: int) -> TrainingResult:
    """Train `run` on run.config.training.gpus processes; returns rank 0's result, or raises its failure."""
    gpus = run.config.training.gpus
    folder = Path(run.output_dir) / "ranks"
    folder.mkdir(parents=True, exist_ok=True)
    outcome = folder / "outcome.json"
    outcome.unlink(missing_ok=True)
    spec = {"job_id": run.job_id, "config": run.config.model_dump(mode="json"), "worker": worker, "attempt": attempt,
            "output_dir": str(run.output_dir), "data_dir": str(run.data_dir), "resume_step": resume_step,
            "resume_from": str(run.resume_from) if run.resume_from else None,
            "start_adapter": str(run.start_adapter) if run.start_adapter else None, "outcome": str(outcome)}
    spec_path = folder / "spec.json"
    spec_path.write_text(json.dumps(spec))
    strategy = run_strategy(gpus, run.config.training.strategy)
    reporter.on_event(f"Starting {gpus} training processes (torchrun, {strategy}).")
    process = subprocess.Popen(torchrun_command(gpus, spec_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, preexec_fn=_die_with_parent, env=os.environ.copy())
    tail: deque[str] = deque(maxlen=LOG_LINES_KEPT)
    status = _supervise(process, reporter, tail, outcome)
    if outcome.is_file():
        ended = json.loads(outcome.read_text())
        if "failure" in ended:
            raise TrainingFailure(ended["failure"]["code"], ended["failure"]["reason"])
        if status == 0:
            return _result(ended["result"])
    log.error("job %s: training processes ended with status %s:\n%s", run.job_id, status, "".join(tail))
    last = next((line.strip() for line in reversed(tail) if line.strip()), "no output")
    raise RankCrashed(f"a training process of the job ended without finishing (torchrun exit status {status}); "
                      f"last output: {last}")


def _supervise(process: subprocess.Popen, reporter: Reporter, tail: deque[str], outcome: Path) -> int:
    """Relay the ranks' output to this worker's log until they end; end them if this attempt lost the job, or if
    they linger after the outcome was written."""
    import threading

    def relay() -> None:
        for line in process.stdout:
            tail.append(line)
            log.info("%s", line.rstrip())

    reader = threading.Thread(target=relay, name="ranks-output", daemon=True)
    reader.start()
    outcome_since: float | None = None
    lingering = False
    while process.poll() is None:
        if getattr(reporter, "attempt_lost", False):
            # A newer attempt owns the job: this one must write nothing more.
            _end_ranks(process)
            break
        if outcome_since is None and outcome.is_file():
            outcome_since = time.monotonic()
        if outcome_since is not None and time.monotonic() - outcome_since > EXIT_GRACE_SECONDS:
            log.warning("training processes still running %s s after their outcome: ending them", EXIT_GRACE_SECONDS)
            lingering = True
            _end_ranks(process)
            break
        time.sleep(0.5)
    status = process.wait()
    if lingering:
        status = 0  # the run ended (its outcome says how); only the exit hung
    reader.join(timeout=5)
    return status


def _end_ranks(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def _result(values: dict) -> TrainingResult:
    adapter_dir = values.get("adapter_dir")
    return TrainingResult(**{**values, "adapter_dir": Path(adapter_dir) if adapter_dir else None})
