"""Two installs share one Redis, even one database, when each has its own key prefix (TUNEBOARD_REDIS_KEY_PREFIX).

Install A and install B here use the same Redis database, the same job id, the same queue name and the same
Idempotency-Key: neither sees the other's job streams, cancel flags, attempt fences, live workers, sign-in counts,
idempotency keys or queued messages (a real Celery worker process of B's drains B's queue and leaves A's message
where it is). And the default prefix keeps every key name an earlier release wrote, so an upgrade orphans no
live stream or queued message.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid

import pydantic
import pytest
import redis

from app import redis_client
from app.accounts import sign_in_limits
from app.fleet import queue, worker_registry
from app.jobs import streams
from app.settings import DEFAULT_REDIS_KEY_PREFIX, Settings, get_settings
from app.web import idempotency
from tests.configure.conftest import wait_until
from tests.services import delete_keys

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # a Redis question only


@pytest.fixture
def other_prefix(redis_url):
    """Install B's key prefix; its keys are deleted at the end."""
    prefix = f"tbtest-{uuid.uuid4().hex[:8]}:"
    yield prefix
    delete_keys(redis_url, prefix)


def _be(monkeypatch, prefix: str | None) -> redis.Redis:
    """From here on this process is the install with that key prefix (None: the default one)."""
    if prefix is None:
        monkeypatch.delenv("TUNEBOARD_REDIS_KEY_PREFIX", raising=False)
    else:
        monkeypatch.setenv("TUNEBOARD_REDIS_KEY_PREFIX", prefix)
    get_settings.cache_clear()
    return redis_client.get_redis()


@pytest.mark.parametrize("prefix", ["tuneboard:", "team-a:", "prod.eu_1:", "a", "x" * 64])
def test_a_short_safe_prefix_is_accepted(prefix):
    assert Settings(redis_key_prefix=prefix).redis_key_prefix == prefix


@pytest.mark.parametrize("prefix", ["", "x" * 65, "team a:", "team*:", "team?:", "[ab]:", "a\\b", "team/a", "é:"])
def test_an_empty_long_or_glob_prefix_is_refused_at_start(prefix):
    with pytest.raises(pydantic.ValidationError, match="redis_key_prefix"):
        Settings(redis_key_prefix=prefix)


def test_the_default_prefix_is_tuneboard():
    assert Settings().redis_key_prefix == DEFAULT_REDIS_KEY_PREFIX == "tuneboard:"


@SQLITE_ONLY
def test_two_installs_on_one_redis_do_not_see_each_others_streams_flags_workers_or_limits(
        tuneboard_env, monkeypatch, other_prefix):
    job_id, team_id = "ftjob-shared", "team-shared"
    a = _be(monkeypatch, tuneboard_env.redis_key_prefix)
    streams.publish(a, job_id, "metric", {"step": 1, "loss": 2.0}, max_len=1000)
    streams.request_cancel(a, job_id)
    assert streams.raise_attempt(a, job_id, 3) == 3
    worker_registry.announce(a, {"hostname": "a@host", "queues": ["shared"]}, ttl_seconds=60)
    for _ in range(sign_in_limits.FREE_ATTEMPTS_PER_ACCOUNT):
        assert sign_in_limits.reserve(a, "alice@example.com", "192.0.2.1").wait_seconds == 0
    assert sign_in_limits.reserve(a, "alice@example.com", "192.0.2.1").wait_seconds > 0  # A throttles Alice
    made: list[str] = []

    def create(name: str):
        return lambda: made.append(name) or {"id": name}

    assert idempotency.run_once(team_id, "files", "retry-1", "same", create=create("a-1"),
                                replay=lambda i: {"id": i}) == {"id": "a-1"}

    b = _be(monkeypatch, other_prefix)
    assert b.connection_pool is a.connection_pool  # one Redis, one database: only the prefix differs
    assert streams.read_since(b, job_id) == []
    assert not streams.cancel_requested(b, job_id)
    assert streams.raise_attempt(b, job_id, 1) == 1  # B's fence knows nothing of A's attempt 3
    assert streams.publish_fenced(b, job_id, 1, "metric", {"step": 1, "loss": 9.0}, max_len=1000)
    assert "a@host" not in {w.hostname for w in worker_registry.live_workers(b)}
    assert sign_in_limits.reserve(b, "alice@example.com", "192.0.2.1").wait_seconds == 0
    assert idempotency.run_once(team_id, "files", "retry-1", "same", create=create("b-1"),
                                replay=lambda i: {"id": i}) == {"id": "b-1"}  # made anew, not A's replayed
    assert made == ["a-1", "b-1"]

    a = _be(monkeypatch, tuneboard_env.redis_key_prefix)
    assert [e.data for e in streams.read_since(a, job_id)] == [{"step": 1, "loss": 2.0}]  # B's entry is B's
    assert streams.cancel_requested(a, job_id)
    assert streams.publish_fenced(a, job_id, 1, "metric", {"step": 2}, max_len=1000) is None  # still fenced at 3
    assert [w.hostname for w in worker_registry.live_workers(a)] == ["a@host"]
    assert idempotency.run_once(team_id, "files", "retry-1", "same", create=create("a-2"),
                                replay=lambda i: {"id": i}) == {"id": "a-1"}  # A's own retry is replayed
    assert made == ["a-1", "b-1"]


