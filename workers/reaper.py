"""Each worker's background thread: announce this worker (queues, GPU) and reap expired leases.

The announcement (a Redis key with a TTL) lets the web app list live workers and the queues they
serve; the reaping itself lives in `app.jobs.lease_reaper`.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import shutil
import socket
import subprocess

import psutil

from app import redis_client
from app.fleet import worker_registry
from app.jobs.lease_reaper import ReaperThread, interval_seconds
from app.tables import now

log = logging.getLogger(__name__)
_thread: ReaperThread | None = None


def announce(hostname: str, queues: list[str], ttl: float) -> None:
    """Publish this worker's queues and device, valid for ttl seconds."""
    info = {"hostname": hostname, "host": socket.gethostname(), "queues": queues, "seen_at": now(),
            # A CPU worker trains in RAM: launch refuses a run larger than every worker's memory, RAM included.
            "ram_bytes": psutil.virtual_memory().total, **_device_info()}
    worker_registry.announce(redis_client.get_redis(), info, ttl)


@functools.cache
def _device_info() -> dict:
    # nvidia-smi rather than torch.cuda: initialising CUDA in this parent process would break CUDA in
    # the forked child that trains.
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
            gpus = [line.rsplit(",", 1) for line in out.splitlines() if line.strip()]
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            if visible is not None:  # this worker trains on these GPUs only
                gpus = [gpu for index, gpu in enumerate(gpus) if str(index) in visible.split(",")]
            name, mib = gpus[0]
            # A job spans GPUs of one worker: the smallest one is what each rank must fit in.
            return {"device": name.strip(), "gpu_memory_bytes": min(int(float(m)) for _, m in gpus) * 1024**2,
                    "gpu_count": len(gpus), "qlora": importlib.util.find_spec("bitsandbytes") is not None}
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            log.warning("nvidia-smi gave no GPU info", exc_info=True)
    return {"device": "cpu", "gpu_memory_bytes": None, "gpu_count": 0, "qlora": False}


def gpu_count() -> int:
    """How many GPUs this worker trains on (what it announces)."""
    return _device_info()["gpu_count"]


def start(*, hostname: str, queues: list[str]) -> None:
    """Start the reaper thread once per process, announcing this worker before each pass."""
    global _thread
    if _thread is not None and _thread.is_alive():
        return
    _thread = ReaperThread(before_pass=lambda: announce(hostname, queues, ttl=interval_seconds() * 3))
    _thread.start()


def stop() -> None:
    """Ask the reaper thread to end."""
    if _thread is not None:
        _thread.stopped.set()
