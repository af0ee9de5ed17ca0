"""Jobs on several GPUs wait in their queue's per-size queue, on the real broker and database with no worker: the
message goes to `<queue>@<N>gpus` (never to the queue one-GPU workers take), counts in the queue's depth, is seen
by the stranded-message check, and the reaper's pass (once a worker of the queue with fewer GPUs is live) says on
the job page that it waits and fails it once the wait is over. (Workers consuming those queues, and a job moving
from a one-GPU worker to a two-GPU one, are tests/jobs/test_multi_gpu_jobs.py's part.)
"""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from tests.jobs.helpers import all_events, chat_records, launch, upload
from tests.ops.test_operations import samples, value

LORA = {"r": 8, "target_modules": ["q_proj", "v_proj"]}
MODEL = "HuggingFaceTB/SmolLM2-135M"


def _launch_on_two_gpus(tuneboard_env, account, monkeypatch) -> str:
    """A job on two GPUs, launched while no worker is live (so it is queued, as any job would be), after one on
    one GPU."""
    from app.accounts.auth import SESSION_COOKIE
    from app.main import create_app
    from app.settings import get_settings

    monkeypatch.setenv("TUNEBOARD_METRICS_PUBLIC", "true")
    get_settings.cache_clear()
    with TestClient(create_app(), headers=account.headers,
                    cookies={SESSION_COOKIE: account.session_cookie}) as client:
        file_id = upload(client, chat_records(4))["id"]
        launch(client, MODEL, file_id, lora=LORA, training={"max_steps": 2})
        job = launch(client, MODEL, file_id, lora=LORA, training={"gpus": 2, "strategy": "ddp", "max_steps": 2})
        depth = value(samples(client.get("/metrics").text), "tuneboard_queue_messages", queue=tuneboard_env.queue)
        page = client.get(f"/jobs/{job['id']}").text
    assert depth == 2, "the waiting two-GPU job counts in its queue's depth"
    # First in line for a two-GPU worker: the one-GPU job launched before it waits elsewhere.
    assert f"Queued at position 1 on queue {tuneboard_env.queue}: waiting for a worker with 2 GPUs." in page
    return job["id"]


def test_a_job_on_two_gpus_waits_in_its_queues_two_gpu_list_not_in_the_queue_itself(tuneboard_env, account,
                                                                                      monkeypatch):
    from sqlalchemy import update

    from app import redis_client
    from app.db import new_session
    from app.fleet.queue import TRAIN_TASK, get_celery
    from app.jobs import lifecycle
    from app.tables import Job, now

    job_id = _launch_on_two_gpus(tuneboard_env, account, monkeypatch)
    client, prefix, queue = redis_client.get_redis(), tuneboard_env.redis_key_prefix, tuneboard_env.queue
    assert client.llen(prefix + queue) == 1  # the one-GPU job's
    assert client.llen(prefix + f"{queue}@2gpus") == 1
    with new_session() as session:
        # The broker holds it there: nothing to send again.
        assert lifecycle.resend_stranded(session, client, tuneboard_env.settings, grace_seconds=0) == []
        # Lost (Redis restarted without persistence): sent again, to the same per-size list.
        client.delete(prefix + f"{queue}@2gpus")
        assert lifecycle.resend_stranded(session, client, tuneboard_env.settings, grace_seconds=0) == [job_id]
        assert client.llen(prefix + queue) == 1
        assert client.llen(prefix + f"{queue}@2gpus") == 1
        # A message on the queue itself (sent before per-size queues) holds the job too: not sent a second time.
        client.delete(prefix + f"{queue}@2gpus")
        get_celery().send_task(TRAIN_TASK, args=[job_id], queue=queue)
        session.execute(update(Job).where(Job.id == job_id).values(sent_at=now() - 60))  # sent a minute ago
        # (the one-GPU job, sent just now, is no candidate: only this job's lists are read)
        session.execute(update(Job).where(Job.id != job_id).values(sent_at=now() + 3600))
        session.commit()
        assert lifecycle.resend_stranded(session, client, tuneboard_env.settings, grace_seconds=0) == []
    assert client.llen(prefix + queue) == 2
    assert client.llen(prefix + f"{queue}@2gpus") == 0


def test_the_reaper_says_when_the_job_begins_to_wait_then_fails_it_when_the_wait_is_over(tuneboard_env, account,
                                                                                       monkeypatch):
    from app import redis_client
    from app.db import new_session
    from app.fleet import worker_registry
    from app.jobs.gpu_wait import check_gpu_waits
    from app.jobs.streams import gpu_wait_key
    from app.main import create_app
    from app.tables import Job, now

    job_id = _launch_on_two_gpus(tuneboard_env, account, monkeypatch)
    client = redis_client.get_redis()
    settings = tuneboard_env.settings.model_copy(update={"gpu_wait_seconds": 60})
    clock = gpu_wait_key(job_id, attempts=0)

    def one_gpu_worker(live: bool) -> None:  # its announcement, as a worker's reaper writes and lets expire
        if not live:
            client.delete(worker_registry._key_prefix() + "onegpu@host")
            return
        worker_registry.announce(client, {"hostname": "onegpu@host", "queues": [tuneboard_env.queue],
                                          "device": "NVIDIA H100", "gpu_memory_bytes": 80 * 1024**3,
                                          "gpu_count": 1, "seen_at": now()}, ttl_seconds=300)

    with new_session() as session:
        # No worker of the queue at all: the job waits as any job does, and nobody times it.
        assert check_gpu_waits(session, client, settings) == []
        assert client.get(clock) is None
        one_gpu_worker(live=True)
        assert check_gpu_waits(session, client, settings) == []
        assert client.get(clock) is not None
        # Every worker of the queue gone (a fleet restart): the clock restarts, not counting that time.
        one_gpu_worker(live=False)
        assert check_gpu_waits(session, client, settings) == []
        assert client.get(clock) is None
        one_gpu_worker(live=True)
        assert check_gpu_waits(session, client, settings) == []
        assert check_gpu_waits(session, client, settings) == []
        assert session.get(Job, job_id).status == "queued"
        # A clock left from an earlier attempt of the job is not this wait's.
        client.set(gpu_wait_key(job_id, attempts=1), now() - 3600)
        assert check_gpu_waits(session, client, settings) == []
        client.set(clock, now() - 90)  # this wait began a minute and a half ago
        assert check_gpu_waits(session, client, settings) == [job_id]
        assert check_gpu_waits(session, client, settings) == []  # nothing left waiting
    with TestClient(create_app(), headers=account.headers) as api:
        job = api.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        messages = [event["message"] for event in all_events(api, job_id)]
    assert job["status"] == "failed" and job["attempts"] == 0
    assert job["error"]["code"] == "no_worker_with_gpus"
    assert re.fullmatch(rf"it waited 9\d seconds for a worker with 2 GPUs, and no live worker of queue "
                        rf"'{tuneboard_env.queue}' has that many \(the most is 1\)\. .+", job["error"]["message"])
    # Said when each wait began: the first, and the one after the fleet came back.
    assert messages.count(f"Waiting for a worker with 2 GPUs on queue '{tuneboard_env.queue}'.") == 2
    assert messages[-1].startswith("Job failed: it waited")