@SQLITE_ONLY
def test_a_worker_of_one_install_never_takes_another_installs_message_from_a_queue_of_the_same_name(
        tuneboard_env, monkeypatch, other_prefix, start_worker):
    shared_queue = tuneboard_env.queue  # both installs name their queue alike
    b_worker = start_worker(name="b", TUNEBOARD_REDIS_KEY_PREFIX=other_prefix, TUNEBOARD_WORKER_PRELOAD="false")
    _be(monkeypatch, tuneboard_env.redis_key_prefix)
    queue.enqueue_training("ftjob-of-a", shared_queue, 1)
    b = _be(monkeypatch, other_prefix)
    queue.enqueue_training("ftjob-of-b", shared_queue, 1)
    # Sent after A's: were the two lists one, B's worker (one message at a time, oldest first) took A's before it.
    wait_until(lambda: "job ftjob-of-b: nothing to claim" in b_worker.log(), timeout=60)
    assert "ftjob-of-a" not in b_worker.log()
    wait_until(lambda: [w.hostname for w in worker_registry.live_workers(b)], timeout=60)  # B's worker announced

    a = _be(monkeypatch, tuneboard_env.redis_key_prefix)
    assert queue.broker_holdings(a, [shared_queue]).waiting == {"ftjob-of-a"}
    assert a.llen(tuneboard_env.redis_key_prefix + shared_queue) == 1  # behind A's prefix, as Kombu names it
    assert worker_registry.live_workers(a) == []  # B's worker is not A's
    a_worker = start_worker(name="a", TUNEBOARD_WORKER_PRELOAD="false")
    wait_until(lambda: "job ftjob-of-a: nothing to claim" in a_worker.log(), timeout=60)
    assert "ftjob-of-b" not in a_worker.log()
    assert queue.broker_holdings(a, [shared_queue]).waiting == frozenset()


@SQLITE_ONLY
def test_the_default_prefix_reads_and_writes_the_keys_of_earlier_releases(tuneboard_env, monkeypatch):
    client = _be(monkeypatch, None)
    job_id, host, queue_name = f"ftjob-{uuid.uuid4().hex}", f"w-{uuid.uuid4().hex[:8]}@host", tuneboard_env.queue
    names = [f"tuneboard:job:{job_id}:stream", f"tuneboard:job:{job_id}:cancel", f"tuneboard:job:{job_id}:attempt",
             f"tuneboard:worker:{host}", queue_name, f"_kombu.binding.{queue_name}"]
    try:
        # What an earlier release left in Redis: a live stream, a cancel flag, a fence, a worker's announcement.
        client.xadd(names[0], {"t": "metric", "d": json.dumps({"step": 7})})
        client.set(names[1], "1")
        client.set(names[2], "2")
        client.set(names[3], json.dumps({"hostname": host, "queues": ["old"], "seen_at": time.time()}), ex=60)
        assert [e.data for e in streams.read_since(client, job_id)] == [{"step": 7}]
        assert streams.cancel_requested(client, job_id)
        assert streams.publish_fenced(client, job_id, 1, "metric", {"step": 8}, max_len=1000) is None
        assert streams.publish_fenced(client, job_id, 2, "metric", {"step": 8}, max_len=1000)
        assert host in {w.hostname for w in worker_registry.live_workers(client)}

        # Messages go to (and are counted in) the list named after the queue, as before: no Kombu key prefix.
        assert "global_keyprefix" not in queue.make_celery(get_settings()).conf.broker_transport_options
        queue.enqueue_training(job_id, queue_name, 1)
        assert client.llen(queue_name) == 1
        assert queue.broker_holdings(client, [queue_name]).waiting == {job_id}

        email_key = hashlib.sha256(b"old@example.com").hexdigest()[:32]
        names.append(f"tuneboard:signin:account:{email_key}")
        names.append(f"tuneboard:signin:address:{hashlib.sha256(b'192.0.2.9').hexdigest()[:32]}")
        sign_in_limits.reserve(client, "old@example.com", "192.0.2.9")
        assert client.get(names[-2]) == "1" and client.get(names[-1]) == "1"
        idem = f"tuneboard:idem:team-old:files:{hashlib.sha256(b'k').hexdigest()}"
        names.append(idem)
        idempotency.run_once("team-old", "files", "k", "same", create=lambda: {"id": "file-1"}, replay=lambda i: None)
        assert json.loads(client.get(idem))["object_id"] == "file-1"
    finally:
        client.delete(*names, *client.scan_iter(match=f"*{queue_name}*"))  # the queue's list and Kombu's binding
