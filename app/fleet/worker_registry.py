"""Which workers are alive and which queues they serve, from the announcements they keep fresh in Redis.

Each worker's reaper thread rewrites its key every few seconds with a short TTL, so a dead worker
disappears on its own. Must not import torch or `workers`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import redis

from app.settings import get_settings

KEY_PREFIX = "worker:"  # after the install's redis_key_prefix


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    hostname: str
    queues: tuple[str, ...]
    device: str
    gpu_memory_bytes: int | None
    seen_at: float
    qlora: bool = False  # CUDA and bitsandbytes present: 4-bit QLoRA can run here
    ram_bytes: int | None = None
    gpu_count: int = 0  # GPUs one job may span here

    @property
    def training_memory_bytes(self) -> int | None:
        """What a run on this worker must fit in: its GPU's memory, or its RAM when it trains on the CPU."""
        return self.gpu_memory_bytes if self.device != "cpu" else self.ram_bytes


def _key_prefix() -> str:
    # The install's own: workers of another install sharing this Redis are not this one's.
    return get_settings().redis_key_prefix + KEY_PREFIX


def announce(client: redis.Redis, info: dict, ttl_seconds: float) -> None:
    """Publish a worker's announcement, valid for ttl_seconds."""
    client.set(_key_prefix() + info["hostname"], json.dumps(info), px=int(ttl_seconds * 1000))


def live_workers(client: redis.Redis) -> list[WorkerInfo]:
    """Every worker that announced itself recently, by name."""
    # The prefix holds no glob characters (Settings allows none), so it matches only itself.
    keys = sorted(client.scan_iter(match=_key_prefix() + "*", count=500))
    infos = []
    for raw in client.mget(keys) if keys else []:
        if raw is None:
            continue  # expired between SCAN and MGET
        data = json.loads(raw)
        infos.append(WorkerInfo(data["hostname"], tuple(data.get("queues", ())), data.get("device", "cpu"),
                                data.get("gpu_memory_bytes"), data.get("seen_at", 0.0), bool(data.get("qlora")),
                                data.get("ram_bytes"), _gpu_count(data)))
    return infos


def _gpu_count(announced: dict) -> int:
    # Workers from before multi-GPU jobs announced one GPU's memory and no count.
    return int(announced.get("gpu_count") or (1 if announced.get("gpu_memory_bytes") else 0))


def queues_served(workers: list[WorkerInfo]) -> dict[str, list[WorkerInfo]]:
    """Queue name -> the live workers that serve it."""
    served: dict[str, list[WorkerInfo]] = {}
    for worker in workers:
        for queue in worker.queues:
            served.setdefault(queue, []).append(worker)
    return served


def allowed_queues(served: dict[str, list[WorkerInfo]], default_queue: str, configured: list[str]) -> list[str]:
    """The queues a job may be sent to: the default one, those an admin configured, and those live workers serve.

    Any other name would leave the job queued forever and add a made-up queue to every metrics scrape.
    """
    return sorted({default_queue, *configured, *served})
