"""Streaming latency: a metric published to a job's Redis stream, until an SSE client has read it.

The real web app runs under uvicorn in a subprocess (`uvicorn app.main:app`, log level warning, as
`tuneboard up` serves it) on a migrated SQLite database in a temp data dir and a real Redis. For each
configuration a fresh job row (status running) is created and N clients open
`GET /v1/fine_tuning/jobs/{id}/stream` with httpx.AsyncClient (one asyncio loop, uvloop when
installed, one HTTP connection per client) and parse the SSE lines. Once every client has received a
warm-up entry, a publisher *process* (standing in for the worker) calls `app.jobs.streams.publish(...)`
for a metric point at a fixed rate (20 points/s for 10 s by default), each payload carrying the send
time (`time.time()` just before the XADD). A client timestamps an event when its blank line ends it
(when EventSource would dispatch it); latency = arrival - send time, one sample per point per client.

Configurations: 1, 100 and 1,000 clients (viewers of one job; the per-user stream cap is lifted for the
run). The server reads each job's stream once (app.jobs.stream_hub) and fans it out; the baseline rows, in
the same run, are the old approach's reading side: one `XREAD BLOCK` loop per viewer straight against
Redis (redis.asyncio, a connection each, no HTTP), 1 and the largest count. Beside p50 / p99 / max it
reports the CPU seconds the server, Redis and the client process spent during the window, and the
server's and Redis's CPU per published point.
Target: p99 < 50 ms on this machine, where the clients, the server, the publisher and Redis share
2 CPU cores (so the client process's own work is in the figure, and so is any other load).

Run from the repository root (needs a Redis server):

    .venv/bin/python -m bench.streaming                  # 1, 100 and 1,000 clients, 20 points/s for 10 s
    .venv/bin/python -m bench.streaming --quick          # 1 and 20 clients for 4 s, a smoke test
    .venv/bin/python -m bench.streaming --json out.json  # also write every figure as JSON
    .venv/bin/python -m bench.streaming --clients 1 --clients 10 --clients 100 --rate 50
    .venv/bin/python -m bench.streaming --profile        # also cProfile the server in the largest configuration

Results are recorded in docs/benchmarks.md, "Streaming latency (bench/streaming.py)".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import _harness as h

TARGET_P99_MS = 50.0
CREATED_JOBS: list[str] = []  # their Redis keys are deleted when the benchmark ends, however it ends


@dataclass
class Result:
    label: str
    clients: int
    points: int
    latencies_ms: list[float] = field(default_factory=list)
    missing: int = 0  # points some client never received
    server_cpu_s: float | None = None
    redis_cpu_s: float | None = None
    client_cpu_s: float | None = None
    window_s: float = 0.0

    def pct(self, p: float) -> float:
        return h.percentile(self.latencies_ms, p)

    @property
    def max_ms(self) -> float:
        return max(self.latencies_ms) if self.latencies_ms else float("nan")


# --------------------------------------------------------------------------------------------- the publisher
def publish_points(job_id: str, rate: float, count: int, redis_url: str) -> None:
    """The worker's side: `count` metric points at `rate` per second, each stamped with its send time."""
    import redis

    from app.jobs import streams

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.ping()
    start = time.monotonic() + 0.2
    for i in range(count):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        point = {"step": i + 1, "epoch": i / count, "loss": 2.0 / (i + 1) ** 0.5, "learning_rate": 2e-4,
                 "grad_norm": 0.5, "tokens_per_second": 1234.5, "trained_tokens": 1024.0 * (i + 1),
                 "sent": time.time()}
        streams.publish(client, job_id, "metric", point, max_len=200_000)


def start_publisher(job_id: str, rate: float, count: int, redis_url: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench.streaming", "--publish", job_id, "--rate", str(rate),
                             "--count", str(count), "--redis-url", redis_url], cwd=h.REPO_ROOT, env=env)


