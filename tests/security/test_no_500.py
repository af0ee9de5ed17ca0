"""No request answers 500: the inputs the schema fuzzer found, each replayed on SQLite and PostgreSQL.

Each answered 500 before (a unicode digit that str.isdigit() accepts but int() refuses, an integer past the
database's 64 bits, a NUL character that PostgreSQL refuses in text) and must now be a 4xx in the API's
error envelope naming the parameter.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.db import new_session
from app.tables import Checkpoint, Event
from tests.jobs.helpers import stored_job


@pytest.fixture
def api(tuneboard_env, account):
    """The app with the admin of team Alpha's token; a crash comes back as its 500, not as an exception."""
    from app.main import create_app

    with TestClient(create_app(), headers=account.headers, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def job_id(account) -> str:
    """A job of team Alpha with one event and one checkpoint, so the cursors have something to page through."""
    job_id = stored_job(account.team_id, metadata_={"a": "x"})
    with new_session() as session:
        session.add(Event(job_id=job_id, level="info", message="started"))
        session.add(Checkpoint(job_id=job_id, step=5, storage_key=f"checkpoints/{job_id}/5"))
        session.commit()
    return job_id


def assert_refused(response, param: str, status: int = 400) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    return error


@pytest.mark.parametrize("cursor", ["ftevent-²", "ftevent-١٢", "ftevent-99999999999999999999", "ftevent--1"])
def test_events_cursor_with_a_unicode_digit_or_huge_number_is_a_400_not_a_crash(api, job_id, cursor):
    error = assert_refused(api.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"after": cursor}), "after")
    assert error["code"] == "invalid_cursor" and cursor in error["message"]
    assert api.get(f"/v1/fine_tuning/jobs/{job_id}/events").json()["data"][0]["message"] == "started"


@pytest.mark.parametrize("cursor", ["ftckpt-²", "ftckpt-99999999999999999999"])
def test_checkpoints_cursor_with_a_unicode_digit_or_huge_number_is_a_400_not_a_crash(api, job_id, cursor):
    error = assert_refused(api.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints", params={"after": cursor}), "after")
    assert error["code"] == "invalid_cursor"
    assert api.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"][0]["step_number"] == 5


def test_metrics_after_a_step_past_64_bits_is_a_422_naming_after_step(api, job_id):
    response = api.get(f"/v1/fine_tuning/jobs/{job_id}/metrics", params={"after_step": "99999999999999999999"})
    error = assert_refused(response, "after_step", status=422)
    assert "after_step" in error["message"]
    largest = api.get(f"/v1/fine_tuning/jobs/{job_id}/metrics", params={"after_step": str(2**31 - 1)})
    assert largest.status_code == 200 and largest.json()["data"] == []


@pytest.mark.parametrize("query", ["metadata[a%00]=x", "metadata[a]=x%00"])
def test_metadata_filter_with_a_nul_character_is_a_422_naming_metadata(api, job_id, query):
    error = assert_refused(api.get(f"/v1/fine_tuning/jobs?{query}"), "metadata", status=422)
    assert "NUL" in error["message"]
    assert [job["id"] for job in api.get("/v1/fine_tuning/jobs?metadata[a]=x").json()["data"]] == [job_id]


@pytest.mark.parametrize(("method", "path", "kwargs", "param"), [
    ("GET", "/v1/fine_tuning/jobs", {"params": {"after": "ftjob-\x00"}}, "after"),
    ("GET", "/v1/files", {"params": {"purpose": "\x00"}}, "purpose"),
    ("GET", "/v1/fine_tuning/jobs/ftjob-%00", {}, None),
    ("POST", "/v1/fine_tuning/jobs", {"json": {"model": "m", "training_file": "file-\x00"}}, "training_file"),
    ("POST", "/v1/fine_tuning/jobs", {"json": {"model": "m", "training_file": "f", "metadata": {"k\x00": "v"}}},
     "metadata.k"),
])
def test_a_nul_character_anywhere_in_a_request_is_a_422_not_a_crash(api, job_id, method, path, kwargs, param):
    error = assert_refused(api.request(method, path, **kwargs), param, status=422)
    assert "NUL" in error["message"]
    assert api.get(f"/v1/fine_tuning/jobs/{job_id}").status_code == 200  # and the server answers on


def test_a_json_string_holding_a_backslash_before_u0000_is_not_mistaken_for_nul(api, job_id):
    response = api.get("/v1/fine_tuning/jobs", params={"metadata[a]": "x"})
    assert response.status_code == 200
    body = '{"model": "m", "training_file": "file-\\\\u0000"}'  # the text file-\\u0000: no NUL in it
    answer = api.post("/v1/fine_tuning/jobs", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 404 and answer.json()["error"]["param"] == "training_file", answer.text


def test_a_body_that_is_not_utf8_json_is_a_422_in_the_envelope(api):
    response = api.post("/v1/fine_tuning/estimate", content=b"\xff\xfe{", headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] in ("invalid_body", "invalid_value")
