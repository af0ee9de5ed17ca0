"""A worker's first job does not pay for importing the ML stack: the process that will run it imports torch,
transformers and peft when it starts, and freezes the garbage collector after it.

Real `celery -A workers worker -c 1` processes; what the tests look at is the prefork pool's child (the
process that runs tasks): the libraries mapped into it (/proc/PID/maps) before any job exists, and that
the same process, not a fresh one, then runs the first job.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from app.fleet import queue
from tests.jobs.conftest import client, model_dir  # noqa: F401 - fixtures this module uses
from tests.jobs.helpers import chat_records, launch, upload, wait_until_finished

PRELOADED = re.compile(r"ForkPoolWorker-\d+\] workers\.warm_start: ML stack preloaded in [\d.]+ s \(torch [^)]+\); "
                       r"(?P<frozen>\d+) objects frozen")
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # nothing here depends on the DB


def _pool_children(pid: int) -> list[int]:
    """The processes the worker's main process forked (its pool)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _has_torch(pid: int) -> bool:
    """Whether torch's native library is loaded in the process: it is imported there, not merely importable."""
    return "libtorch_cpu" in Path(f"/proc/{pid}/maps").read_text()


def _wait_for_log(worker, pattern: re.Pattern, timeout: float = 180) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if match := pattern.search(worker.log()):
            return match
        time.sleep(0.3)
    pytest.fail(f"no {pattern.pattern!r} in the worker's log after {timeout} s:\n{worker.log()[-4000:]}")


@SQLITE_ONLY
def test_a_workers_first_job_finds_the_ml_stack_already_imported(start_worker, client, model_dir):  # noqa: F811
    worker = start_worker(cold=True)  # a fresh process, as on a user's machine
    preloaded = _wait_for_log(worker, PRELOADED)
    (child,) = _pool_children(worker.process.pid)
    # Before any job exists, the pool child has torch loaded and the import's objects frozen out of the collector.
    assert _has_torch(child)
    assert int(preloaded["frozen"]) > 100_000, preloaded[0]

    file_id = upload(client, chat_records(8))["id"]
    job = launch(client, model_dir, file_id, lora={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                 training={"max_steps": 3, "batch_size": 2, "sequence_length": 64, "precision": "fp32",
                           "logging_steps": 1, "save_steps": 100})
    finished = wait_until_finished(client, job["id"])
    assert finished["status"] == "succeeded", finished
    # The warm child itself ran the job: no new pool process took over, and none warmed up again.
    assert _pool_children(worker.process.pid) == [child]
    assert len(PRELOADED.findall(worker.log())) == 1


@SQLITE_ONLY
def test_a_worker_told_not_to_preload_leaves_the_import_to_its_first_job(start_worker, tuneboard_env):
    # Today's behaviour, kept selectable (TUNEBOARD_WORKER_PRELOAD=false) for bench/queueing.py's before/after:
    # it also shows that the check above tells a warm child from a cold one.
    worker = start_worker(cold=True, TUNEBOARD_WORKER_PRELOAD="false")
    # The child runs a task (one for no job: nothing to claim, nothing imported) only once its start-up, where a
    # preload would happen, is over.
    queue.enqueue_training("ftjob-none", tuneboard_env.queue, 1)
    _wait_for_log(worker, re.compile(r"job ftjob-none: nothing to claim"), timeout=60)
    (child,) = _pool_children(worker.process.pid)
    assert not _has_torch(child)
    assert "ML stack preloaded" not in worker.log()
