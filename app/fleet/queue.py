"""The Celery app as both sides see it: broker settings, and sending a job's task by name.

The web app sends `tuneboard.train_job` with the job id only, after the job row is committed; it never
imports the task code. Workers build their app from `make_celery` too, so both agree on every
setting. Must not import torch or `workers`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

import redis
from celery import Celery
from kombu.transport.redis import Channel

from app.estimator.job_config import MAX_GPUS
from app.settings import DEFAULT_REDIS_KEY_PREFIX, Settings, get_settings

TRAIN_TASK = "tuneboard.train_job"
GENERATE_TASK = "tuneboard.generate_reply"
EXPORT_TASK = "tuneboard.export_merged"
BROKER_SOCKET_TIMEOUT_SECONDS = 30.0
BROKER_CONNECT_TIMEOUT_SECONDS = 5.0
BROKER_HEALTH_CHECK_SECONDS = 25
# A job on N GPUs goes to "<queue>@<N>gpus", consumed by the queue's workers with N GPUs or more, so it is never
# delivered to a worker that must hand it back (and would, with Celery's prefetch, keep receiving it while an idle
# worker with the GPUs waits). Workers announce no name that ends so: users never pick these queues.
SIZED_QUEUE_SEPARATOR = "@"
_SIZED_QUEUE = re.compile(r"@[0-9]+gpus$")


def broker_key_prefix(settings: Settings) -> str:
    """What Kombu puts before each of its keys (queue lists, `unacked`, bindings): the install's redis_key_prefix,
    or nothing with the default one, so an install that predates the setting keeps its queued messages."""
    return "" if settings.redis_key_prefix == DEFAULT_REDIS_KEY_PREFIX else settings.redis_key_prefix


def make_celery(settings: Settings) -> Celery:
    """A Celery app on the configured Redis, set up for long, one-at-a-time GPU tasks."""
    url = settings.effective_redis_url
    celery = Celery("tuneboard", broker=url)
    key_prefix = broker_key_prefix(settings)
    celery.conf.update(
        task_default_queue=settings.default_queue,
        task_ignore_result=True,
        # Ack only after the task returns, so a worker that dies mid-job does not lose the message...
        task_acks_late=True,
        task_reject_on_worker_lost=False,
        # ...and take one message at a time: a job occupies its GPU until it ends.
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_seconds,
            # Pinned (Kombu passes None, so a command on a connection that died silently would wait forever):
            # longer than Kombu's 1 s BRPOP, short to connect; its health checks find a half-open connection.
            "socket_timeout": BROKER_SOCKET_TIMEOUT_SECONDS,
            "socket_connect_timeout": BROKER_CONNECT_TIMEOUT_SECONDS,
            "socket_keepalive": True,
            "health_check_interval": BROKER_HEALTH_CHECK_SECONDS,
            # Another install on this Redis has its own queues, even of the same name.
            **({"global_keyprefix": key_prefix} if key_prefix else {}),
        },
        # Task events on by default so Flower and `celery events` work as they are.
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
    )
    return celery


@cache
def _celery_for(url: str, key_prefix: str) -> Celery:
    return make_celery(get_settings())


def get_celery() -> Celery:
    """The process-wide Celery client for the configured broker."""
    settings = get_settings()
    return _celery_for(settings.effective_redis_url, settings.redis_key_prefix)


def training_queue(queue: str, gpus: int) -> str:
    """The broker queue a job of `queue` on `gpus` GPUs is sent to: the queue itself for one GPU, else its per-size
    queue (`gpu@2gpus`), which only the queue's workers with at least that many GPUs consume."""
    return queue if gpus <= 1 else f"{queue}{SIZED_QUEUE_SEPARATOR}{gpus}gpus"


def sized_queues(queue: str, gpu_count: int) -> list[str]:
    """The per-size queues a worker of `queue` with `gpu_count` GPUs consumes besides `queue` itself."""
    return [training_queue(queue, gpus) for gpus in range(2, gpu_count + 1)]


def is_sized_queue(name: str) -> bool:
    """Whether a broker queue is one of the per-size queues (never a queue users name or workers announce)."""
    return _SIZED_QUEUE.search(name) is not None


