"""Live job updates through Redis: one capped Stream per job, plus the job's cancel flag.

Workers append (`publish`); every browser reads from its own position (`read_since`), so a reload or
a dropped connection resumes from the Last-Event-ID it saw, losing and repeating nothing — which
pub/sub could not do. Must not import torch or `workers`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Any

import redis

from app.settings import get_settings

START = "0-0"


def _job_key(job_id: str, what: str) -> str:
    # The install's prefix (default "tuneboard:") lets two installs share one Redis.
    return f"{get_settings().redis_key_prefix}job:{job_id}:{what}"


def stream_key(job_id: str) -> str:
    """The Redis key of a job's update stream."""
    return _job_key(job_id, "stream")


def cancel_key(job_id: str) -> str:
    """The Redis key a cancel request sets, checked by the training loop every step."""
    return _job_key(job_id, "cancel")


@dataclass(frozen=True, slots=True)
class StreamEntry:
    id: str
    type: str  # metric, event, status, progress, rewind
    data: dict[str, Any]


def publish(client: redis.Redis, job_id: str, type_: str, data: dict[str, Any], *, max_len: int) -> str:
    """Append one update to the job's stream, trimming it (approximately) to max_len entries."""
    return client.xadd(stream_key(job_id), {"t": type_, "d": json.dumps(data, separators=(",", ":"))},
                       maxlen=max_len, approximate=True)


def gpu_wait_key(job_id: str, attempts: int) -> str:
    """The Redis key holding since when the live workers of the job's queue have all had fewer GPUs than it needs,
    for the job as it is queued after `attempts` attempts (a requeued job starts a wait of its own)."""
    return _job_key(job_id, f"gpu-wait:{attempts}")


def attempt_key(job_id: str) -> str:
    """The Redis key holding the job's current attempt: only that attempt may append to the stream."""
    return _job_key(job_id, "attempt")


# Compared and appended in one script, so no newer claim can slip between the check and the XADD.
# A missing key refuses too: the writer then asks the database, which is the truth, and raises the key again.
_FENCED_XADD = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return false end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 't', ARGV[3], 'd', ARGV[4])
"""
# Monotonic: a stale attempt raising its own number can never lower the key below a newer one.
_RAISE_ATTEMPT = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then current = tonumber(ARGV[1]) end
redis.call('SET', KEYS[1], current, 'EX', ARGV[2])
return current
"""
ATTEMPT_KEY_SECONDS = 30 * 86400


@cache
def _script(client: redis.Redis, source: str):
    # Registered once per client: later calls send only its SHA (EVALSHA), as a plain XADD sends its fields.
    return client.register_script(source)


def publish_fenced(client: redis.Redis, job_id: str, attempt: int, type_: str, data: dict[str, Any], *,
                   max_len: int) -> str | None:
    """Append one update for this attempt; None (nothing appended) unless it is the job's current attempt."""
    data_json = json.dumps(data, separators=(",", ":"))
    return _script(client, _FENCED_XADD)(keys=[stream_key(job_id), attempt_key(job_id)],
                                         args=[str(attempt), max_len, type_, data_json])


def raise_attempt(client: redis.Redis, job_id: str, attempt: int) -> int:
    """Make `attempt` the job's current one unless a newer one already is; returns the current attempt."""
    return int(_script(client, _RAISE_ATTEMPT)(keys=[attempt_key(job_id)], args=[attempt, ATTEMPT_KEY_SECONDS]))


def decode(raw: list) -> list[StreamEntry]:
    """Turn XRANGE / XREAD entries into StreamEntry objects."""
    return [StreamEntry(entry_id, fields["t"], json.loads(fields["d"])) for entry_id, fields in raw]


def read_since(client: redis.Redis, job_id: str, last_id: str = START, *, count: int = 1000) -> list[StreamEntry]:
    """Entries after last_id, oldest first, without blocking."""
    raw = client.xrange(stream_key(job_id), min=f"({last_id}" if last_id != START else "-", count=count)
    return decode(raw)


def request_cancel(client: redis.Redis, job_id: str) -> None:
    """Raise the cancel flag the training loop polls (kept for a day)."""
    client.set(cancel_key(job_id), "1", ex=86400)


def cancel_requested(client: redis.Redis, job_id: str) -> bool:
    """Whether someone asked this job to stop."""
    return client.exists(cancel_key(job_id)) == 1
