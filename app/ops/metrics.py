"""Prometheus metrics for /metrics: request latency observed by a middleware, the rest read at scrape time.

Queue depth, queued and running jobs, live workers and finished jobs' run times come from Redis and the
database when Prometheus scrapes, so every web replica reports the same truth, nothing is lost when a
process restarts, and the workers (which finish the jobs) need no metrics endpoint of their own.
Must not import torch or `workers`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import redis
from prometheus_client import CollectorRegistry, GCCollector, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, choose_encoder
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select
from starlette.routing import Match, Mount

from app import redis_client
from app.db import new_session
from app.fleet import queue as broker_queue
from app.fleet import worker_registry
from app.job_status import TERMINAL_STATUSES, JobStatus
from app.ops.logging_setup import ACCESS_LOGGER
from app.settings import Settings
from app.tables import Job

__all__ = ["CONTENT_TYPE_LATEST", "RequestMetricsMiddleware", "make_registry", "render"]

# Fine-tunes run from seconds (a smoke test) to a day; the buckets are in seconds.
JOB_DURATION_BUCKETS = (10, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400)
UNMATCHED_ROUTE = "<unmatched>"
access_log = logging.getLogger(ACCESS_LOGGER)


class JobsCollector(Collector):
    """Reads queue, job and worker figures from Redis and the database on every scrape."""

    def __init__(self, settings: Callable[[], Settings]):
        self._settings = settings

    def collect(self) -> Iterator[Metric]:
        settings = self._settings()
        up = GaugeMetricFamily("tuneboard_metrics_source_up",
                               "1 when this scrape could read the source (database, redis), else 0.",
                               labels=["source"])
        queues = {settings.default_queue}
        families: list[Metric] = []
        try:
            by_queue, durations = _database_figures()
            queues.update(queue for queue, _ in by_queue)
            families += _job_gauges(by_queue, queues) + [durations]
            up.add_metric(["database"], 1)
        except Exception:  # a dead database must not cost the scrape its other metrics
            logging.getLogger(__name__).warning("metrics: database unreadable", exc_info=True)
            up.add_metric(["database"], 0)
        try:
            families += _redis_figures(redis_client.get_redis(), queues)
            up.add_metric(["redis"], 1)
        except redis.RedisError:
            logging.getLogger(__name__).warning("metrics: Redis unreadable", exc_info=True)
            up.add_metric(["redis"], 0)
        yield from families
        yield up


def _database_figures() -> tuple[dict[tuple[str, str], int], HistogramMetricFamily]:
    """Jobs queued / running per queue, and the run-time histogram of every finished job, in two queries."""
    run_time = Job.finished_at - Job.started_at
    with new_session() as session:
        counts = session.execute(
            select(Job.queue, Job.status, func.count()).where(Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))
            .group_by(Job.queue, Job.status)
        ).all()
        # Aggregated in SQL, so the answer is a few rows whatever the history's size. Over all finished jobs
        # (not a window) so every bucket only ever grows, as Prometheus expects of a histogram.
        rows = session.execute(
            select(Job.status, func.count(), func.coalesce(func.sum(run_time), 0.0),
                   *[func.sum(case((run_time <= bound, 1), else_=0)) for bound in JOB_DURATION_BUCKETS])
            .where(Job.status.in_(sorted(TERMINAL_STATUSES)), Job.started_at.is_not(None),
                   Job.finished_at.is_not(None))
            .group_by(Job.status)
        ).all()
    histogram = HistogramMetricFamily(
        "tuneboard_job_duration_seconds",
        "Run time (finished minus first started) of finished jobs, by final status; jobs that never started "
        "are not counted.", labels=["status"])
    for status, count, total, *cumulative in rows:
        buckets = [(str(float(bound)), int(n or 0)) for bound, n in zip(JOB_DURATION_BUCKETS, cumulative, strict=True)]
        histogram.add_metric([status], buckets + [("+Inf", int(count))], sum_value=float(total))
    return {(queue, status): n for queue, status, n in counts}, histogram


def _job_gauges(by_queue: dict[tuple[str, str], int], queues: set[str]) -> list[Metric]:
    queued = GaugeMetricFamily("tuneboard_jobs_queued", "Jobs waiting in status queued, per queue (database).",
                               labels=["queue"])
    running = GaugeMetricFamily("tuneboard_jobs_running", "Jobs in status running, per queue (database).",
                                labels=["queue"])
    for queue in sorted(queues):
        queued.add_metric([queue], by_queue.get((queue, JobStatus.QUEUED), 0))
        running.add_metric([queue], by_queue.get((queue, JobStatus.RUNNING), 0))
    return [queued, running]


def _redis_figures(client: redis.Redis, queues: set[str]) -> list[Metric]:
    """Broker messages waiting per queue and live workers per queue."""
    served = worker_registry.queues_served(worker_registry.live_workers(client))
    queues = queues | set(served)
    # Kombu keeps a queue as a list named after it, plus one list per priority step for messages sent with a
    # priority; a queue's depth is their sum, with its per-size queues' (jobs on several GPUs) counted in.
    pipe = client.pipeline(transaction=False)
    keys = {queue: broker_queue.training_queue_keys(queue) for queue in sorted(queues)}
    for queue_lists in keys.values():
        for key in queue_lists:
            pipe.llen(key)
    lengths = iter(pipe.execute())
    depth = GaugeMetricFamily(
        "tuneboard_queue_messages",
        "Task messages waiting in the broker (Redis lists) per queue, not yet taken by a worker.", labels=["queue"])
    workers = GaugeMetricFamily("tuneboard_workers_online", "Live workers serving each queue (announced in Redis).",
                                labels=["queue"])
    for queue in sorted(queues):
        depth.add_metric([queue], sum(next(lengths) for _ in keys[queue]))
        workers.add_metric([queue], len(served.get(queue, [])))
    return [depth, workers]


def make_registry(settings: Callable[[], Settings]) -> tuple[CollectorRegistry, Histogram]:
    """A registry of this app's own (so building the app twice never registers a metric twice) and its
    request-latency histogram."""
    registry = CollectorRegistry()
    # The process and Python runtime figures the default registry would have shown.
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    latency = Histogram("tuneboard_http_request_duration_seconds",
                        "Time to answer an HTTP request (a stream: its whole life), by route template.",
                        ["method", "route", "status"], registry=registry)
    registry.register(JobsCollector(settings))
    return registry, latency


def render(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The registry in the format the scraper accepts (OpenMetrics when asked, else Prometheus text), and its
    content type."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def route_template(scope: dict, path: str, root_path: str) -> str:
    """The matched route's path template ("/v1/fine_tuning/jobs/{job_id}"), so labels stay few."""
    route = scope.get("route")
    if route is not None and getattr(route, "path", None):
        return route.path
    # Mounts (static files) and unmatched paths: match again on the path as it came in.
    probe = {"type": "http", "path": path, "root_path": root_path, "method": scope.get("method", "GET")}
    app = scope.get("app")
    for candidate in getattr(app, "routes", ()):
        match, _ = candidate.matches(probe)
        if match is Match.FULL:
            if isinstance(candidate, Mount):
                return candidate.path + "/{path}"
            # A request a middleware answered before routing (NUL guard, body limit) may match FastAPI's
            # included-router wrapper, which has no path of its own: reading one crashed after the response.
            return getattr(candidate, "path", None) or UNMATCHED_ROUTE
    return UNMATCHED_ROUTE


class RequestMetricsMiddleware:
    """Pure ASGI middleware: observes each HTTP request's latency and writes the access log line."""

    def __init__(self, app, histogram: Histogram):
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, root_path = scope["path"], scope.get("root_path", "")
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_and_note_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            seconds = time.perf_counter() - started
            route = route_template(scope, path, root_path)
            self.histogram.labels(scope["method"], route, str(status)).observe(seconds)
            if access_log.isEnabledFor(logging.INFO):
                _log_access(scope, path, route, status, seconds)


def _log_access(scope: dict, path: str, route: str, status: int, seconds: float) -> None:
    principal = (scope.get("state") or {}).get("principal")
    # A sign-in link's token is a secret: log such paths by their template.
    logged_path = route if "{token}" in route else path
    fields = {"method": scope["method"], "path": logged_path, "route": route, "status": status,
              "duration_ms": round(seconds * 1000, 3)}
    if principal is not None:
        fields.update(team_id=principal.team.id, user_id=principal.user.id)
    access_log.info("%s %s %s %.1f ms", scope["method"], logged_path, status, seconds * 1000, extra=fields)
