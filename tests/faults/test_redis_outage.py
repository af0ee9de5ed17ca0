"""A Redis outage loses nothing the database holds: cancels, live steps, and jobs created meanwhile.

The fault, on the real stack: a Redis server of this test's own, killed with SIGKILL while a real Celery
worker trains, and started again without persistence (an empty dataset, as a restart without AOF leaves it).
The database is the truth: the worker reads a cancel from it however the Redis flag fared, a resumed stream
sends from it the steps Redis never carried, and a job created while the broker was away is sent once it is
back (the reaper's reconciliation) instead of failing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
import redis

from app.db import new_session
from app.fleet import queue
from app.jobs import streams
from app.tables import Job
from tests.configure.conftest import wait_until
from tests.jobs.conftest import client, model_dir  # noqa: F401 - fixtures this module uses
from tests.jobs.helpers import (
    all_events,
    chat_records,
    launch,
    metric_steps,
    stored_job,
    upload,
    wait_for,
    wait_until_finished,
)

LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
TRAINING = {"batch_size": 4, "learning_rate": 5e-3, "sequence_length": 64, "precision": "fp32", "logging_steps": 1,
            "warmup_ratio": 0.0, "lr_scheduler": "constant"}
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


class OwnRedis:
    """The embedded redis-server (6.2, as `tuneboard up` ships it) on a port of this test's own, which the test
    kills and starts again; each start in a fresh folder, so a restart comes back empty."""

    def __init__(self, root: Path):
        from tests.services import free_port

        self.root, self.port, self.starts = root, free_port(), 0
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (again), without the data of any earlier run."""
        from app.ops.redis_server import start_embedded_redis

        self.starts += 1
        self.process = start_embedded_redis(self.root / f"run-{self.starts}", self.port)

    def kill(self) -> None:
        """SIGKILL, as a crashed host or an OOM kill ends it."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def own_redis(tmp_path):
    server = OwnRedis(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def redis_url(own_redis) -> str:
    """This test's Tuneboard uses its own Redis server, which it may kill."""
    return own_redis.url


def _running_job(account) -> str:
    return stored_job(account.team_id, attempts=1)


# --- point 3: cancel ---------------------------------------------------------------------------------------
@pytest.mark.both_databases  # the worker reads the cancel from the database
def test_a_cancel_sent_while_redis_is_down_answers_200_and_stops_the_running_job(
        client, start_worker, model_dir, own_redis):  # noqa: F811 - the imported fixtures
    # What ends the job must be the worker's own stop: the tests' 6 s lease can lapse on two saturated cores, and the
    # reaper would then end it as "cancelled (its worker stopped before it could confirm)". A 30 s lease leaves the
    # reaper out of it, as the 60 s default does.
    start_worker(TUNEBOARD_LEASE_SECONDS="30")
    max_steps = 4000  # minutes of training: only a cancel ends it within the test
    job = launch(client, model_dir, upload(client, chat_records())["id"], lora=LORA,
                 training={**TRAINING, "max_steps": max_steps, "save_steps": max_steps})
    wait_for(client, job["id"], lambda j: j["status"] == "running" and j["progress"]["step"] >= 3, what="step 3")

    own_redis.kill()
    response = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    assert response.status_code == 200, response.text  # was a 500, with the cancel half recorded
    assert response.json()["status"] == "running"

    # Redis stays down: the worker reads the cancel from the database, and its training loop stops itself (its
    # own last word), not the hard stop that would come once the grace period (60 s) had passed.
    job = wait_until_finished(client, job["id"], timeout=120)
    assert job["status"] == "cancelled", job
    messages = [e["message"] for e in all_events(client, job["id"])]
    assert "Job cancelled; its last checkpoint is kept." in messages, messages
    assert not [m for m in messages if "terminated" in m], messages
    assert job["progress"]["step"] < max_steps

    own_redis.start()  # back, empty
    retry = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    assert retry.status_code == 400 and retry.json()["error"]["code"] == "job_finished"
    kinds = [e["data"]["kind"] for e in all_events(client, job["id"])]
    assert kinds.count("cancel_requested") == 1, kinds
    assert "succeeded" not in kinds


@SQLITE_ONLY
def test_a_retried_cancel_raises_the_redis_flag_again(client, account, own_redis):  # noqa: F811
    job_id = _running_job(account)
    own_redis.kill()
    assert client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").status_code == 200
    with new_session() as session:
        job = session.get(Job, job_id)
        assert job.cancel_requested and job.status == "running"  # recorded: the truth the worker reads

    own_redis.start()  # without the flag: it never reached Redis
    flag = streams.cancel_key(job_id)
    probe = redis.Redis.from_url(own_redis.url, socket_timeout=5)
    assert not probe.exists(flag)
    assert client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").status_code == 200
    assert probe.exists(flag)  # the retry reaches the training loop's fast path
    kinds = [e["data"]["kind"] for e in all_events(client, job_id)]
    assert kinds.count("cancel_requested") == 1, kinds


