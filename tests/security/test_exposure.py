"""What the server shows and accepts beyond a team's own objects: /metrics only to the scrape token or an admin
session (unless an admin opens it), jobs only to queues that exist, and /vendor only the files the pages load.
"""

from __future__ import annotations

import html as html_text
import re

import pytest
from fastapi.testclient import TestClient

from app import redis_client
from app.fleet import worker_registry
from app.settings import REPO_ROOT
from app.web.vendor_files import VENDOR_FILES
from tests.configure.conftest import wait_until
from tests.configure.test_pages import form, messages_beside
from tests.jobs.helpers import chat_records, upload

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _settings_changed(monkeypatch, **values: str) -> None:
    from app.settings import get_settings

    for key, val in values.items():
        monkeypatch.setenv(f"TUNEBOARD_{key.upper()}", val)
    get_settings.cache_clear()


def _app(**kwargs) -> TestClient:
    from app.main import create_app

    return TestClient(create_app(), follow_redirects=False, **kwargs)


# --- /metrics ------------------------------------------------------------------------------------------------


@SQLITE_ONLY
def test_anonymous_caller_cannot_read_metrics_that_name_every_queue(tuneboard_env):
    with _app() as client:
        response = client.get("/metrics")
    assert response.status_code == 401
    assert "tuneboard_jobs_queued" not in response.text
    assert "signed-in admin" in response.json()["error"]["message"]


@SQLITE_ONLY
def test_metrics_open_to_an_admin_session_and_the_scrape_token_only(tuneboard_env, account, make_user, monkeypatch):
    _settings_changed(monkeypatch, metrics_token="scrape-secret")
    member = make_user("bob@example.com", "Alpha", "member")
    with _app() as client:
        admin_session = client.get("/metrics", cookies={"tuneboard_session": account.session_cookie})
        member_session = client.get("/metrics", cookies={"tuneboard_session": member.session_cookie})
        admin_api_token = client.get("/metrics", headers=account.headers)  # scripts' tokens are not the scrape key
        scraper = client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
    assert admin_session.status_code == 200 and "tuneboard_jobs_queued" in admin_session.text
    assert member_session.status_code == 403 and "tuneboard_jobs_queued" not in member_session.text
    assert admin_api_token.status_code == 401
    assert scraper.status_code == 200 and "tuneboard_jobs_queued" in scraper.text


@SQLITE_ONLY
def test_an_admin_may_make_metrics_public(tuneboard_env, monkeypatch):
    _settings_changed(monkeypatch, metrics_public="true")
    with _app() as client:
        response = client.get("/metrics")
    assert response.status_code == 200 and "tuneboard_jobs_queued" in response.text


# --- queues --------------------------------------------------------------------------------------------------


def test_job_to_a_made_up_queue_is_refused_naming_the_allowed_ones(tuneboard_env, account, monkeypatch):
    _settings_changed(monkeypatch, metrics_public="true", queues="gpu-night")
    with _app(headers=account.headers) as client:
        file_id = upload(client, chat_records(4))["id"]
        response = client.post("/v1/fine_tuning/jobs", json={"model": MODEL, "training_file": file_id,
                                                              "queue": "made-up-queue"})
        listed = client.get("/v1/fine_tuning/jobs").json()["data"]
        scraped = client.get("/metrics").text
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "queue" and error["code"] == "unknown_queue"
    assert "'made-up-queue'" in error["message"]
    assert f"allowed: gpu-night, {tuneboard_env.queue}" in error["message"]
    assert listed == []  # nothing stored
    assert "made-up-queue" not in scraped


def test_job_goes_to_a_configured_queue_or_one_a_live_worker_serves(tuneboard_env, account, start_worker,
                                                                    monkeypatch):
    _settings_changed(monkeypatch, queues="gpu-night")
    start_worker(queues=["gpu-live"])
    redis = redis_client.get_redis()
    wait_until(lambda: "gpu-live" in worker_registry.queues_served(worker_registry.live_workers(redis)), timeout=30)
    with _app(headers=account.headers) as client:
        file_id = upload(client, chat_records(4))["id"]
        for queue in ("gpu-night", tuneboard_env.queue):
            response = client.post("/v1/fine_tuning/jobs", json={"model": MODEL, "training_file": file_id,
                                                                  "queue": queue})
            assert response.status_code == 200, response.text
            assert response.json()["queue"] == queue
        # A job sent to the live worker's queue; it may start at once, so only the queue is checked.
        live = client.post("/v1/fine_tuning/jobs", json={"model": MODEL, "training_file": file_id,
                                                         "queue": "gpu-live", "training": {"max_steps": 1}})
        assert live.status_code == 200, live.text
        client.post(f"/v1/fine_tuning/jobs/{live.json()['id']}/cancel")


@SQLITE_ONLY
def test_launch_form_refuses_a_made_up_queue_beside_the_queue_field(tuneboard_env, account):
    with _app(headers=account.headers) as client:
        file_id = upload(client, chat_records(20))["id"]
        response = client.post("/launch", data=form(training_file=file_id, max_steps="3", queue="made-up-queue"))
        jobs = client.get("/v1/fine_tuning/jobs").json()["data"]
    assert response.status_code == 422
    beside = messages_beside(response.text, "queue")
    assert "'made-up-queue'" in beside and f"allowed: {tuneboard_env.queue}" in beside
    assert jobs == []


@SQLITE_ONLY
def test_launch_form_offers_the_configured_queues(tuneboard_env, account, monkeypatch):
    _settings_changed(monkeypatch, queues="gpu-night")
    with _app(headers=account.headers) as client:
        html = html_text.unescape(client.get("/").text)
    assert '<option value="gpu-night"' in html and "gpu-night — no live worker" in html


# --- /vendor -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [
    "/vendor/uplot/package.json", "/vendor/.package-lock.json", "/vendor/htmx.org/package.json",
    "/vendor/@scarf/scarf/package.json", "/vendor/@scarf/scarf/report.js", "/vendor/swagger-ui-dist/index.html",
    "/vendor/swagger-ui-dist/package.json", "/vendor/uplot/dist/uPlot.esm.js", "/vendor/htmx.org/dist/htmx.js",
    "/vendor/uplot/../uplot/package.json", "/vendor/uplot/dist/../package.json", "/vendor/",
])
@SQLITE_ONLY
def test_vendor_serves_nothing_of_node_modules_but_the_pages_files(tuneboard_env, path):
    with _app() as client:
        response = client.get(path)
    assert response.status_code == 404, (path, response.status_code)
    assert '"version"' not in response.text


@SQLITE_ONLY
def test_every_vendor_file_a_page_loads_is_served(tuneboard_env):
    referenced = set()
    for source in [*(REPO_ROOT / "templates").rglob("*.html"), REPO_ROOT / "app" / "main.py"]:
        referenced |= set(re.findall(r'/vendor/([^"\'\s>]+)', source.read_text()))
    assert referenced and referenced <= VENDOR_FILES, referenced - VENDOR_FILES
    with _app() as client:
        for name in sorted(VENDOR_FILES):
            response = client.get(f"/vendor/{name}")
            assert response.status_code == 200, name
            assert response.headers["x-content-type-options"] == "nosniff"
