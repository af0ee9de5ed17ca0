"""The embedded Redis `tuneboard up` starts: it answers as itself, and a port another Redis holds is refused
rather than silently shared (that other Redis would answer PING just the same)."""

from __future__ import annotations

import redis

from app.ops.redis_server import RedisUnavailable, start_embedded_redis
from tests.services import free_port


def test_it_starts_as_a_broker_with_its_files_in_the_data_dir(tmp_path):
    port = free_port()
    process = start_embedded_redis(tmp_path / "redis", port)
    try:
        client = redis.Redis(port=port)
        assert int(client.info("server")["process_id"]) == process.pid
        config = client.config_get("*")
        assert config["appendonly"] == "yes" and config["maxmemory-policy"] == "noeviction"
        assert config["dir"] == str((tmp_path / "redis").resolve())
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_port_another_redis_holds_is_refused_not_shared(tmp_path):
    port = free_port()
    other = start_embedded_redis(tmp_path / "other", port)
    try:
        try:
            start_embedded_redis(tmp_path / "mine", port)
        except RedisUnavailable as exc:
            assert "embedded Redis exited at start" in str(exc) and "in use" in str(exc)
        else:
            raise AssertionError("a Redis that is not ours was taken for ours")
    finally:
        other.terminate()
        other.wait(timeout=10)
