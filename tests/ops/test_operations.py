"""Operations: `/readyz` (ready, and 503 naming each dead dependency), Prometheus `/metrics` (queue depth, jobs,
workers, job run times, request latency by route template, the optional token), JSON log lines from the web
app and a worker, and Celery task events from a real worker (what Flower reads).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.jobs.helpers import chat_records, launch, upload
from tests.services import ServerProcess, free_port

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
MODEL = "HuggingFaceTB/SmolLM2-135M"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a /metrics page: (sample name, its labels) -> value."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(page: dict, name: str, **labels: str) -> float | None:
    return page.get((name, frozenset(labels.items())))


def wait_until(check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    pytest.fail(f"still not true after {timeout:.0f} s")


def anonymous_app():
    from app.main import create_app

    return TestClient(create_app(), follow_redirects=False)


def _settings_changed(monkeypatch, **values: str) -> None:
    from app.settings import get_settings

    for key, val in values.items():
        monkeypatch.setenv(f"TUNEBOARD_{key.upper()}", val)
    get_settings.cache_clear()


# --- /readyz -------------------------------------------------------------------------------------------------


def test_readyz_is_ready_without_sign_in_when_every_dependency_answers(tuneboard_env):
    with anonymous_app() as client:
        response = client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "checks": {"database": {"status": "ok"}, "redis": {"status": "ok"},
                                                          "store": {"status": "ok"}}}


@SQLITE_ONLY
def test_readyz_answers_503_naming_every_dead_dependency_and_why(tuneboard_env, monkeypatch):
    # Nothing listens on these ports, and the artifact directory's place is taken by a file (root can write
    # anywhere, so an unwritable mode would not do).
    (tuneboard_env.data_dir / "artifacts").write_text("not a directory")
    _settings_changed(monkeypatch, database_url=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none",
                      redis_url=f"redis://127.0.0.1:{free_port()}/0", migrate_on_start="false")
    with anonymous_app() as client:
        response = client.get("/readyz")
        assert client.get("/healthz").status_code == 200  # alive, just not ready
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    checks = body["checks"]
    assert set(checks) == {"database", "redis", "store"}
    assert all(check["status"] == "error" for check in checks.values())
    assert checks["database"]["error"].startswith("OperationalError")
    assert checks["redis"]["error"].startswith("ConnectionError")
    assert "artifacts" in checks["store"]["error"]


@SQLITE_ONLY
def test_readyz_gives_up_on_a_hung_redis_after_its_timeout(tuneboard_env, monkeypatch):
    from app.ops.readiness import CHECK_TIMEOUT_SECONDS, _probe_client

    # Accepts connections (the kernel's backlog does) but never answers PING.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        _settings_changed(monkeypatch, redis_url=url)
        with anonymous_app() as client:
            response = client.get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["database"] == {"status": "ok"} and checks["store"] == {"status": "ok"}
    # Given up by one of the two limits of CHECK_TIMEOUT_SECONDS, whichever came first on this machine: the
    # check's own wait, or the probe's socket timeout (not the shared client's 10 s, nor none at all).
    assert checks["redis"]["error"] in (f"timed out after {CHECK_TIMEOUT_SECONDS:g} s",
                                        "TimeoutError: Timeout reading from socket"), checks["redis"]
    assert _probe_client(url).connection_pool.connection_kwargs["socket_timeout"] == CHECK_TIMEOUT_SECONDS


# --- /metrics ------------------------------------------------------------------------------------------------


def test_metrics_count_queued_and_running_jobs_queue_depth_and_run_times(tuneboard_env, account, monkeypatch):
    from sqlalchemy import update

    from app import redis_client
    from app.db import new_session
    from app.jobs import lifecycle
    from app.main import create_app
    from app.tables import Job

    _settings_changed(monkeypatch, metrics_public="true")  # /metrics needs a token or an admin session otherwise

    queue = tuneboard_env.queue  # no worker serves it: the messages stay in the broker
    with TestClient(create_app(), headers=account.headers) as client:
        file_id = upload(client, chat_records(4))["id"]
        first, second = (launch(client, MODEL, file_id, lora={"target_modules": ["q_proj"]})["id"] for _ in range(2))
        page = samples(client.get("/metrics").text)
        # Celery's Redis transport keeps the queue as a list named after it (behind the install's key prefix).
        assert redis_client.get_redis().llen(tuneboard_env.redis_key_prefix + queue) == 2
        assert value(page, "tuneboard_queue_messages", queue=queue) == 2
        assert value(page, "tuneboard_jobs_queued", queue=queue) == 2
        assert value(page, "tuneboard_jobs_running", queue=queue) == 0
        assert value(page, "tuneboard_workers_online", queue=queue) == 0
        assert value(page, "tuneboard_metrics_source_up", source="database") == 1
        assert value(page, "tuneboard_metrics_source_up", source="redis") == 1

        # One job runs and succeeds, the other is claimed and stays running (the lifecycle's own functions).
        settings = tuneboard_env.settings
        with new_session() as session:
            claim = lifecycle.claim(session, first, "w-test", settings)
            assert lifecycle.finish(session, first, "w-test", claim.attempt, "succeeded")
            # A run of 20 s, whatever this machine's speed between the two calls.
            session.execute(update(Job).where(Job.id == first).values(finished_at=Job.started_at + 20))
            session.commit()
            assert lifecycle.claim(session, second, "w-test", settings) is not None
        page = samples(client.get("/metrics").text)
    assert value(page, "tuneboard_jobs_queued", queue=queue) == 0
    assert value(page, "tuneboard_jobs_running", queue=queue) == 1
    assert value(page, "tuneboard_job_duration_seconds_count", status="succeeded") == 1
    assert value(page, "tuneboard_job_duration_seconds_bucket", status="succeeded", le="10.0") == 0
    assert value(page, "tuneboard_job_duration_seconds_bucket", status="succeeded", le="30.0") == 1
    assert value(page, "tuneboard_job_duration_seconds_bucket", status="succeeded", le="+Inf") == 1
    assert value(page, "tuneboard_job_duration_seconds_sum", status="succeeded") == pytest.approx(20)
    # The database says nothing waits any more; the broker still holds both messages (nobody consumed them).
    assert value(page, "tuneboard_queue_messages", queue=queue) == 2


@SQLITE_ONLY
def test_request_latency_is_labelled_by_route_template_not_raw_path(tuneboard_env, account, monkeypatch):
    from app.main import create_app

    _settings_changed(monkeypatch, metrics_token="scrape-secret")
    with TestClient(create_app(), headers=account.headers) as client:
        assert client.get("/v1/fine_tuning/jobs/ftjob-does-not-exist").status_code == 404
        assert client.get("/static/no-such-file.css").status_code == 404
        text = client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"}).text
    page = samples(text)
    route = "/v1/fine_tuning/jobs/{job_id}"
    assert value(page, "tuneboard_http_request_duration_seconds_count", method="GET", route=route, status="404") == 1
    assert value(page, "tuneboard_http_request_duration_seconds_count", method="GET", route="/static/{path}",
                 status="404") == 1
    assert "ftjob-does-not-exist" not in text and "no-such-file" not in text
    buckets = [labels for name, labels in page if name == "tuneboard_http_request_duration_seconds_bucket"
               and dict(labels)["route"] == route]
    assert {dict(labels)["le"] for labels in buckets} >= {"0.005", "1.0", "+Inf"}


@SQLITE_ONLY
def test_metrics_token_when_set_is_required_as_a_bearer_token(tuneboard_env, account, monkeypatch):
    _settings_changed(monkeypatch, metrics_token="scrape-secret")
    with anonymous_app() as client:
        missing = client.get("/metrics")
        wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
        user_token = client.get("/metrics", headers=account.headers)  # a user's API token is not the scrape token
        right = client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
        probe = client.get("/readyz")  # probes stay open
    assert missing.status_code == wrong.status_code == user_token.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"]["code"] == "invalid_metrics_token"
    assert right.status_code == 200 and "tuneboard_jobs_queued" in right.text
    assert probe.status_code == 200


# --- logs ----------------------------------------------------------------------------------------------------


def test_json_formatter_writes_one_object_with_context_and_extra_fields():
    import logging

    from app.ops.logging_setup import JsonFormatter, log_context

    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(handler.format(record))
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"tests.json.{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    with log_context(job_id="ftjob-1", team_id="team-1"):
        logger.info("step %d done", 3, extra={"step": 3})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    logger.info("outside")
    first, second, third = (json.loads(line) for line in lines)
    assert set(first) == {"timestamp", "level", "logger", "message", "job_id", "team_id", "step"}
    assert (first["level"], first["message"], first["job_id"], first["step"]) == ("INFO", "step 3 done", "ftjob-1", 3)
    assert first["timestamp"].endswith("+00:00")
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exception"]
    assert "job_id" not in third


@SQLITE_ONLY
def test_web_app_writes_json_lines_with_an_access_line_per_request(tuneboard_env, account, tmp_path):
    import httpx

    server = ServerProcess({**tuneboard_env.env, "TUNEBOARD_LOG_FORMAT": "json"}, tmp_path / "server.log")
    try:
        server.wait_ready()
        assert httpx.get(f"{server.url}/v1/fine_tuning/jobs", headers=account.headers).status_code == 200
    finally:
        server.stop()
    lines = [line for line in server.log_path.read_text().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is JSON
    assert all({"timestamp", "level", "logger", "message"} <= set(entry) for entry in entries)
    access = [e for e in entries if e["logger"] == "app.access" and e["path"] == "/v1/fine_tuning/jobs"]
    assert len(access) == 1, entries
    line = access[0]
    assert (line["method"], line["status"], line["route"]) == ("GET", 200, "/v1/fine_tuning/jobs")
    assert line["duration_ms"] >= 0 and line["team_id"] == account.team_id and line["user_id"] == account.user_id


# --- a real worker: task events (Flower), workers online, JSON logs ------------------------------------------


@SQLITE_ONLY
def test_worker_sends_task_events_counts_as_online_and_logs_json(tuneboard_env, start_worker, monkeypatch):
    from app.fleet.queue import get_celery
    from app.main import create_app

    queue = tuneboard_env.queue
    worker = start_worker(TUNEBOARD_LOG_FORMAT="json")
    celery = get_celery()
    task_id = uuid.uuid4().hex
    seen: list[str] = []
    listening = threading.Event()

    class Receiver(celery.events.Receiver):
        def on_consume_ready(self, *args, **kwargs):
            listening.set()

    def note(event: dict) -> None:
        if event.get("uuid") == task_id:
            seen.append(event["type"])

    with celery.connection_for_read() as connection:
        receiver = Receiver(connection, handlers={"*": note})
        thread = threading.Thread(target=receiver.capture, kwargs={"limit": None, "timeout": None}, daemon=True)
        thread.start()
        try:
            assert listening.wait(10)
            # A built-in task: the worker runs it at once, without loading the training stack.
            celery.send_task("celery.accumulate", args=[1], queue=queue, task_id=task_id)
            wait_until(lambda: "task-succeeded" in seen, timeout=30)
        finally:
            receiver.should_stop = True
            thread.join(5)
    assert {"task-sent", "task-received", "task-started", "task-succeeded"} <= set(seen)

    _settings_changed(monkeypatch, metrics_public="true")
    with TestClient(create_app()) as client:
        page = wait_until(lambda: (p := samples(client.get("/metrics").text))
                          and value(p, "tuneboard_workers_online", queue=queue) == 1 and p)
    assert value(page, "tuneboard_queue_messages", queue=queue) == 0

    logged = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    ready = [entry for entry in logged if entry["message"].endswith(" ready.")]
    assert ready and {"timestamp", "level", "logger", "message"} <= set(ready[0])
    assert any(entry["logger"].startswith("celery") for entry in logged)

