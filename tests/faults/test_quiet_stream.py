"""A quiet live stream stays open: 40 seconds without a step break nothing and log nothing.

Before: redis-py 8's default 5 s socket timeout was shorter than the stream's 15 s blocking read, so every
quiet job's stream broke every 5 s (an ASGI traceback each time in the web log, the page's connection cut,
and `tuneboard submit` printing "Connection lost... reconnecting" 7 times in 40 s on a queued job). Now every
Redis client pins its timeouts. The fault here is nothing at all: a job queued with no worker, watched for
40 seconds by the page's stream and by `tuneboard submit`, through a real uvicorn and a real Redis.
"""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest

from app import redis_client
from app.fleet import queue
from app.jobs import stream_hub
from tests.client.test_cli_client import CATALOG_MODEL, LiveCli, write_job_file, write_training_data

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # a Redis question only
# The report's window (7 reconnects in 40 s): eight of the old 5 s timeouts, more than two of the stream's 15 s
# blocking reads, four of the server's 10 s keep-alive pings, and longer than the page reader's 35 s read timeout.
QUIET_SECONDS = 40


def test_every_redis_client_pins_timeouts_longer_than_its_blocking_reads(tuneboard_env):
    pool = redis_client.get_redis().connection_pool.connection_kwargs
    assert pool["socket_timeout"] == redis_client.SOCKET_TIMEOUT_SECONDS  # no blocking command on this client
    assert pool["socket_connect_timeout"] == redis_client.CONNECT_TIMEOUT_SECONDS < pool["socket_timeout"]
    assert pool["health_check_interval"] > 0
    assert stream_hub.SOCKET_TIMEOUT_S > stream_hub.BLOCK_MS / 1000  # the live streams' XREAD BLOCK
    options = queue.make_celery(tuneboard_env.settings).conf.broker_transport_options
    assert options["socket_timeout"] > 1  # Kombu's BRPOP blocks for 1 s
    assert options["socket_connect_timeout"] < options["socket_timeout"]
    assert options["health_check_interval"] > 0


@SQLITE_ONLY
@pytest.mark.long
def test_a_stream_quiet_for_40_seconds_stays_open_without_a_reconnect_or_a_log_line(live_server, account, tmp_path):
    write_training_data(tmp_path)  # no worker: the job stays queued, its stream quiet
    job_file = write_job_file(tmp_path, {"model": CATALOG_MODEL, "training_file": "data/train.jsonl"})
    cli = LiveCli("submit", str(job_file), "--url", live_server.url, "--token", account.token)
    try:
        job_id = cli.wait_for_line(r"^Created job (ftjob-\S+) ").group(1)
        cli.wait_for_line(r"Job queued on ")  # its stream is open
        log_before = live_server.log_path.read_text(errors="replace")

        # The job page's stream, held open beside it: one connection for the whole quiet time.
        page: dict = {"pings": 0, "events": [], "closed": None}

        def hold_the_page_stream() -> None:
            try:
                with httpx.stream("GET", f"{live_server.url}/v1/fine_tuning/jobs/{job_id}/stream",
                                  headers=account.headers, timeout=httpx.Timeout(10, read=35)) as response:
                    assert response.status_code == 200
                    for line in response.iter_lines():
                        if line.startswith(":"):
                            page["pings"] += 1
                        elif line.startswith("event:"):
                            page["events"].append(line)
                page["closed"] = "the server ended the stream"
            except BaseException as exc:  # reported below
                page["closed"] = repr(exc)

        reader = threading.Thread(target=hold_the_page_stream, daemon=True)
        reader.start()
        time.sleep(QUIET_SECONDS)  # the scenario: a while in which nothing happens
        assert reader.is_alive() and page["closed"] is None, page["closed"]
        assert page["pings"] >= QUIET_SECONDS // 10 - 1, page  # the server's keep-alive pings, every 10 s
        assert [e for e in page["events"] if e != "event: event"] == [], page["events"]  # nothing but the replay
        log_after = live_server.log_path.read_text(errors="replace")

        cli.process.send_signal(signal.SIGINT)
        code, out, err = cli.finish()
    finally:
        cli.kill()

    assert code == 130, out + err
    assert "Connection lost" not in out and "reconnecting" not in out, out
    assert "Reconnected" not in out, out
    assert log_after == log_before, log_after[len(log_before):][-3000:]
