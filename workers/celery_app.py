"""The worker-side Celery app: the shared settings from `app.queue`, the tasks, and the reaper thread."""

from __future__ import annotations

from celery.signals import worker_ready, worker_shutting_down

from app.queue import make_celery
from app.settings import get_settings
from workers import reaper

app = make_celery(get_settings())
app.conf.include = ["workers.tasks"]


@worker_ready.connect
def _start_reaper(sender=None, **_kwargs) -> None:
    # The reaper runs in the worker's main process, which stays alive while a child trains.
    queues = sorted(q.name for q in sender.app.amqp.queues.consume_from.values()) if sender else []
    reaper.start(hostname=getattr(sender, "hostname", "worker"), queues=queues)


@worker_shutting_down.connect
def _stop_reaper(**_kwargs) -> None:
    reaper.stop()
