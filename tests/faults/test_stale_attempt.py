"""A worker that lost its lease writes nothing more: every write of an attempt is fenced where it lands.

The fault, on the real stack: two Celery worker processes, the first one's training child frozen with
SIGSTOP past its lease, the second taking the job over and passing the frozen step, then SIGCONT. What
the user sees through the API and the live stream must be the second attempt's alone: no step out of
order or twice after the rewind, its metric values, its checkpoints, no event from the stale attempt;
and the stale attempt stops training at once.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select, text

from app import redis_client
from app.db import new_session
from app.jobs import streams
from app.tables import Checkpoint
from tests.jobs.conftest import client, model_dir  # noqa: F401 - fixtures this module uses
from tests.jobs.helpers import all_events, chat_records, launch, metric_steps, upload, wait_for, wait_until_finished

LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
# Long enough that the frozen attempt is stopped, and the rescuer still has steps to go, however fast the tiny
# model trains (a step takes 0.05-0.5 s here, with the moment of the freeze taking up to seconds more).
TRAINING = {"max_steps": 240, "batch_size": 4, "learning_rate": 5e-3, "sequence_length": 64, "precision": "fp32",
            "logging_steps": 1, "save_steps": 20, "warmup_ratio": 0.0, "lr_scheduler": "constant"}


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _training_child(worker) -> int:
    """The worker's pool process that is training: the busiest child of its main process."""
    return max(_children(worker.process.pid), key=_cpu_ticks)


def _database_is_free(job_id: str) -> bool:
    """Whether another process can lock the job row now (the frozen child holds no transaction open)."""
    with new_session() as session:
        try:
            if session.bind.dialect.name == "postgresql":
                session.execute(text("SET LOCAL lock_timeout = '1s'"))
            else:
                session.connection().connection.driver_connection.execute("PRAGMA busy_timeout=1000")
            session.execute(text("UPDATE jobs SET attempts = attempts WHERE id = :id"), {"id": job_id})
            return True
        except Exception:  # locked: try another moment
            return False
        finally:
            session.rollback()
            if session.bind.dialect.name == "sqlite":
                session.connection().connection.driver_connection.execute("PRAGMA busy_timeout=30000")


def _freeze(pid: int, job_id: str) -> None:
    """SIGSTOP the process at a moment it holds no database lock, so only its lease runs out."""
    for _ in range(50):
        os.kill(pid, signal.SIGSTOP)
        if _database_is_free(job_id):
            return
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("the training child always held a database lock")


def _stream(job_id: str) -> list[streams.StreamEntry]:
    return streams.read_since(redis_client.get_redis(), job_id, count=100_000)


@pytest.mark.both_databases  # each fenced write is a conditional statement of the database's
def test_a_frozen_worker_that_lost_its_lease_writes_nothing_after_the_takeover(
        client, start_worker, model_dir, tuneboard_env):  # noqa: F811 - the imported fixtures
    first = start_worker(name="frozen")
    job = launch(client, model_dir, upload(client, chat_records())["id"], lora=LORA, training=TRAINING)
    wait_for(client, job["id"], lambda j: j["status"] == "running", what="running")
    second = start_worker(name="rescuer")
    # Past the first checkpoint, so the takeover resumes from it (and the stream rewinds) rather than starting over.
    wait_for(client, job["id"], lambda j: j["progress"]["step"] >= TRAINING["save_steps"] + 2,
             what="the first checkpoint")

    child = _training_child(first)
    _freeze(child, job["id"])
    try:
        frozen_step = max(e.data["step"] for e in _stream(job["id"]) if e.type == "metric")
        taken_over = wait_for(client, job["id"], lambda j: j["attempts"] == 2 and j["worker"].startswith("rescuer@")
                              and j["progress"]["step"] >= frozen_step + 3, timeout=300, what="the takeover")
        assert taken_over["status"] == "running"
    finally:
        os.kill(child, signal.SIGCONT)

    # The stale attempt stops at once (its next step's write is refused): its task ends as lost while the new
    # attempt, which trains at the same pace on this machine, still has steps of the run to go.
    deadline = time.monotonic() + 120
    while "'lost'" not in first.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "'lost'" in first.log(), first.log()[-3000:]
    at_stop = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert at_stop["status"] == "running" and at_stop["progress"]["step"] < TRAINING["max_steps"], at_stop
    assert re.search(r"lost the job|lease lost", first.log())

    job = wait_until_finished(client, job["id"], timeout=240)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 2 and job["worker"].startswith("rescuer@")
    last = TRAINING["max_steps"]

    # The live stream: after the second attempt's rewind, every step once, in order, to the end.
    entries = _stream(job["id"])
    rewinds = [i for i, e in enumerate(entries) if e.type == "rewind"]
    assert rewinds, [e.type for e in entries]
    resumed_from = entries[rewinds[-1]].data["step"]
    assert resumed_from <= frozen_step
    after = [e.data for e in entries[rewinds[-1] + 1:] if e.type == "metric"]
    assert [p["step"] for p in after] == list(range(resumed_from + 1, last + 1))

    # The database: every step once, and past the rewind the values the second attempt streamed.
    stored = metric_steps(client, job["id"])
    assert [p["step"] for p in stored] == list(range(1, last + 1))
    streamed = {p["step"]: p for p in after}
    for point in stored[resumed_from:]:
        assert point["loss"] == pytest.approx(streamed[point["step"]]["loss"], rel=1e-9), point

    # No event from the stale attempt once the job was taken over.
    messages = [e["message"] for e in all_events(client, job["id"])]
    assert not [m for m in messages if "Stopped at step" in m or "its checkpoint is kept" in m], messages
    saved = Counter(int(m.split()[-1].rstrip(".")) for m in messages if m.startswith("Checkpoint saved at step"))
    assert all(count == 1 for count in saved.values()), saved
    started = [m.split()[3] for m in messages if m.startswith("Started on worker")]
    assert [name.split("@")[0] for name in started] == ["frozen", "rescuer"], started

    # Checkpoints: one per save step, each complete, and those past the rewind hold the second attempt's run.
    listed = client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints?limit=100").json()["data"]
    every = TRAINING["save_steps"]
    assert sorted(c["step_number"] for c in listed) == list(range(every, last + 1, every))
    with new_session() as session:
        rows = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job["id"])).all()
    artifacts = tuneboard_env.settings.artifacts_dir
    for row in rows:
        state = json.loads((artifacts / row.storage_key / "trainer_state.json").read_text())
        assert state["global_step"] == row.step
        if row.step > resumed_from:
            assert "/attempt-2/" in row.storage_key
            losses = {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e and e["step"] > resumed_from}
            assert losses and all(loss == pytest.approx(streamed[s]["loss"], rel=1e-4) for s, loss in losses.items())
    assert second.process.poll() is None