def job_gpus(config: dict) -> int:
    """How many GPUs a stored job config asks for (one when it predates multi-GPU jobs)."""
    return int(((config or {}).get("training") or {}).get("gpus") or 1)


def enqueue_training(job_id: str, queue: str, gpus: int, *, countdown: float | None = None) -> None:
    """Send the training task for a committed job to its queue, or to the queue's per-size queue for a job on
    several GPUs (to be run `countdown` seconds from now)."""
    get_celery().send_task(TRAIN_TASK, args=[job_id], queue=training_queue(queue, gpus), countdown=countdown)


def enqueue_export(export_id: str, queue: str) -> None:
    """Send the task that builds a committed export (a merged model) to the job's queue, where its base fits."""
    get_celery().send_task(EXPORT_TASK, args=[export_id], queue=queue)


def enqueue_generation(request: dict, queue: str, expires_seconds: float) -> None:
    """Send a chat completion request to the inference queue; a worker that receives it after `expires_seconds`
    drops it (its client stopped waiting)."""
    get_celery().send_task(GENERATE_TASK, args=[request], queue=queue, expires=expires_seconds)


def training_queue_keys(queue: str) -> list[str]:
    """The Redis lists of a queue and of every per-size queue of it: all the training messages waiting for it."""
    return [key for gpus in range(1, MAX_GPUS + 1) for key in queue_keys(training_queue(queue, gpus))]


def queue_keys(queue: str) -> list[str]:
    """The Redis lists Kombu keeps a queue's waiting messages in: one per priority step, the first the queue's own."""
    # Named as Kombu's Channel._q_for_pri names them, behind the prefix its transport puts before every key.
    prefix = broker_key_prefix(get_settings())
    return [prefix + (queue if step == 0 else f"{queue}{Channel.sep}{step}") for step in Channel.priority_steps]


def unacked_key() -> str:
    """The Redis hash of messages delivered to a worker and not acked yet."""
    return broker_key_prefix(get_settings()) + Channel.unacked_key


def _job_of_message(message: object) -> str | None:
    """The job id a training task message carries, or None for any other message."""
    try:
        if message.get("headers", {}).get("task") != TRAIN_TASK:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return args[0] if args and isinstance(args[0], str) else None
    except (AttributeError, ValueError, KeyError, IndexError, TypeError, binascii.Error):
        return None


def _loads(raw: str) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _task_of_message(message: object) -> str | None:
    try:
        return message["headers"]["id"]
    except (KeyError, TypeError):
        return None


@dataclass(frozen=True, slots=True)
class BrokerHoldings:
    """The training tasks the broker holds: jobs with a message waiting in a queue's list, and the task ids
    delivered to a worker and not acked yet, by job."""

    waiting: frozenset[str]
    delivered: dict[str, frozenset[str]]

    def will_run(self, job_id: str, claimed_task_id: str | None) -> bool:
        """Whether a held message can still claim the queued job: one waiting, or one delivered that is not the
        delivery a lost attempt already claimed (its worker may be gone for good, the message unacked for days)."""
        return job_id in self.waiting or bool(self.delivered.get(job_id, frozenset()) - {claimed_task_id})


def broker_holdings(client: redis.Redis, queues: Iterable[str]) -> BrokerHoldings:
    """What the broker holds of these queues' training tasks: their lists, and Kombu's `unacked` hash."""
    pipe = client.pipeline(transaction=False)
    for queue in sorted(set(queues)):
        for key in queue_keys(queue):
            pipe.lrange(key, 0, -1)
    pipe.hvals(unacked_key())
    *lists, unacked = pipe.execute()
    waiting = frozenset(job_id for raw in (raw for held in lists for raw in held)
                        if (job_id := _job_of_message(_loads(raw))) is not None)
    delivered: dict[str, set[str]] = {}
    # An unacked entry is [message, exchange, routing_key].
    for entry in map(_loads, unacked):
        message = entry[0] if isinstance(entry, list) and entry else None
        job_id, task_id = _job_of_message(message), _task_of_message(message)
        if job_id is not None and task_id is not None:
            delivered.setdefault(job_id, set()).add(task_id)
    return BrokerHoldings(waiting, {job_id: frozenset(tasks) for job_id, tasks in delivered.items()})
