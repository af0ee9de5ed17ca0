"""Live streams cannot be exhausted (issue 10, point 10).

Before: every SSE connection held its own Redis connection in a 15 s blocking XREAD, so one user with 120
streams starved the shared pool and another team's live view failed 7 times in 10; and redis-py 8's 5 s
default socket timeout killed every quiet stream with a traceback. Now a job's viewers in one web process
share one Redis reader, a user may hold `max_streams_per_user` streams (429 naming the limit past it), and
an idle stream stays quiet. Real uvicorn, real Redis, real SSE clients.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time

import httpx
import pytest
import redis

from app import redis_client
from app.jobs import streams
from tests.jobs.helpers import stored_job

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # no database question here


def run_in_own_loop(scenario) -> None:
    """asyncio.run in a thread of its own: a session's Playwright (sync API) keeps a loop running in this one."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, scenario()).result()


def _job(account) -> str:
    return stored_job(account.team_id)


async def _read_events(response: httpx.Response, wanted: int, events: list[dict]) -> None:
    current: dict = {}
    async for line in response.aiter_lines():
        if line == "":
            if "event" in current:
                events.append(current)
                if len(events) >= wanted:
                    return
            current = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            current[name] = value.removeprefix(" ")


def _blocked_xreads(redis_url: str, server) -> int:
    """The web server's connections to Redis now blocked in XREAD (other tests share this Redis: their readers,
    on connections of other processes, do not count)."""
    import psutil

    own = {f"{c.laddr.ip}:{c.laddr.port}" for c in psutil.Process(server.process.pid).net_connections(kind="tcp")
           if c.raddr}
    clients = redis.Redis.from_url(redis_url).client_list()
    return sum(1 for c in clients if c.get("cmd") == "xread" and c.get("addr") in own)


