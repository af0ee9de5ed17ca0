"""The live stream over real HTTP: SSE resume with Last-Event-ID loses and repeats nothing."""

from __future__ import annotations

import json

import httpx
import pytest

from app import redis_client
from app.db import new_session
from app.jobs import lifecycle, streams
from app.tables import DataFile, Job

# The stream's HTTP side; reading metrics after a cursor runs on both databases in test_lifecycle.
pytestmark = pytest.mark.one_database


def _job(account, status: str = "running") -> str:
    with new_session() as session:
        data_file = DataFile(filename="t.jsonl", bytes=1, format="chat", examples=1, storage_key="datasets/t",
                             team_id=account.team_id)
        session.add(data_file)
        session.flush()
        job = Job(model="tiny", queue="q", config={}, training_file_id=data_file.id, status=status,
                  team_id=account.team_id)
        session.add(job)
        session.commit()
        return job.id


def _events(lines, wanted: int):
    """Read SSE events (id, event, data) from an iterator of lines until `wanted` were seen or the stream ends."""
    events, current = [], {}
    for line in lines:
        if line == "":
            if "event" in current:
                events.append(current)
                if len(events) == wanted:
                    return events
            current = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            current[field] = value.removeprefix(" ")
    return events


def test_reconnect_with_last_event_id_resumes_without_gaps_or_duplicates(live_server, account):
    job_id = _job(account)
    client = redis_client.get_redis()
    for step in range(1, 6):
        streams.publish(client, job_id, "metric", {"step": step, "loss": 1 / step}, max_len=1000)

    url = f"{live_server.url}/v1/fine_tuning/jobs/{job_id}/stream"
    with httpx.stream("GET", url, headers=account.headers, timeout=10) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        first = _events(response.iter_lines(), 3)
    # While the browser is away, training goes on.
    for step in range(6, 11):
        streams.publish(client, job_id, "metric", {"step": step, "loss": 1 / step}, max_len=1000)

    with httpx.stream("GET", url, headers={"Last-Event-ID": first[-1]["id"], **account.headers},
                      timeout=10) as response:
        lines = response.iter_lines()
        rest = _events(lines, 7)
        with new_session() as session:
            job = session.get(Job, job_id)
            job.status = "succeeded"
            session.commit()
            lifecycle.publish_status(client, job)
        tail = _events(lines, 2)

    steps = [json.loads(e["data"])["step"] for e in first + rest]
    assert steps == list(range(1, 11))
    assert [e["event"] for e in tail] == ["status", "end"]
    assert json.loads(tail[0]["data"])["status"] == "succeeded"


def test_finished_job_replays_its_stream_then_ends(live_server, account):
    job_id = _job(account, status="succeeded")
    client = redis_client.get_redis()
    streams.publish(client, job_id, "metric", {"step": 1, "loss": 2.0}, max_len=1000)
    with httpx.stream("GET", f"{live_server.url}/v1/fine_tuning/jobs/{job_id}/stream", headers=account.headers,
                      timeout=10) as response:
        events = _events(response.iter_lines(), 10)
    assert [e["event"] for e in events] == ["metric", "end"]


def test_stream_of_unknown_job_is_404_and_bad_cursor_is_400(live_server, account):
    response = httpx.get(f"{live_server.url}/v1/fine_tuning/jobs/ftjob-nope/stream", headers=account.headers,
                         timeout=10)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "job_not_found"
    job_id = _job(account)
    response = httpx.get(f"{live_server.url}/v1/fine_tuning/jobs/{job_id}/stream",
                         headers={"Last-Event-ID": "yesterday", **account.headers}, timeout=10)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "Last-Event-ID"
    # Look-alike digits, a trailing newline and parts past Redis's 64 bits are not stream ids either (no 500).
    for cursor in ("\u0663-0", "1-0\n", "99999999999999999999-0"):
        response = httpx.get(f"{live_server.url}/v1/fine_tuning/jobs/{job_id}/stream",
                             params={"after": cursor}, headers=account.headers, timeout=10)
        assert response.status_code == 400, cursor


def test_after_step_leaves_out_stored_steps_but_resends_what_a_rewind_replaces(live_server, account):
    job_id = _job(account, status="succeeded")
    client = redis_client.get_redis()
    for step in range(1, 46):  # the first attempt, lost after step 45
        streams.publish(client, job_id, "metric", {"step": step, "loss": 1.0}, max_len=1000)
    streams.publish(client, job_id, "rewind", {"step": 40}, max_len=1000)  # resumed from checkpoint 40
    for step in range(41, 61):
        streams.publish(client, job_id, "metric", {"step": step, "loss": 0.5}, max_len=1000)
    streams.publish(client, job_id, "metric", {"step": 61, "loss": 0.4}, max_len=1000)

    def received(after_step: int) -> list[tuple[str, int]]:
        with httpx.stream("GET", f"{live_server.url}/v1/fine_tuning/jobs/{job_id}/stream", timeout=10,
                          params={"after_step": after_step}, headers=account.headers) as response:
            return [(e["event"], json.loads(e["data"]).get("step")) for e in _events(response.iter_lines(), 500)
                    if e["event"] in ("metric", "rewind")]

    # The page holds steps 1..30 from /metrics: the stream sends 31..45, the rewind, then 41..61 again.
    assert received(30) == [("metric", s) for s in range(31, 46)] + [("rewind", 40)] + \
        [("metric", s) for s in range(41, 62)]
    # It holds 1..55 (the second attempt's, flushed): only the rewind's replacement steps and what is newer.
    assert received(55) == [("rewind", 40)] + [("metric", s) for s in range(41, 62)]
    bad = httpx.get(f"{live_server.url}/v1/fine_tuning/jobs/{job_id}/stream", params={"after_step": "x"},
                    headers=account.headers, timeout=10)
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "after_step"
