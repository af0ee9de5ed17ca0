"""Each queue's measured training speed per device class, and run-time predictions.

A finished run reports the padded tokens it computed on, its optimizer steps and its training time; the
model stored with its launch estimate turns the tokens into the FLOPs it did and the values it wrote outside
matrix multiplies. A run's time is modelled as

    steps × seconds_per_step + FLOPs / flops_per_second + values × seconds_per_value

the arithmetic, the memory traffic that dominates narrow models (`app.estimator.training_flops`), and what every
optimizer step costs whatever its size (the update, launches, logging). Each device class starts from a stated
default: on a CPU, the three terms fitted by `bench/time_prediction.py` on the project's 2-core CI machine type;
on a GPU, 35 % of its dense bf16 peak (a typical LoRA utilisation) and no other term. A queue calibrates it on its
own last runs of that class (`fit`): first by scaling the default to them, then, from four runs, by fitting each
term, held near the scaled default by a ridge so that a few runs cannot swing it. Rates are hardware facts, not
team data, so every team's runs on a queue count. Must not import torch or `workers`.
"""

from __future__ import annotations

import itertools
import math
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
GENERIC_GPU_FLOPS = 50e12  # an unnamed GPU: about an A10's achievable rate
# A 2-core x86 CPU worker in float32, fitted over bench/time_prediction.py's twelve shapes (docs/benchmarks.md,
# "Training-time prediction"): the arithmetic runs at about 135 GFLOP/s, but a narrow model's runs achieve
# 25-80 GFLOP/s overall because of the other two terms.
CPU_DEFAULT_FLOPS = 1.35e11
CPU_DEFAULT_SECONDS_PER_STEP = 0.026
CPU_DEFAULT_SECONDS_PER_VALUE = 7.5e-10
RECENT_RUNS = 20
SCANNED_JOBS = 200
# From this many runs each term is fitted; fewer only scale the default.
MIN_RUNS_FOR_FIT = 4
# How strongly each term the default states is held near its scaled value. A run's time is known to about 10 %, a
# default's balance between the terms to about a factor of 3: weighed as (0.1 / 1)², a hundredth of a run each.
RIDGE = 0.01


@dataclass(frozen=True, slots=True)
class Rate:
    """A device class's speed: the three terms of the module docstring's model."""

    flops_per_second: float
    runs: int  # finished runs it was calibrated on; 0 for a default
    seconds_per_step: float = 0.0
    seconds_per_value: float = 0.0

    def seconds(self, flops: float, steps: int, values: float = 0.0) -> float:
        """Predicted training time of a run of these FLOPs, optimizer steps and values written."""
        return steps * self.seconds_per_step + flops / self.flops_per_second + values * self.seconds_per_value

    @property
    def terms(self) -> tuple[float, float, float]:
        """Seconds per step, per FLOP and per value."""
        return self.seconds_per_step, 1 / self.flops_per_second, self.seconds_per_value


def _rate(terms: list[float], runs: int) -> Rate:
    per_step, per_flop, per_value = terms
    return Rate(1 / per_flop, runs, per_step, per_value)


@dataclass(frozen=True, slots=True)
class Measurement:
    model: str
    flops: float
    steps: int
    seconds: float
    elementwise: float = 0.0  # values written outside matrix multiplies (0: a run estimated before they were counted)

    @property
    def flops_per_second(self) -> float:
        return self.flops / self.seconds

    @property
    def features(self) -> tuple[float, float, float]:
        return float(self.steps), self.flops, self.elementwise


def _solve(matrix: list[list[float]], vector: list[float]) -> list[float] | None:
    """Gaussian elimination with partial pivoting; None for a singular system."""
    size = len(vector)
    rows = [row[:] + [value] for row, value in zip(matrix, vector, strict=True)]
    for column in range(size):
        pivot = max(range(column, size), key=lambda r: abs(rows[r][column]))
        if abs(rows[pivot][column]) < 1e-12:
            return None
        rows[column], rows[pivot] = rows[pivot], rows[column]
        for r in range(column + 1, size):
            factor = rows[r][column] / rows[column][column]
            rows[r] = [a - factor * b for a, b in zip(rows[r], rows[column], strict=True)]
    solution = [0.0] * size
    for r in reversed(range(size)):
        solution[r] = (rows[r][size] - sum(rows[r][c] * solution[c] for c in range(r + 1, size))) / rows[r][r]
    return solution


def _least_squares(rows: list[list[float]], targets: list[float]) -> list[float] | None:
    """min Σ (row · x - target)² through the normal equations (at most three unknowns, well scaled)."""
    width = len(rows[0])
    normal = [[sum(row[i] * row[j] for row in rows) for j in range(width)] for i in range(width)]
    right = [sum(row[i] * t for row, t in zip(rows, targets, strict=True)) for i in range(width)]
    return _solve(normal, right)


def _scaled(prior: Rate, runs: list[Measurement]) -> list[float]:
    """The default's terms times the one factor that best fits these runs (least squares on relative error)."""
    ratios = [sum(f * t for f, t in zip(run.features, prior.terms, strict=True)) / run.seconds for run in runs]
    factor = sum(ratios) / sum(r * r for r in ratios)
    return [factor * term for term in prior.terms]


def _alone(runs: list[Measurement], term: int) -> float:
    """The cost per unit of one term that alone would explain the runs' times on average (1 if they have none)."""
    per_second = sum(run.features[term] / run.seconds for run in runs)
    return len(runs) / per_second if per_second > 0 else 1.0


