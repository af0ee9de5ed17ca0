"""The worker-side Celery app: the shared settings from `app.fleet.queue`, the tasks, the per-size queues a worker
with several GPUs consumes, the reaper thread, logging, and the warm start of the process that runs tasks
(`workers.warm_start`)."""

from __future__ import annotations

from celery.signals import (
    celeryd_after_setup,
    setup_logging,
    worker_init,
    worker_process_init,
    worker_ready,
    worker_shutting_down,
)

from app.fleet.queue import is_sized_queue, make_celery, sized_queues
from app.ops.logging_setup import configure_logging
from app.settings import get_settings
from workers import reaper, warm_start

app = make_celery(get_settings())
app.conf.include = ["workers.tasks"]
# A pool child reports for work once its init (the ML stack's import, seconds) is done; Celery's default
# 4 s would kill it as hung and fork another, for ever.
app.conf.worker_proc_alive_timeout = 300


@setup_logging.connect
def _setup_logging(loglevel=None, **_kwargs) -> None:
    # Connected, this signal makes Celery leave logging to us: the same text or JSON lines as the web app,
    # at the level given by --loglevel.
    configure_logging(get_settings().log_format, loglevel or "INFO")


@celeryd_after_setup.connect
def _consume_sized_queues(sender=None, instance=None, **_kwargs) -> None:
    # A worker with G GPUs also takes the jobs on 2..G GPUs of its queues, which wait in per-size queues
    # (app.fleet.queue.training_queue) that no worker with fewer GPUs consumes. The inference queue too: a training
    # job may be sent to any queue a live worker serves.
    selected = instance.app.amqp.queues
    for name in sorted(selected.consume_from):
        if not is_sized_queue(name):
            for sized in sized_queues(name, reaper.gpu_count()):
                selected.select_add(sized)


@worker_ready.connect
def _start_reaper(sender=None, **_kwargs) -> None:
    # The reaper runs in the worker's main process, which stays alive while a child trains. It announces the
    # queues users name, not their per-size queues.
    consumed = sender.app.amqp.queues.consume_from.values() if sender else []
    queues = sorted(q.name for q in consumed if not is_sized_queue(q.name))
    reaper.start(hostname=getattr(sender, "hostname", "worker"), queues=queues)


@worker_shutting_down.connect
def _stop_reaper(**_kwargs) -> None:
    reaper.stop()


@worker_init.connect
def _warm_start_single_process_pools(sender=None, **_kwargs) -> None:
    # The solo and thread pools run tasks in this very process; the prefork pool's children warm up
    # themselves (below), so that this parent, which forks them, never touches CUDA.
    if sender is None or not get_settings().worker_preload:
        return
    from celery.concurrency import get_implementation
    from celery.concurrency.prefork import TaskPool as PreforkPool

    pool = get_implementation(sender.pool_cls)
    if not (isinstance(pool, type) and issubclass(pool, PreforkPool)):
        warm_start.preload()


@worker_process_init.connect
def _warm_start_pool_child(**_kwargs) -> None:
    if get_settings().worker_preload:
        warm_start.preload()
