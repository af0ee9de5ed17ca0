"""Each queue's measured training speed per device class, and run-time predictions.

A finished run reports the padded tokens it computed on, its optimizer steps and its training time; the
FLOPs model stored with its launch estimate turns the tokens into the FLOPs it really did. A run's time is
modelled as `steps × seconds_per_step + FLOPs / FLOP/s`: the FLOPs term is the model's arithmetic, the
per-step term what every step costs whatever its size (optimizer update, launches, logging), which
dominates small models. A queue fits both on its last runs of a device class by least squares on the
relative error, once it has three; before that, the median FLOP/s its runs achieved, with no per-step term.
A queue with no finished run on a device class gets a stated default: 35 % of the device's dense bf16 peak
(a typical LoRA utilisation), or `CPU_DEFAULT_FLOPS` on a CPU. Rates are hardware facts, not team data, so
every team's runs on a queue count. Must not import torch or `workers`.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import redis_client
from app.db import new_session
from app.estimator.training_time import FlopsModel, QueueTime, TrainingTime
from app.fleet import worker_registry
from app.job_status import JobStatus
from app.settings import Settings
from app.tables import Job

# Dense bf16 peak TFLOP/s by the name nvidia-smi reports (the first match wins, so longer names come first).
PEAK_BF16_TFLOPS = (
    ("H200", 989.0), ("H100", 989.0), ("GH200", 989.0), ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0),
    ("L40", 181.0), ("A6000", 155.0), ("A10G", 70.0), ("A10", 125.0), ("L4", 121.0), ("4090", 165.0),
    ("3090", 71.0), ("V100", 125.0), ("T4", 65.0),
)
DEFAULT_UTILISATION = 0.35
# Achieved by LoRA training on a 2-core x86 CPU worker across bench/time_prediction.py's shapes (float32):
# 25 to 100 GFLOP/s, median about 70 (docs/benchmarks.md).
CPU_DEFAULT_FLOPS = 6e10
GENERIC_GPU_FLOPS = 50e12  # an unnamed GPU: about an A10's achievable rate
RECENT_RUNS = 20
SCANNED_JOBS = 200


MIN_RUNS_FOR_FIT = 3


@dataclass(frozen=True, slots=True)
class Rate:
    flops_per_second: float
    runs: int  # finished runs measured; 0 for a default
    seconds_per_step: float = 0.0

    def seconds(self, flops: float, steps: int) -> float:
        """Predicted training time of a run of these FLOPs and optimizer steps."""
        return steps * self.seconds_per_step + flops / self.flops_per_second


@dataclass(frozen=True, slots=True)
class Measurement:
    model: str
    flops: float
    steps: int
    seconds: float

    @property
    def flops_per_second(self) -> float:
        return self.flops / self.seconds


def fit(runs: list[Measurement]) -> Rate:
    """`seconds = steps × a + flops / R` over these runs, least squares on the relative error, a ≥ 0."""
    rate = statistics.median(run.flops_per_second for run in runs)
    if len(runs) < MIN_RUNS_FOR_FIT:
        return Rate(rate, len(runs))
    # Dividing each equation by its seconds weighs every run by its relative error: a·x + b·y = 1.
    xs = [run.steps / run.seconds for run in runs]
    ys = [run.flops / run.seconds for run in runs]
    sxx, syy = sum(x * x for x in xs), sum(y * y for y in ys)
    sxy, sx, sy = sum(x * y for x, y in zip(xs, ys, strict=True)), sum(xs), sum(ys)
    determinant = sxx * syy - sxy * sxy
    if determinant > 0:
        per_step = (sx * syy - sy * sxy) / determinant
        per_flop = (sy * sxx - sx * sxy) / determinant
        if per_step >= 0 and per_flop > 0:
            return Rate(1 / per_flop, len(runs), per_step)
    return Rate(sy / syy, len(runs))  # the FLOPs term alone, fitted the same way


def device_class(label: str | None) -> str:
    """'cuda:0 (NVIDIA H200)' or 'NVIDIA H200' -> 'NVIDIA H200'; 'cpu (2 threads)' or 'cpu' -> 'cpu'."""
    text = (label or "").strip()
    if text.lower().startswith("cpu"):
        return "cpu"
    if text.lower().startswith("cuda") and "(" in text and text.endswith(")"):
        return text[text.index("(") + 1:-1].strip()
    return text or "unknown"


def default_rate(device: str) -> float:
    """The stated default FLOP/s of a device class with no finished run."""
    if device == "cpu":
        return CPU_DEFAULT_FLOPS
    upper = device.upper()
    for name, tflops in PEAK_BF16_TFLOPS:
        if name in upper:
            return tflops * 1e12 * DEFAULT_UTILISATION
    return GENERIC_GPU_FLOPS


def measurement(job: Job) -> Measurement | None:
    """What a finished run did and took: its FLOPs (re-costed from the padded tokens it computed on with its
    launch estimate's FLOPs model), its optimizer steps and its training time; None if it cannot say."""
    model = ((job.estimate or {}).get("training_time") or {}).get("flops_model")
    metrics = job.final_metrics or {}
    runtime = metrics.get("train_runtime")
    if not model or not runtime or runtime <= 0 or not metrics.get("compute_training_tokens") or job.attempts > 1:
        return None  # a resumed run's metrics cover only its last attempt
    flops = FlopsModel(**model).run_flops(
        metrics["compute_training_tokens"], metrics.get("compute_training_length_sum", 0),
        metrics.get("compute_evaluation_tokens", 0), metrics.get("compute_evaluation_length_sum", 0))
    return Measurement(job.model, flops, job.step, runtime)


def achieved_flops_per_second(job: Job) -> float | None:
    """The FLOP/s a finished run achieved over its training time."""
    measured = measurement(job)
    return measured.flops_per_second if measured else None


def measured_rates(session: Session, queue: str) -> dict[str, Rate]:
    """Each device class's measured rate on this queue (see the module docstring)."""
    jobs = session.scalars(
        select(Job).where(Job.queue == queue, Job.status == JobStatus.SUCCEEDED, Job.device.is_not(None))
        .order_by(Job.finished_at.desc()).limit(SCANNED_JOBS)
    ).all()
    by_class: dict[str, list[Measurement]] = {}
    for job in jobs:
        measured = measurement(job)
        if measured is not None:
            by_class.setdefault(device_class(job.device), []).append(measured)
    return {device: fit(runs[:RECENT_RUNS]) for device, runs in by_class.items()}


def queue_times(session: Session, queues: list[dict], flops: float, steps: int) -> list[QueueTime]:
    """The run's duration on each live queue, per device class its live workers have."""
    times = []
    for queue in queues:
        devices = sorted({device_class(worker.device) for worker in queue["workers"]})
        if not devices:
            continue
        measured = measured_rates(session, queue["name"])
        for device in devices:
            rate = measured.get(device) or Rate(default_rate(device), 0)
            times.append(QueueTime(queue=queue["name"], device=device, flops_per_second=rate.flops_per_second,
                                   seconds_per_step=rate.seconds_per_step, calibrated_runs=rate.runs,
                                   seconds=rate.seconds(flops, steps)))
    return times


def live_queues(settings: Settings) -> list[dict]:
    """The queues a job may be sent to, each with its live workers ([] for all when Redis is down)."""
    try:
        served = worker_registry.queues_served(worker_registry.live_workers(redis_client.get_redis()))
    except redis.RedisError:
        return []
    names = worker_registry.allowed_queues(served, settings.default_queue, settings.extra_queue_list)
    return [{"name": name, "workers": served.get(name, [])} for name in names]


def predict(time: TrainingTime | None, settings: Settings, queue: str | None = None) -> None:
    """Fill in the run's duration on each live queue (or on `queue` alone)."""
    if time is None:
        return
    queues = [q for q in live_queues(settings) if queue is None or q["name"] == queue]
    with new_session() as session:
        time.queues = queue_times(session, queues, time.flops, time.steps)