def fit(runs: list[Measurement], prior: Rate) -> Rate:
    """The rate that best explains these runs' times (least squares on relative error, every term ≥ 0), from the
    device's default `prior`: scaled to them below MIN_RUNS_FOR_FIT runs, each term fitted from there."""
    if not runs:
        return prior
    scaled = _scaled(prior, runs)
    if len(runs) < MIN_RUNS_FOR_FIT:
        return _rate(scaled, len(runs))
    # Each term is fitted as a multiple of a reference so the unknowns are of the same size: its scaled default,
    # or for a term the default leaves out (a GPU's per-step and per-value costs), the size that alone would
    # explain the runs' times.
    references = [scaled[j] or _alone(runs, j) for j in range(3)]
    # A run estimated before values were counted has none: the per-value term waits until those age out.
    usable = [j for j in range(3) if j != 2 or all(run.elementwise > 0 for run in runs)]
    best: tuple[float, list[float]] | None = None
    for size in range(1, len(usable) + 1):
        for active in itertools.combinations(usable, size):
            if 1 not in active:
                continue  # a run always costs its arithmetic
            rows = [[run.features[j] * references[j] / run.seconds for j in active] for run in runs]
            targets = [1.0] * len(runs)
            for position, j in enumerate(active):
                if scaled[j] > 0:  # the ridge: this term's multiple of its scaled default near 1
                    rows.append([math.sqrt(RIDGE) if k == position else 0.0 for k in range(len(active))])
                    targets.append(math.sqrt(RIDGE))
            multiples = _least_squares(rows, targets)
            if multiples is None or min(multiples) < 0:
                continue
            residual = sum((sum(a * m for a, m in zip(row, multiples, strict=True)) - t) ** 2
                           for row, t in zip(rows, targets, strict=True))
            residual += RIDGE * sum(1 for j in range(3) if j not in active and scaled[j] > 0)
            if best is None or residual < best[0]:
                terms = [0.0, 0.0, 0.0]
                for j, multiple in zip(active, multiples, strict=True):
                    terms[j] = multiple * references[j]
                best = (residual, terms)
    return _rate(best[1], len(runs)) if best else _rate(scaled, len(runs))


def device_class(label: str | None) -> str:
    """'cuda:0 (NVIDIA H200)' or 'NVIDIA H200' -> 'NVIDIA H200'; 'cpu (2 threads)' or 'cpu' -> 'cpu'."""
    text = (label or "").strip()
    if text.lower().startswith("cpu"):
        return "cpu"
    if text.lower().startswith("cuda") and "(" in text and text.endswith(")"):
        return text[text.index("(") + 1:-1].strip()
    return text or "unknown"


def default_rate(device: str) -> Rate:
    """The stated default speed of a device class with no finished run."""
    if device == "cpu":
        return Rate(CPU_DEFAULT_FLOPS, 0, CPU_DEFAULT_SECONDS_PER_STEP, CPU_DEFAULT_SECONDS_PER_VALUE)
    upper = device.upper()
    for name, tflops in PEAK_BF16_TFLOPS:
        if name in upper:
            return Rate(tflops * 1e12 * DEFAULT_UTILISATION, 0)
    return Rate(GENERIC_GPU_FLOPS, 0)


def measurement(job: Job) -> Measurement | None:
    """What a finished run did and took: its FLOPs (re-costed from the padded tokens it computed on with its
    launch estimate's FLOPs model), its optimizer steps and its training time; None if it cannot say."""
    model = ((job.estimate or {}).get("training_time") or {}).get("flops_model")
    metrics = job.final_metrics or {}
    runtime = metrics.get("train_runtime")
    if not model or not runtime or runtime <= 0 or not metrics.get("compute_training_tokens") or job.attempts > 1:
        return None  # a resumed run's metrics cover only its last attempt
    if int((job.config or {}).get("training", {}).get("gpus", 1)) > 1:
        return None  # its speed is its GPUs' together, not one device's
    flops_model = FlopsModel(**model)
    training_tokens, evaluation_tokens = metrics["compute_training_tokens"], metrics.get("compute_evaluation_tokens", 0)
    flops = flops_model.run_flops(training_tokens, metrics.get("compute_training_length_sum", 0), evaluation_tokens,
                                  metrics.get("compute_evaluation_length_sum", 0))
    values = flops_model.run_elementwise(training_tokens, evaluation_tokens)
    return Measurement(job.model, flops, job.step, runtime, values)


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
    return {device: fit(runs[:RECENT_RUNS], default_rate(device)) for device, runs in by_class.items()}


def queue_times(session: Session, queues: list[dict], flops: float, steps: int, values: float = 0.0, gpus: int = 1
                ) -> list[QueueTime]:
    """The run's duration on each live queue, per device class of its live workers that have the `gpus` the run
    spans. `flops` and `values` are the whole run's: each of its GPUs does its share."""
    flops, values = flops / gpus, values / gpus
    times = []
    for queue in queues:
        able = [worker for worker in queue["workers"] if gpus == 1 or worker.gpu_count >= gpus]
        devices = sorted({device_class(worker.device) for worker in able})
        if not devices:
            continue
        measured = measured_rates(session, queue["name"])
        for device in devices:
            rate = measured.get(device) or default_rate(device)
            seconds = rate.seconds(flops, steps, values)
            times.append(QueueTime(queue=queue["name"], device=device,
                                   flops_per_second=flops / seconds if seconds > 0 else 0.0,
                                   seconds_per_step=rate.seconds_per_step, seconds_per_value=rate.seconds_per_value,
                                   calibrated_runs=rate.runs, seconds=seconds))
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
        time.queues = run_times(session, queues, time)


def run_times(session: Session, queues: list[dict], time: TrainingTime) -> list[QueueTime]:
    """`queue_times` for an estimated run: the configuration page and the estimate API both ask this."""
    return queue_times(session, queues, time.flops, time.steps, time.elementwise_values, time.gpus)