async def _readers_waiting(redis_url: str, server, timeout: float = 10) -> int:
    """The server's connections blocked in XREAD, once there is at least one (or after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while not (count := _blocked_xreads(redis_url, server)) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return count


@SQLITE_ONLY
def test_one_user_with_120_streams_gets_429_past_the_cap_and_another_team_still_streams(live_server, account,
                                                                                         make_user, tuneboard_env):
    limit = tuneboard_env.settings.max_streams_per_user
    greedy_job = _job(account)
    other = make_user("bob@example.com", "Beta")
    other_job = _job(other)
    publisher = redis_client.get_redis()

    async def scenario():
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=live_server.url, timeout=httpx.Timeout(30, read=60),
                                     limits=limits) as http:
            url = f"/v1/fine_tuning/jobs/{greedy_job}/stream"
            opened = await asyncio.gather(*(http.send(http.build_request("GET", url, headers=account.headers),
                                                      stream=True) for _ in range(120)))
            try:
                statuses = [r.status_code for r in opened]
                assert statuses.count(200) == limit and statuses.count(429) == 120 - limit, statuses
                refused = next(r for r in opened if r.status_code == 429)
                error = json.loads(await refused.aread())["error"]
                assert error["code"] == "too_many_streams" and f"the limit is {limit}" in error["message"]
                assert "max_streams_per_user" in error["message"]
                # Another team's live view gets every point, ten times over.
                for attempt in range(10):
                    async with http.stream("GET", f"/v1/fine_tuning/jobs/{other_job}/stream",
                                           headers={**other.headers, "Last-Event-ID": "0-0"}) as response:
                        assert response.status_code == 200
                        streams.publish(publisher, other_job, "metric", {"step": attempt + 1, "loss": 1.0},
                                        max_len=1000)
                        events: list[dict] = []
                        await asyncio.wait_for(_read_events(response, attempt + 1, events), 10)
                        assert [json.loads(e["data"])["step"] for e in events] == list(range(1, attempt + 2))
                # The greedy user's own streams still work, and closing one frees a slot.
                streams.publish(publisher, greedy_job, "metric", {"step": 1, "loss": 1.0}, max_len=1000)
                accepted = [r for r in opened if r.status_code == 200]
                events = []
                await asyncio.wait_for(_read_events(accepted[0], 1, events), 10)
                assert json.loads(events[0]["data"])["step"] == 1
                await accepted[0].aclose()
                deadline = time.monotonic() + 10
                while True:
                    again = await http.send(http.build_request("GET", url, headers=account.headers), stream=True)
                    if again.status_code == 200 or time.monotonic() > deadline:
                        break
                    await again.aclose()
                    await asyncio.sleep(0.2)
                assert again.status_code == 200
                await again.aclose()
            finally:
                for response in opened:
                    await response.aclose()

    run_in_own_loop(scenario)


@SQLITE_ONLY
def test_a_job_with_many_viewers_uses_one_redis_reader(live_server, account, make_user, tuneboard_env):
    job_id = _job(account)
    viewers = [account] + [make_user(f"viewer{i}@example.com", "Alpha") for i in range(7)]
    publisher = redis_client.get_redis()

    async def scenario():
        async with httpx.AsyncClient(base_url=live_server.url, timeout=httpx.Timeout(30, read=60)) as http:
            url = f"/v1/fine_tuning/jobs/{job_id}/stream"
            opened = []
            for viewer in viewers:  # 8 users x 2 tabs = 16 viewers
                for _ in range(2):
                    opened.append(await http.send(http.build_request("GET", url, headers=viewer.headers),
                                                  stream=True))
            try:
                assert all(r.status_code == 200 for r in opened)
                assert await _readers_waiting(tuneboard_env.redis_url, live_server) == 1
                for step in range(1, 4):
                    streams.publish(publisher, job_id, "metric", {"step": step, "loss": 1.0}, max_len=1000)
                received = [[] for _ in opened]
                await asyncio.wait_for(asyncio.gather(*(_read_events(r, 3, got)
                                                        for r, got in zip(opened, received, strict=True))), 15)
                assert all([json.loads(e["data"])["step"] for e in got] == [1, 2, 3] for got in received)
                # Every viewer was served, and still one reader waits for the next point.
                assert await _readers_waiting(tuneboard_env.redis_url, live_server) == 1
            finally:
                for response in opened:
                    await response.aclose()
            # The last viewer out stops the job's reader.
            deadline = time.monotonic() + 10
            while _blocked_xreads(tuneboard_env.redis_url, live_server) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert _blocked_xreads(tuneboard_env.redis_url, live_server) == 0

    run_in_own_loop(scenario)


@SQLITE_ONLY
def test_an_idle_stream_logs_no_error_and_still_delivers_the_next_point(live_server, account):
    job_id = _job(account)
    publisher = redis_client.get_redis()

    async def scenario():
        async with httpx.AsyncClient(base_url=live_server.url, timeout=httpx.Timeout(30, read=60)) as http:
            async with http.stream("GET", f"/v1/fine_tuning/jobs/{job_id}/stream",
                                   headers=account.headers) as response:
                assert response.status_code == 200
                # The scenario: quiet longer than the blocking read (15 s) and redis-py's default timeout (5 s).
                await asyncio.sleep(21)
                streams.publish(publisher, job_id, "metric", {"step": 7, "loss": 0.5}, max_len=1000)
                events: list[dict] = []
                await asyncio.wait_for(_read_events(response, 1, events), 10)
                assert json.loads(events[0]["data"]) == {"step": 7, "loss": 0.5}

    run_in_own_loop(scenario)
    log = live_server.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "Error" not in log, log[-3000:]


@pytest.fixture
def one_stream_per_user(tuneboard_env, monkeypatch):
    """A cap of one live stream per user for the server this test starts."""
    from app.settings import get_settings

    monkeypatch.setenv("TUNEBOARD_MAX_STREAMS_PER_USER", "1")
    tuneboard_env.env["TUNEBOARD_MAX_STREAMS_PER_USER"] = "1"
    get_settings.cache_clear()


@pytest.mark.browser
@SQLITE_ONLY
def test_a_job_page_over_the_stream_cap_says_why_it_is_not_live(one_stream_per_user, browser, live_server,
                                                                 account):
    from tests.service_fixtures import signed_in_context

    job_id = _job(account)
    context = signed_in_context(browser, live_server.url, account, viewport={"width": 1400, "height": 1000})
    first, second = context.new_page(), context.new_page()
    problems: list[str] = []
    for page in (first, second):
        page.on("pageerror", lambda error: problems.append(str(error)))
    first.goto(f"/jobs/{job_id}")
    streams.publish(redis_client.get_redis(), job_id, "metric", {"step": 1, "loss": 1.0}, max_len=1000)
    first.wait_for_function("() => window.tuneboardJob && window.tuneboardJob.steps().length === 1")
    second.goto(f"/jobs/{job_id}")
    second.wait_for_selector("#stream-note")
    note = second.text_content("#stream-note")
    assert note.startswith("Live updates are off:") and "the limit is 1 per user" in note
    assert first.query_selector("#stream-note") is None  # the first page stays live
    streams.publish(redis_client.get_redis(), job_id, "metric", {"step": 2, "loss": 0.5}, max_len=1000)
    first.wait_for_function("() => window.tuneboardJob.steps().length === 2")
    assert not problems, problems
    context.close()