# ------------------------------------------------------------------------------------------------ the server
class Server:
    """The web app under uvicorn in its own process group (as tests.services.ServerProcess), optionally profiled."""

    def __init__(self, env: dict[str, str], log_path: Path, profile_path: Path | None = None):
        from tests.services import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log_path.open("wb")
        self.log_path = log_path
        self.profiled = profile_path is not None
        prefix = [sys.executable] + (["-m", "cProfile", "-o", str(profile_path)] if profile_path else [])
        self.process = subprocess.Popen(
            prefix + ["-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(self.port),
                      "--log-level", "warning"],
            cwd=h.REPO_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited at start:\n{self.log_path.read_text(errors='replace')}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout} s")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            # uvicorn re-raises the signal it shut down on; SIGINT becomes KeyboardInterrupt, which still
            # lets cProfile write its file (SIGTERM would end the process before that).
            os.killpg(self.process.pid, signal.SIGINT if self.profiled else signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


def redis_cpu_seconds(client) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def new_job(account: h.Account) -> str:
    from app.db import new_session
    from app.tables import DataFile, Job

    with new_session() as session:
        data_file = DataFile(filename="bench.jsonl", bytes=1, format="chat", examples=1, storage_key="datasets/bench",
                             **account.owner)
        session.add(data_file)
        session.flush()
        job = Job(model="bench", queue="bench-streaming", config={}, training_file_id=data_file.id, status="running",
                  **account.owner)
        session.add(job)
        session.commit()
        CREATED_JOBS.append(job.id)
        return job.id


# ----------------------------------------------------------------------------------------------- the clients
class SseClient:
    """One browser tab: reads the job's SSE stream and timestamps every metric event as it completes."""

    def __init__(self, index: int):
        self.index = index
        self.connected = asyncio.Event()
        self.warm = asyncio.Event()
        self.done = asyncio.Event()
        self.latencies_ms: dict[int, float] = {}
        self.expected = 0
        self.error: BaseException | None = None

    async def run(self, http, url: str, headers: dict[str, str]) -> None:
        try:
            async with http.stream("GET", url, headers={"Accept": "text/event-stream", **headers}) as response:
                if response.status_code != 200:
                    raise RuntimeError(f"client {self.index}: HTTP {response.status_code}")
                self.connected.set()
                event, data = None, None
                async for line in response.aiter_lines():
                    if line:
                        if line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:"):
                            data = line[5:].strip()
                        continue
                    arrived = time.time()
                    if event == "metric" and data:
                        self._record(json.loads(data), arrived)
                    event, data = None, None
                    if self.expected and len(self.latencies_ms) >= self.expected:
                        break
        except BaseException as exc:  # reported by the caller
            self.error = exc
            self.connected.set()
            self.warm.set()
        finally:
            self.done.set()

    def _record(self, point: dict[str, Any], arrived: float) -> None:
        if point.get("warmup"):
            self.warm.set()
            return
        self.latencies_ms[point["step"]] = 1000 * (arrived - point["sent"])


async def measure_sse(server_url: str, clients: int, rate: float, count: int, redis_url: str,
                      env: dict[str, str], server: Server, account: h.Account) -> Result:
    import httpx
    import redis

    from app.jobs import streams

    job_id = new_job(account)
    sync = redis.Redis.from_url(redis_url, decode_responses=True)
    url = f"{server_url}/v1/fine_tuning/jobs/{job_id}/stream"
    readers = [SseClient(i) for i in range(clients)]
    limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0, read=None), limits=limits) as http:
        tasks = [asyncio.create_task(r.run(http, url, account.headers)) for r in readers]
        await asyncio.wait_for(asyncio.gather(*(r.connected.wait() for r in readers)), 60)
        streams.publish(sync, job_id, "metric", {"step": 0, "warmup": True, "sent": time.time()}, max_len=200_000)
        await asyncio.wait_for(asyncio.gather(*(r.warm.wait() for r in readers)), 60)
        errors = [r.error for r in readers if r.error]
        if errors:
            raise RuntimeError(f"{len(errors)} clients failed: {errors[0]!r}")
        for r in readers:
            r.expected = count
        h.progress(f"  {clients} clients connected and warm; publishing {count} points at {rate:g}/s")
        cpu0 = (server.cpu_seconds(), redis_cpu_seconds(sync), time.process_time(), time.monotonic())
        publisher = start_publisher(job_id, rate, count, redis_url, env)
        try:
            await asyncio.wait_for(asyncio.gather(*(r.done.wait() for r in readers)), count / rate + 60)
        except TimeoutError:
            h.progress("  timed out waiting for every point; counting what arrived")
        cpu1 = (server.cpu_seconds(), redis_cpu_seconds(sync), time.process_time(), time.monotonic())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        publisher.wait(timeout=60)
    result = Result(f"SSE, {clients} client{'s' if clients > 1 else ''}", clients, count)
    for r in readers:
        result.latencies_ms += list(r.latencies_ms.values())
        result.missing += count - len(r.latencies_ms)
    spent = [b - a for a, b in zip(cpu0[:3], cpu1[:3], strict=True)]
    result.server_cpu_s, result.redis_cpu_s, result.client_cpu_s = spent
    result.window_s = cpu1[3] - cpu0[3]
    return result


