"""The queue warning's wording: which GPUs are too small, and only the remedies the form has not applied yet."""

from __future__ import annotations

from app.fleet.queue_fit import queue_memory_advice
from app.fleet.worker_registry import WorkerInfo

GIB = 1024**3


def _worker(name: str, device: str, gib: float | None) -> WorkerInfo:
    return WorkerInfo(hostname=name, queues=("q",), device=device,
                      gpu_memory_bytes=int(gib * GIB) if gib else None, seen_at=0.0)


def test_no_workers_no_gpu_and_a_fit_say_what_they_should():
    assert queue_memory_advice("q", [], 30 * GIB, gradient_checkpointing=True, precision="bf16") is None
    cpu = queue_memory_advice("q", [_worker("a", "cpu", None)], GIB, gradient_checkpointing=True, precision="bf16")
    assert cpu.level == "info" and "No worker on queue 'q' has a GPU (cpu)" in cpu.message
    assert queue_memory_advice("q", [_worker("a", "H100", 80)], 70 * GIB, gradient_checkpointing=True,
                               precision="bf16") is None


def test_too_big_for_every_gpu_lists_only_remedies_not_yet_applied():
    workers = [_worker("a", "L4", 22.5), _worker("b", "A10", 24)]
    advice = queue_memory_advice("q", workers, 30 * GIB, gradient_checkpointing=True, precision="bf16")
    assert advice.level == "warning" and advice.field == "queue"
    assert advice.message == ("The memory estimate, 30.0 GiB, does not fit queue 'q': its largest GPU is 24.0 GiB. "
                              "Pick a queue with a larger GPU, or lower the batch size or sequence length, or load "
                              "the base in 4-bit.")
    unchecked = queue_memory_advice("q", workers, 30 * GIB, gradient_checkpointing=False, precision="4bit")
    assert unchecked.message.endswith("or lower the batch size or sequence length, or turn on gradient checkpointing.")


def test_a_mixed_queue_names_the_gpu_that_would_run_out():
    workers = [_worker("big", "H100", 80), _worker("small", "L4", 22.5)]
    advice = queue_memory_advice("q", workers, 30 * GIB, gradient_checkpointing=True, precision="bf16")
    assert "fits 1 of 2 GPU workers on queue 'q'; it does not fit L4 (22.5 GiB) on small" in advice.message


def _host(name: str, gpus: int, gib: float) -> WorkerInfo:
    return WorkerInfo(hostname=name, queues=("q",), device="H100", gpu_memory_bytes=int(gib * GIB), seen_at=0.0,
                      gpu_count=gpus)


def test_a_job_on_more_gpus_than_any_worker_has_is_warned_and_only_hosts_with_enough_gpus_are_judged():
    one_gpu_hosts = [_host("a", 1, 80), _host("b", 2, 80)]
    advice = queue_memory_advice("q", one_gpu_hosts, 30 * GIB, gradient_checkpointing=True, precision="bf16",
                                 gpus_per_job=4)
    assert advice.level == "warning" and advice.message.startswith(
        "No live worker on queue 'q' has 4 GPUs: the most is 2 (H100 on b), so the launch would be refused.")
    # A small-GPU host with too few GPUs never takes the job, so its memory is not a risk; the 8-GPU host is judged.
    mixed = [_host("small", 1, 16), _host("big", 8, 80)]
    assert queue_memory_advice("q", mixed, 30 * GIB, gradient_checkpointing=True, precision="bf16",
                               gpus_per_job=8) is None
    too_big = queue_memory_advice("q", mixed, 90 * GIB, gradient_checkpointing=True, precision="bf16",
                                  gpus_per_job=8)
    assert "does not fit queue 'q': its largest GPU is 80.0 GiB" in too_big.message
