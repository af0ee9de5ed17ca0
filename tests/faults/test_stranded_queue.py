"""A queued job is never stranded when Redis loses its queue, and a job sent twice runs once.

The fault, on the real stack: a job queued while no worker serves its queue, then the broker's data
lost (every Redis key of the test's install deleted, as a restart without persistence would leave it).
The reaper compares queued jobs with what the broker holds (the queue's lists and the workers' unacked
messages) and sends again what nobody holds; the atomic claim makes any extra copy harmless.
"""

from __future__ import annotations

import pytest
from sqlalchemy import update

from app.db import new_session
from app.fleet import queue
from app.jobs import lease_reaper
from app.tables import Job
from tests.jobs.conftest import client, model_dir  # noqa: F401 - fixtures this module uses
from tests.jobs.helpers import all_events, chat_records, launch, metric_steps, upload, wait_for, wait_until_finished

LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
TRAINING = {"batch_size": 4, "learning_rate": 5e-3, "sequence_length": 64, "precision": "fp32", "logging_steps": 1,
            "warmup_ratio": 0.0, "lr_scheduler": "constant"}


def _claimed_task(job_id: str) -> str | None:
    with new_session() as session:
        return session.get(Job, job_id).task_id


def _broker(tuneboard_env):
    import redis

    return redis.Redis.from_url(tuneboard_env.redis_url, decode_responses=True, socket_timeout=10)


def _waiting(broker, name: str) -> int:
    """Messages waiting in the queue's list (the one Kombu names after it, behind the install's key prefix)."""
    return broker.llen(queue.queue_keys(name)[0])


@pytest.mark.both_databases  # the reaper reads what to send again from the database
def test_a_queued_job_whose_message_redis_lost_runs_when_a_worker_comes(
        client, start_worker, model_dir, tuneboard_env):  # noqa: F811 - the imported fixtures
    job = launch(client, model_dir, upload(client, chat_records())["id"], lora=LORA,
                 training={**TRAINING, "max_steps": 10, "save_steps": 10})
    broker = _broker(tuneboard_env)
    assert _waiting(broker, tuneboard_env.queue) == 1
    assert tuneboard_env.forget_redis()  # the queue, its message and every stream: a restart without persistence
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "queued"

    start_worker()
    # Within a few reaper passes of the worker being there (a pass every 2 s, a 6 s grace after the last send),
    # not after the broker's visibility timeout (days): the wait's deadline fails the test otherwise.
    job = wait_until_finished(client, job["id"], timeout=90)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 1
    messages = [e["message"] for e in all_events(client, job["id"])]
    assert sum("had lost this job's message" in m for m in messages) == 1, messages
    assert [p["step"] for p in metric_steps(client, job["id"])] == list(range(1, 11))


@pytest.mark.both_databases  # the reaper reads what to send again from the database
def test_a_job_the_broker_still_holds_is_not_sent_again_and_a_job_sent_twice_runs_once(
        client, start_worker, model_dir, tuneboard_env):  # noqa: F811 - the imported fixtures
    job = launch(client, model_dir, upload(client, chat_records())["id"], lora=LORA,
                 training={**TRAINING, "max_steps": 120, "save_steps": 60})
    with new_session() as session:  # sent long ago: only its waiting message keeps it from being sent again
        session.execute(update(Job).where(Job.id == job["id"]).values(sent_at=Job.sent_at - 3600))
        session.commit()
    assert lease_reaper.resend_once() == []
    broker = _broker(tuneboard_env)
    assert _waiting(broker, tuneboard_env.queue) == 1

    worker = start_worker()
    wait_for(client, job["id"], lambda j: j["status"] == "running" and j["progress"]["step"] >= 1, what="running")
    # Taken by the worker, its message left the queue's list for the worker's unacked set: held, as the delivery
    # the running attempt claimed (which, if that worker died, would not count as a message that can still run it).
    assert _waiting(broker, tuneboard_env.queue) == 0
    holdings = queue.broker_holdings(broker, [tuneboard_env.queue])
    running = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert holdings.delivered.get(job["id"]) and not holdings.will_run(job["id"], _claimed_task(job["id"]))
    assert running["status"] == "running"

    queue.enqueue_training(job["id"], tuneboard_env.queue, 1)  # and sent a second time all the same
    job = wait_until_finished(client, job["id"], timeout=180)
    assert job["status"] == "succeeded" and job["attempts"] == 1
    kinds = [e["data"]["kind"] for e in all_events(client, job["id"])]
    assert kinds.count("started") == 1 and "resent" not in kinds
    assert [p["step"] for p in metric_steps(client, job["id"])] == list(range(1, 121))
    wait_for(client, job["id"], lambda _j: "nothing to claim" in worker.log(), timeout=30, what="the copy skipped")


def test_a_requeued_job_whose_message_was_lost_is_sent_again_though_its_dead_workers_delivery_stays_unacked(
        client, start_worker, model_dir, tuneboard_env):  # noqa: F811 - the imported fixtures
    doomed = start_worker(name="doomed")
    job = launch(client, model_dir, upload(client, chat_records())["id"], lora=LORA,
                 training={**TRAINING, "max_steps": 60, "save_steps": 10})
    wait_for(client, job["id"], lambda j: j["progress"]["step"] >= 12, what="step 12")
    doomed.kill()  # its delivery is never acked: Kombu keeps it in `unacked` until the visibility timeout (days)
    broker = _broker(tuneboard_env)
    wait_for(client, job["id"], lambda j: j["status"] == "queued" and _waiting(broker, tuneboard_env.queue) == 1,
             timeout=60, what="the requeue")
    broker.delete(*queue.queue_keys(tuneboard_env.queue))  # and the requeue's message is lost
    assert queue.broker_holdings(broker, [tuneboard_env.queue]).delivered.get(job["id"])

    start_worker(name="rescuer")
    job = wait_until_finished(client, job["id"], timeout=180)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 2 and job["worker"].startswith("rescuer@")
    messages = [e["message"] for e in all_events(client, job["id"])]
    assert sum("had lost this job's message" in m for m in messages) == 1, messages
    assert [p["step"] for p in metric_steps(client, job["id"])] == list(range(1, 61))
