"""Start the tests' Celery workers and web servers by forking a Python that has already imported their libraries.

A worker's first seconds go to importing torch, transformers and peft (10 to 15 s on two busy cores), a web server's
to importing FastAPI, SQLAlchemy and the rest (2 to 5 s), and the suite starts over a hundred of each. Forked from
multiprocessing's forkserver with those libraries preloaded, a start costs a fork; what then runs is the same
`celery -A workers worker` or `uvicorn app.main:app` command line, in a process and session of its own, killed and
waited for as the exec'd one is. Only third-party libraries are preloaded: Tuneboard's own
modules read their settings when imported, and each test's worker must read its own. Libraries that read the
environment when imported (huggingface_hub's HF_* constants) do it once, in the forkserver, so a worker whose
environment differs there is exec'd instead (`can_fork`).
"""

from __future__ import annotations

import importlib
import multiprocessing
import multiprocessing.forkserver
import os
import sys
import threading
from pathlib import Path

# What a Celery worker imports before its first job: Celery itself, and the ML stack of workers.warm_start; and what
# the web app under uvicorn imports of third-party code (two thirds of its 2.5 s import on a quiet core).
PRELOAD = ["celery", "celery.bin.celery", "celery.concurrency.prefork", "kombu", "redis", "sqlalchemy", "pydantic",
           "torch", "transformers", "transformers.trainer", "transformers.models.auto.modeling_auto",
           "transformers.models.auto.tokenization_auto", "transformers.models.llama.modeling_llama", "peft",
           "uvicorn", "uvicorn.main", "uvloop", "httptools", "fastapi", "starlette", "sse_starlette", "jinja2",
           "alembic", "httpx", "prometheus_client", "argon2", "python_multipart", "pydantic_settings", "yaml"]
# The command a forked process becomes, by its first argument: what `python -m <name>` would run.
ENTRY_POINTS = {"celery": ("celery.__main__", "main"), "uvicorn": ("uvicorn.main", "main")}
# The environment the tests' workers run with, as far as the preloaded libraries read it when imported.
PRELOAD_ENVIRONMENT = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
# (Not torch's: importing torch sets TORCHINDUCTOR_CACHE_DIR itself, in the test process as in the forkserver, and no
# test sets a torch variable that torch reads when imported.)
_READ_AT_IMPORT = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TOKENIZERS_", "PEFT_")

_started = threading.Lock()
_frozen_environment: dict[str, str] | None = None
# The test process's own environment, read before any test changes it: the forkserver starts from it, whichever
# test happens to start the first worker, so what it froze never depends on that test's settings.
_SESSION_ENVIRONMENT = dict(os.environ)


def _read_at_import(env: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in env.items() if key.startswith(_READ_AT_IMPORT)}


def _context() -> multiprocessing.context.BaseContext:
    """The forkserver, started once per test process with PRELOAD imported and PRELOAD_ENVIRONMENT set."""
    global _frozen_environment
    context = multiprocessing.get_context("forkserver")
    with _started:
        if _frozen_environment is None:
            context.set_forkserver_preload(PRELOAD)
            environment = {**_SESSION_ENVIRONMENT, **PRELOAD_ENVIRONMENT}
            current = dict(os.environ)
            os.environ.clear()  # the forkserver is started with the process's environment as it is now
            os.environ.update(environment)
            try:
                multiprocessing.forkserver.ensure_running()
            finally:
                os.environ.clear()
                os.environ.update(current)
            _frozen_environment = _read_at_import(environment)
    return context


def can_fork(env: dict[str, str]) -> bool:
    """Whether a process with this environment may be forked from the preloaded server."""
    if os.environ.get("TUNEBOARD_TEST_FORK_WORKERS", "true").lower() in ("false", "0", "no", "off"):
        return False
    _context()
    return _read_at_import(env) == _frozen_environment


def _run_command(argv: list[str], env: dict[str, str], cwd: str, log_path: str) -> None:
    # In the forked child: become the exec'd command as far as it can tell, then run it.
    os.setsid()
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.path.insert(0, cwd)
    sys.argv = list(argv)
    module, function = ENTRY_POINTS[argv[0]]
    getattr(importlib.import_module(module), function)()


class ForkedProcess:
    """A forked command with the part of subprocess.Popen's interface the tests use."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, log_path: Path):
        self._process = _context().Process(target=_run_command, args=(argv, env, str(cwd), str(log_path)),
                                           name=argv[0])
        self._process.start()
        self.pid = self._process.pid

    @property
    def returncode(self) -> int | None:
        """The exit status (negative: killed by that signal), or None while it runs."""
        return self._process.exitcode

    def poll(self) -> int | None:
        """The exit status if it ended, else None."""
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the end; subprocess.TimeoutExpired if it is still running after `timeout`."""
        import subprocess

        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self._process.name, timeout)
        return self._process.exitcode
