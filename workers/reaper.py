"""A background thread in each worker: requeue jobs whose worker died, and announce this worker.

Reaping is one conditional UPDATE per transition, so any number of workers may run it at once. The
announcement (a Redis key with a TTL) lets the web app list live workers and the queues they serve.
"""

from __future__ import annotations

import functools
import logging
import shutil
import socket
import subprocess
import threading

from app import jobs, streams, worker_registry
from app.db import new_session
from app.models import now
from app.settings import get_settings

log = logging.getLogger(__name__)
_stop = threading.Event()
_thread: threading.Thread | None = None


def reap_once() -> tuple[list[str], list[str]]:
    """One pass over expired leases."""
    settings = get_settings()
    with new_session() as session:
        return jobs.reap_expired(session, streams.get_redis(), settings)


def announce(hostname: str, queues: list[str], ttl: float) -> None:
    """Publish this worker's queues and device, valid for ttl seconds."""
    info = {"hostname": hostname, "host": socket.gethostname(), "queues": queues, "seen_at": now(),
            **_device_info()}
    worker_registry.announce(streams.get_redis(), info, ttl)


@functools.cache
def _device_info() -> dict:
    # nvidia-smi rather than torch.cuda: initialising CUDA in this parent process would break CUDA in
    # the forked child that trains.
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
            name, mib = out.splitlines()[0].rsplit(",", 1)
            return {"device": name.strip(), "gpu_memory_bytes": int(float(mib)) * 1024**2}
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            log.warning("nvidia-smi gave no GPU info", exc_info=True)
    return {"device": "cpu", "gpu_memory_bytes": None}


def _loop(hostname: str, queues: list[str]) -> None:
    settings = get_settings()
    interval = max(0.5, min(settings.lease_seconds / 3, 10.0))
    while not _stop.is_set():
        try:
            announce(hostname, queues, ttl=interval * 3)
            requeued, ended = reap_once()
            if requeued or ended:
                log.warning("reaper: requeued %s, ended %s", requeued, ended)
        except Exception:  # noqa: BLE001 - keep reaping after a transient DB or Redis error
            log.exception("reaper pass failed")
        _stop.wait(interval)


def start(*, hostname: str, queues: list[str]) -> None:
    """Start the reaper thread once per process."""
    global _thread
    if _thread is not None and _thread.is_alive():
        return
    _stop.clear()
    _thread = threading.Thread(target=_loop, args=(hostname, queues), name="tuneboard-reaper", daemon=True)
    _thread.start()


def stop() -> None:
    """Ask the reaper thread to end."""
    _stop.set()