async def measure_redis_direct(rate: float, count: int, redis_url: str, env: dict[str, str],
                               account: h.Account, readers: int = 1) -> Result:
    """The old approach's reading side: one XREAD BLOCK loop per viewer on the stream itself, without HTTP."""
    import redis
    import redis.asyncio as aioredis

    from app.jobs import streams

    job_id = new_job(account)
    sync = redis.Redis.from_url(redis_url, decode_responses=True)
    client = aioredis.Redis.from_url(redis_url, decode_responses=True, max_connections=readers + 10,
                                     socket_timeout=30)
    key = streams.stream_key(job_id)
    latencies: list[float] = []
    received = [0] * readers

    async def reader(index: int) -> None:
        last_id = streams.START
        deadline = time.monotonic() + count / rate + 60
        while received[index] < count and time.monotonic() < deadline:
            batch = await client.xread({key: last_id}, block=1000, count=1000)
            arrived = time.time()
            for entry in streams.decode(batch[0][1]) if batch else []:
                last_id = entry.id
                received[index] += 1
                latencies.append(1000 * (arrived - entry.data["sent"]))

    cpu0 = (redis_cpu_seconds(sync), time.process_time(), time.monotonic())
    publisher = start_publisher(job_id, rate, count, redis_url, env)
    await asyncio.gather(*(reader(i) for i in range(readers)))
    cpu1 = (redis_cpu_seconds(sync), time.process_time(), time.monotonic())
    publisher.wait(timeout=60)
    await client.aclose()
    label = f"baseline: Redis XREAD per viewer (old approach, no HTTP), {readers:,} reader{'s' if readers > 1 else ''}"
    result = Result(label, readers, count, latencies, readers * count - len(latencies))
    result.redis_cpu_s, result.client_cpu_s = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    result.window_s = cpu1[2] - cpu0[2]
    return result


# ----------------------------------------------------------------------------------------------------- report
def table(results: list[Result]) -> str:
    def per_point(seconds: float | None, points: int) -> float | None:
        return None if seconds is None else 1000 * seconds / points

    rows = [[r.label, f"{len(r.latencies_ms):,}", r.missing, h.fmt(r.pct(50), 1), h.fmt(r.pct(99), 1),
             h.fmt(r.max_ms, 1), h.fmt(r.server_cpu_s, 2), h.fmt(per_point(r.server_cpu_s, r.points), 2),
             h.fmt(r.redis_cpu_s, 2), h.fmt(per_point(r.redis_cpu_s, r.points), 3), h.fmt(r.client_cpu_s, 2),
             h.fmt(r.window_s, 1)] for r in results]
    return h.markdown_table(["configuration", "samples", "missing", "p50 ms", "p99 ms", "max ms", "server CPU s",
                             "server CPU ms/point", "Redis CPU s", "Redis CPU ms/point", "client CPU s",
                             "window s"], rows)


def profile_report(path: Path) -> str:
    import io
    import pstats

    buffer = io.StringIO()
    stats = pstats.Stats(str(path), stream=buffer)
    stats.sort_stats("tottime").print_stats(20)
    buffer.write("\n--- app/ and the SSE / Redis stack by cumulative time ---\n")
    stats.sort_stats("cumulative").print_stats(r"(/app/|sse_starlette|redis/asyncio|redis/_parsers)", 20)
    return buffer.getvalue()