# --- point 4: live steps and jobs created during the outage -----------------------------------------------
class SseReader(threading.Thread):
    """One SSE connection read to its end, as the job page holds it: every event, with how often it opened."""

    def __init__(self, url: str, headers: dict[str, str], params: dict | None = None):
        super().__init__(daemon=True)
        self.url, self.headers, self.params = url, headers, params or {}
        self.events: list[dict] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.stream("GET", self.url, headers=self.headers, params=self.params,
                              timeout=httpx.Timeout(10, read=60)) as response:
                assert response.status_code == 200, response.read()
                current: dict = {}
                for line in response.iter_lines():
                    if line == "":
                        if "event" in current:
                            self.events.append(current)
                            if current["event"] == "end":
                                return
                        current = {}
                    elif not line.startswith(":"):
                        field, _, value = line.partition(":")
                        current[field] = value.removeprefix(" ")
        except BaseException as exc:  # reported by the test
            self.error = exc

    def steps(self) -> list[int]:
        return [json.loads(e["data"])["step"] for e in self.events if e["event"] == "metric"]


def _stored_step(job_id: str) -> int:
    with new_session() as session:
        return session.get(Job, job_id).step or 0


def test_steps_logged_while_redis_was_down_reach_the_open_stream_and_a_replay_once(
        client, account, start_worker, model_dir, own_redis, live_server):  # noqa: F811
    start_worker()
    longest = 100_000  # never reached: the test cancels the run once the stream carried steps after the outage
    job = launch(client, model_dir, upload(client, chat_records())["id"], lora=LORA,
                 training={**TRAINING, "max_steps": longest, "save_steps": longest})
    wait_for(client, job["id"], lambda j: j["status"] == "running" and j["progress"]["step"] >= 3, what="step 3")

    # As the job page does: the stored steps first, then the stream after them.
    stored = [p["step"] for p in metric_steps(client, job["id"])]
    url = f"{live_server.url}/v1/fine_tuning/jobs/{job['id']}/stream"
    page = SseReader(url, account.headers, {"after_step": stored[-1]})
    page.start()
    wait_until(lambda: len(page.steps()) >= 3, 60, 0.1, shown=lambda: page.events)

    own_redis.kill()
    before = _stored_step(job["id"])
    # The outage lasts until the worker logged two steps that only the database took, however fast it trains.
    wait_until(lambda: _stored_step(job["id"]) - before >= 2, 120, 0.1,
               shown=lambda: (before, _stored_step(job["id"])))
    during = _stored_step(job["id"])
    own_redis.start()  # empty: the stream, the attempt key and the broker's message are gone
    # Steps after the outage reach the open stream; then the run is cancelled and its stream ends.
    wait_until(lambda: page.steps() and page.steps()[-1] >= during + 3, 120, 0.1, shown=lambda: page.events[-3:])
    assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").status_code == 200
    job = wait_until_finished(client, job["id"], timeout=120)
    assert job["status"] == "cancelled", job["error"]
    last = _stored_step(job["id"])
    page.join(timeout=60)
    assert page.error is None, page.error
    assert page.events and page.events[-1]["event"] == "end", page.events[-3:]
    # One connection, never dropped: every step after the stored ones, each once, in order, the outage's included.
    assert page.steps() == list(range(stored[-1] + 1, last + 1)), page.steps()
    assert [p["step"] for p in metric_steps(client, job["id"])] == list(range(1, last + 1))

    # A page opened now replays a stream that starts mid-run (Redis lost its first part): the database fills it.
    replay = SseReader(url, account.headers)
    replay.run()
    assert replay.error is None, replay.error
    assert replay.steps() == list(range(1, last + 1)), replay.steps()
    # A client back from a drop before the outage resumes with its Last-Event-ID and the step it holds.
    resumed = SseReader(url, {**account.headers, "Last-Event-ID": page.events[0]["id"]},
                        {"after_step": page.steps()[0]})
    resumed.run()
    assert resumed.error is None, resumed.error
    assert resumed.steps() == list(range(page.steps()[0] + 1, last + 1)), resumed.steps()


def test_a_job_created_while_redis_is_down_is_queued_and_runs_once_redis_is_back(
        client, start_worker, model_dir, own_redis):  # noqa: F811
    file_id = upload(client, chat_records())["id"]
    start_worker()
    own_redis.kill()
    response = client.post("/v1/fine_tuning/jobs", json={"model": model_dir, "training_file": file_id, "lora": LORA,
                                                          "training": {**TRAINING, "max_steps": 10, "save_steps": 10}})
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "queued" and job["error"] is None, job  # was failed: queue_unreachable
    assert any("did not answer" in e["message"] and "stays queued" in e["message"]
               for e in all_events(client, job["id"]))
    # Answered at once: the send gave up after Celery's few publish retries (a refused connection each, and
    # under two seconds of pauses between them), not after waiting for the broker to come back.
    policy = queue.get_celery().conf.task_publish_retry_policy
    pauses = [min(policy["interval_start"] + i * policy["interval_step"], policy["interval_max"])
              for i in range(policy["max_retries"])]
    assert sum(pauses) < 2, policy

    own_redis.start()  # empty: nothing holds the job's message, so the reaper sends it
    job = wait_until_finished(client, job["id"], timeout=120)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 1
    assert [p["step"] for p in metric_steps(client, job["id"])] == list(range(1, 11))
