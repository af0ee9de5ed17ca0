"""The worker-side Celery app: the shared settings from `app.queue`, the tasks, the reaper thread, and logging."""

from __future__ import annotations

from celery.signals import setup_logging, worker_ready, worker_shutting_down

from app.logging_setup import configure_logging
from app.queue import make_celery
from app.settings import get_settings
from workers import reaper

app = make_celery(get_settings())
app.conf.include = ["workers.tasks"]


@setup_logging.connect
def _setup_logging(loglevel=None, **_kwargs) -> None:
    # Connected, this signal makes Celery leave logging to us: the same text or JSON lines as the web app,
    # at the level given by --loglevel.
    configure_logging(get_settings().log_format, loglevel or "INFO")


@worker_ready.connect
def _start_reaper(sender=None, **_kwargs) -> None:
    # The reaper runs in the worker's main process, which stays alive while a child trains.
    queues = sorted(q.name for q in sender.app.amqp.queues.consume_from.values()) if sender else []
    reaper.start(hostname=getattr(sender, "hostname", "worker"), queues=queues)


@worker_shutting_down.connect
def _stop_reaper(**_kwargs) -> None:
    reaper.stop()