async def run_all(args: argparse.Namespace, env: dict[str, str], work: Path) -> tuple[list[Result], str | None]:
    results: list[Result] = []
    account = h.bench_account()
    for readers in sorted({1, max(args.clients)}):
        h.progress(f"baseline: Redis XREAD per viewer without HTTP, {readers} readers")
        results.append(await measure_redis_direct(args.rate, args.count, args.redis_url, env, account, readers))
    profile_text = None
    runs = [(clients, False) for clients in args.clients]
    if args.profile:
        runs.append((max(args.clients), True))  # an extra run: the measured figures stay unprofiled
    for clients, profiled in runs:
        profile_path = work / "server.prof" if profiled else None
        server = Server(env, work / f"server-{clients}-{int(profiled)}.log", profile_path)
        try:
            server.wait_ready()
            h.progress(f"SSE, {clients} clients{' (server under cProfile)' if profiled else ''}")
            result = await measure_sse(server.url, clients, args.rate, args.count, args.redis_url, env, server,
                                       account)
            if profiled:
                result.label += " [server under cProfile]"
            results.append(result)
            h.progress(f"  p50 {result.pct(50):.1f} ms, p99 {result.pct(99):.1f} ms, max {result.max_ms:.1f} ms, "
                       f"missing {result.missing}")
        finally:
            server.stop()
        if profile_path and profile_path.is_file():
            profile_text = profile_report(profile_path)
    return results, profile_text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.streaming", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 and 20 clients for 4 s (a smoke test)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every figure to this file")
    parser.add_argument("--clients", type=int, action="append", help="concurrent SSE clients (repeatable)")
    parser.add_argument("--rate", type=float, default=20.0, help="points published per second")
    parser.add_argument("--duration", type=float, help="seconds of publishing (default 10, quick 4)")
    parser.add_argument("--profile", action="store_true", help="one more run of the largest configuration with "
                                                                "the server under cProfile")
    parser.add_argument("--redis-url", default=h.DEFAULT_REDIS_URL)
    parser.add_argument("--publish", metavar="JOB_ID", help=argparse.SUPPRESS)  # internal: the publisher process
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    h.exit_cleanly_on_sigterm()
    if args.publish:
        publish_points(args.publish, args.rate, args.count, args.redis_url)
        return 0
    args.clients = args.clients or ([1, 20] if args.quick else [1, 100, 1000])
    args.duration = args.duration or (4.0 if args.quick else 10.0)
    args.count = int(args.rate * args.duration)
    h.check_redis(args.redis_url)

    with tempfile.TemporaryDirectory(prefix="tuneboard-bench-streaming-") as tmp:
        work = Path(tmp)
        # Every client is the benchmark's one user: lift the per-user stream cap for this server.
        env = h.configure(work / "data", args.redis_url, TUNEBOARD_MAX_STREAMS_PER_USER=str(max(args.clients) + 10))
        try:
            import uvloop

            runner = uvloop.run
            loop_name = "uvloop"
        except ImportError:
            runner = asyncio.run
            loop_name = "asyncio"
        h.progress(f"client loop: {loop_name}; {args.count} points at {args.rate:g}/s per configuration")
        try:
            results, profile_text = runner(run_all(args, env, work))
        finally:
            h.delete_job_keys(args.redis_url, CREATED_JOBS)

    print()
    print(f"{args.count} metric points at {args.rate:g}/s; latency = client arrival - publisher send time")
    print()
    print(table(results))
    sse = [r for r in results if r.label.startswith("SSE") and "cProfile" not in r.label]
    met = all(r.pct(99) < TARGET_P99_MS and r.missing == 0 for r in sse)
    print()
    for r in sse:
        verdict = "PASS" if r.pct(99) < TARGET_P99_MS and r.missing == 0 else "MISS"
        print(f"{r.label}: p99 {r.pct(99):.1f} ms, target < {TARGET_P99_MS:g} ms: {verdict}")
    if profile_text:
        print("\ncProfile of the server during the largest configuration:")
        print(profile_text)
    if args.json:
        h.write_json(args.json, {
            "benchmark": "streaming", "machine": h.machine(), "versions": h.versions(), "client_loop": loop_name,
            "settings": {k: v for k, v in vars(args).items() if k not in ("json", "publish")},
            "results": [{"label": r.label, "clients": r.clients, "points": r.points, "samples": len(r.latencies_ms),
                         "missing": r.missing, "p50_ms": r.pct(50), "p90_ms": r.pct(90), "p99_ms": r.pct(99),
                         "max_ms": r.max_ms, "server_cpu_s": r.server_cpu_s, "redis_cpu_s": r.redis_cpu_s,
                         "client_cpu_s": r.client_cpu_s, "window_s": r.window_s} for r in results],
            "target_p99_ms": TARGET_P99_MS, "target_met": met, "profile": profile_text,
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
