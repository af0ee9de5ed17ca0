"""`tuneboard up`: everything on this machine in one terminal: the web app, a training worker, an inference worker, the
demo model's preparation and (unless configured otherwise) an embedded Redis, with SQLite; Ctrl-C stops them all.
Must not import torch or `workers` (the workers are `celery -A workers`, other processes).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from app.cli.accounts import first_run_link
from app.cli.common import fail, port_free, prepare_database, writable
from app.cli.worker import worker_command
from app.settings import DEFAULT_EMBEDDED_REDIS_PORT, get_settings


def _any_free_port(besides: int) -> int:
    # The web port is not bound until uvicorn starts, after Redis: never hand it to Redis.
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            chosen = sock.getsockname()[1]
        if chosen != besides:
            return chosen


def _wait_http(url: str, process: subprocess.Popen, timeout: float = 60) -> bool:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            time.sleep(0.2)
    return False


DEMO_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
# A first start converts the demo model in about half a minute on a laptop's CPU; past this, `up` stops waiting.
DEMO_MODEL_WAIT_SECONDS = 600


def _wait_for_demo_model(converter: subprocess.Popen, log: Path, children, stop: dict) -> int | None:
    """Wait for the demo model's preparation and say how it went, so the address and link print after it.

    Returns None to go on, or the exit status for `up` when it was stopped or a child died meanwhile."""
    from app.ops.supervisor import wait_for_interrupt

    if converter.poll() is None:
        print(f"Preparing the demo model {DEMO_MODEL} (first start only, about half a minute)...", flush=True)
    if (code := wait_for_interrupt(children, stop, until=converter, timeout=DEMO_MODEL_WAIT_SECONDS)) is not None:
        return code
    code = converter.poll()
    state = ("still being prepared; the first demo job waits for it" if code is None
             else "ready" if code == 0 else f"not prepared (see {log})")
    print(f"Demo model {DEMO_MODEL} {state}.", flush=True)
    return None


def cmd_up(args: argparse.Namespace) -> int:
    """Run the web app, one worker and (unless configured otherwise) an embedded Redis, with SQLite."""
    from app.ops.supervisor import Children, catch_stop_signals

    settings = get_settings()
    host, port = args.host or settings.host, args.port or settings.port
    if not port_free(host, port):
        return fail(f"port {port} on {host} is already in use; pick another with --port.")
    if problem := writable(settings.data_dir):
        return fail(problem)
    children = Children()
    try:
        code = _start_and_wait(settings, host, port, children)
    except KeyboardInterrupt:  # Ctrl-C while starting: stop what started, without a traceback
        code = 130
    finally:
        catch_stop_signals()  # a second Ctrl-C while the children stop must not leave them running
        children.stop_all()
    if code in (0, 130):  # stopped by Ctrl-C or SIGTERM
        print(f"Tuneboard stopped; everything is kept in {settings.data_dir.resolve()} (a running job resumes "
              "at the next `tuneboard up`).", flush=True)
    return code


def _start_embedded_redis(settings, web_port: int, children) -> str:
    """Start the embedded Redis as a child; returns its URL (RedisUnavailable says why it could not start)."""
    from app.ops.redis_server import RedisUnavailable, start_embedded_redis

    configured = settings.embedded_redis_port
    if configured is not None:
        if not port_free("127.0.0.1", configured):
            raise RedisUnavailable(f"port {configured} for the embedded Redis is in use; set another "
                                   "TUNEBOARD_EMBEDDED_REDIS_PORT, leave it unset, or set TUNEBOARD_REDIS_URL.")
        candidates = [configured]
    else:
        # Another install's embedded Redis may hold the usual port: any free one will do, since every process
        # that needs it is started here and told where it is. A second try covers a port taken between the
        # check and the start.
        usual = DEFAULT_EMBEDDED_REDIS_PORT
        candidates = [usual if port_free("127.0.0.1", usual) else _any_free_port(besides=web_port),
                      _any_free_port(besides=web_port)]

    def start(redis_port: int) -> str:
        children.add("redis", start_embedded_redis(settings.embedded_redis_dir, redis_port,
                                                   binary=settings.redis_server_binary))
        return f"redis://127.0.0.1:{redis_port}/0"

    for redis_port in candidates[:-1]:
        try:
            return start(redis_port)
        except RedisUnavailable:
            pass  # taken since the check: the next candidate
    return start(candidates[-1])


def _start_and_wait(settings, host: str, port: int, children) -> int:
    from app.base_models.inventories import worker_stack_installed
    from app.ops.redis_server import RedisUnavailable
    from app.ops.supervisor import catch_stop_signals, wait_for_interrupt
    from app.storage import artifacts

    env = {**os.environ, "TUNEBOARD_DATA_DIR": str(settings.data_dir.resolve())}
    if problem := prepare_database(settings):
        return fail(problem)
    try:
        artifacts.ping(settings)
    except Exception as exc:  # one line, not a traceback
        return fail(f"cannot use the artifact store {artifacts.get_store(settings).describe()}: {exc}")
    if settings.redis_url is None:
        try:
            env["TUNEBOARD_REDIS_URL"] = _start_embedded_redis(settings, port, children)
        except RedisUnavailable as exc:
            return fail(str(exc))
    converter = None
    if worker_stack_installed():
        children.start("worker", worker_command([settings.default_queue], "local"), env,
                       log=settings.data_dir / "worker.log")
        # Its own process, so a chat in the playground is answered while the training worker runs a job.
        children.start("inference worker", worker_command([settings.inference_queue], "inference"), env,
                       log=settings.data_dir / "inference-worker.log")
        # First run converts the demo GGUF once (tens of seconds), alongside the web server's start.
        demo_log = settings.data_dir / "demo-model.log"
        converter = children.start("demo model", [sys.executable, "-P", "-m", "workers.demo_model"], env, log=demo_log,
                                   one_shot=True)
    else:
        print("No worker started: the ML stack is not installed (pip install 'tuneboard[worker]').", flush=True)
    # Migrated above already: the web app's own migration would only add its log lines to this terminal.
    web_env = {**env, "TUNEBOARD_MIGRATE_ON_START": "false"}
    # -P, as for the worker: the packages come from the install, never from the current folder.
    web = children.start("web", [sys.executable, "-P", "-m", "uvicorn", "app.main:app", "--host", host,
                                 "--port", str(port), "--log-level", "warning",
                                 # The app itself decides which proxies to believe (TUNEBOARD_TRUSTED_PROXIES).
                                 "--no-proxy-headers"], web_env)
    if not _wait_http(f"http://{host}:{port}/healthz", web):
        return fail("the web server did not start; see the messages above.")
    link = first_run_link(f"http://{host}:{port}")
    # Caught before the address is printed: a Ctrl-C from then on is the normal way to stop, status 0.
    stop = catch_stop_signals()
    # The address and the sign-in link come last, where the user looks: after the demo model's line.
    if converter is not None and (code := _wait_for_demo_model(converter, demo_log, children, stop)) is not None:
        return code
    print(f"Tuneboard is running at http://{host}:{port}/  (Ctrl-C to stop)", flush=True)
    if link:
        print(f"First start: sign in as the admin with this one-time link:\n    {link}", flush=True)
    return wait_for_interrupt(children, stop)