def test_every_write_of_a_reaped_attempt_is_refused_where_it_lands_even_after_redis_lost_the_fence(tuneboard_env):
    from sqlalchemy import func, update

    from app.jobs import lifecycle
    from app.tables import Event, Job, Metric
    from tests.jobs.test_lifecycle import _queued_job

    settings, broker = tuneboard_env.settings, redis_client.get_redis()
    with new_session() as session:
        job_id = _queued_job(session).id
        stale = lifecycle.claim(session, job_id, "worker-a", settings)
        lifecycle.fence_attempts_before(broker, job_id, stale.attempt)
        lifecycle.add_event(session, broker, job_id, "from attempt 1", attempt=1)
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=time.time() - 1))
        session.commit()
        assert lifecycle.reap_expired(session, broker, settings)[0] == [job_id]
        # Reaped, not yet claimed again: the stale attempt is already refused.
        with pytest.raises(lifecycle.AttemptFenced):
            lifecycle.publish_for_attempt(broker, job_id, 1, "metric", {"step": 9}, max_len=1000)
        current = lifecycle.claim(session, job_id, "worker-b", settings)
        lifecycle.fence_attempts_before(broker, job_id, current.attempt)
        assert current.attempt == 2

        for lost_redis in (False, True):
            if lost_redis:
                # A restart without persistence: the fence key is gone, the database still knows.
                assert tuneboard_env.forget_redis()
            before = len(_stream(job_id))
            for write in (
                lambda: lifecycle.add_event(session, broker, job_id, "Stopped at step 9", attempt=1),
                lambda: lifecycle.record_checkpoint(session, job_id, 1, 10,
                                                    "jobs/x/attempt-1/checkpoints/checkpoint-10"),
                lambda: lifecycle.rewind(session, broker, job_id, 1, 0, max_len=1000),
                lambda: lifecycle.publish_for_attempt(broker, job_id, 1, "metric", {"step": 9}, max_len=1000),
            ):
                with pytest.raises(lifecycle.AttemptFenced):
                    write()
            assert len(_stream(job_id)) == before
            lifecycle.publish_for_attempt(broker, job_id, 2, "metric", {"step": 1}, max_len=1000)
            assert _stream(job_id)[-1].data == {"step": 1}
        lifecycle.record_checkpoint(session, job_id, 2, 10, "jobs/x/attempt-2/checkpoints/checkpoint-10")
        assert not session.scalar(select(func.count()).select_from(Event).where(Event.message == "Stopped at step 9"))
        assert session.scalars(select(Checkpoint.storage_key).where(Checkpoint.job_id == job_id)).all() == [
            "jobs/x/attempt-2/checkpoints/checkpoint-10"]
        assert not session.scalar(select(func.count()).select_from(Metric).where(Metric.job_id == job_id))
