"""Whether a run's memory estimate fits the GPUs of the queue it is sent to, from live workers' announcements.

Must not import torch or `workers`.
"""

from __future__ import annotations

from app.estimator.advice import Advice
from app.fleet.worker_registry import WorkerInfo


def _ways_to_shrink(gradient_checkpointing: bool, precision: str) -> str:
    ways = ["lower the batch size or sequence length"]
    if not gradient_checkpointing:
        ways.append("turn on gradient checkpointing")
    if precision != "4bit":
        ways.append("load the base in 4-bit")
    return ", ".join(ways[:-1]) + f", or {ways[-1]}" if len(ways) > 1 else ways[0]


def _gib(value: int) -> str:
    return f"{value / 1024**3:.1f} GiB"


def queue_memory_advice(queue: str, workers: list[WorkerInfo], memory_total: int, *,
                        gradient_checkpointing: bool, precision: str, gpus_per_job: int = 1) -> Advice | None:
    """A warning beside the queue field when the estimate does not fit (some of) its workers' GPUs, or when none of
    them has the GPUs the job spans (`memory_total` is then per GPU)."""
    if not workers:
        return None
    if gpus_per_job > 1:
        able = [w for w in workers if w.gpu_count >= gpus_per_job]
        if not able:
            most = max(workers, key=lambda w: w.gpu_count)
            return Advice(field="queue", level="warning", message=(
                f"No live worker on queue {queue!r} has {gpus_per_job} GPUs: the most is {most.gpu_count} "
                f"({most.device} on {most.hostname}), so the launch would be refused. Lower GPUs, or pick a queue "
                "with a larger host."))
        workers = able  # only these take the job: it waits in a per-size queue the others do not consume
    gpus = [w for w in workers if w.gpu_memory_bytes]
    if not gpus:
        devices = ", ".join(sorted({w.device for w in workers}))
        return Advice(field="queue", level="info", message=f"No worker on queue {queue!r} has a GPU ({devices}): "
                      "the run would train on the CPU, which suits only tiny models.")
    too_small = [w for w in gpus if w.gpu_memory_bytes < memory_total]
    if not too_small:
        return None
    smallest = min(too_small, key=lambda w: w.gpu_memory_bytes)
    where = f"{smallest.device} ({_gib(smallest.gpu_memory_bytes)}) on {smallest.hostname}"
    if len(too_small) == len(gpus):
        message = (f"The memory estimate, {_gib(memory_total)}, does not fit queue {queue!r}: its largest GPU is "
                   f"{_gib(max(w.gpu_memory_bytes for w in gpus))}. Pick a queue with a larger GPU, or "
                   f"{_ways_to_shrink(gradient_checkpointing, precision)}.")
    else:
        message = (f"The memory estimate, {_gib(memory_total)}, fits {len(gpus) - len(too_small)} of {len(gpus)} "
                   f"GPU workers on queue {queue!r}; it does not fit {where}, which may take the job and run out "
                   "of memory.")
    return Advice(field="queue", level="warning", message=message)
