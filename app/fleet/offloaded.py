"""Results the web app cannot compute itself (they need torch or a tokenizer): computed once by a
`python -m workers.<module>` child process, cached as JSON in the data dir, and polled by the page.

A request for a result not yet cached queues its computation and learns "pending"; later ones read the
cached file, or the one-line reason the child failed. One child runs at a time per host, whatever the
number of requests or web processes (a thread per process takes the queue in order, and a lock file in the
data dir keeps the processes of one host in turn); each child has a time limit, after which it and its own
children are killed; every child is waited for, so none is left a zombie. Must not import torch or `workers`.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from app.bundled_files import child_process_dir
from app.settings import Settings

log = logging.getLogger(__name__)

# Waiting computations per web process. Past this a request is answered "pending" without queueing, and
# queues itself on a later poll: a flood of new ids costs memory for the queue, never more processes.
MAX_QUEUED = 64


class Pending(Exception):
    """The computation is queued or running."""


class Failed(Exception):
    """The computation failed; the message says why in one line."""


@dataclass(frozen=True, slots=True)
class _Task:
    out: Path
    command: tuple[str, ...]
    timeout: float
    host_lock: Path


_queue: OrderedDict[Path, _Task] = OrderedDict()
_current: _Task | None = None
_changed = threading.Condition()
_runner: threading.Thread | None = None


def failure_reason(log_file: Path) -> str:
    """The most telling line of a failed child's output: its last error line, else its last line."""
    text = log_file.read_text(errors="replace") if log_file.exists() else ""
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^\w*(Error|Exception|Failure)\b", line)]
    return (errors or lines or ["the process exited without output"])[-1][:500]


def cached_or_start(out: Path, command: list[str], settings: Settings) -> dict:
    """The cached result at `out`; otherwise queue `command` (once) and raise Pending, or raise Failed."""
    global _runner
    error_file = out.with_suffix(".error")
    with _changed:
        if out.is_file():
            return json.loads(out.read_text())
        if error_file.is_file():
            raise Failed(error_file.read_text())
        busy = out in _queue or (_current is not None and _current.out == out)
        if not busy and len(_queue) < MAX_QUEUED:
            _queue[out] = _Task(out, tuple(command), settings.inventory_timeout_seconds,
                                settings.data_dir / ".offloaded.lock")
            if _runner is None or not _runner.is_alive():
                _runner = threading.Thread(target=_run_queue, name="offloaded-runner", daemon=True)
                _runner.start()
            _changed.notify_all()
    raise Pending()


def forget_failure(out: Path) -> None:
    """Drop a cached failure so the next request tries again."""
    out.with_suffix(".error").unlink(missing_ok=True)


def queued() -> int:
    """Computations waiting or running in this process."""
    with _changed:
        return len(_queue) + (_current is not None)


def _run_queue() -> None:
    global _current
    while True:
        with _changed:
            while not _queue:
                _changed.wait()
            _, task = _queue.popitem(last=False)
            _current = task
        try:
            _run(task)
        except Exception:  # the runner must outlive any one task (e.g. its data dir vanished)
            log.exception("offloaded computation for %s failed to run", task.out)
            _record_failure(task.out, "the computation could not be started; see the server log")
        finally:
            with _changed:
                _current = None
                _changed.notify_all()


@contextmanager
def _host_turn(lock_file: Path) -> Iterator[None]:
    """Hold this host's one slot for a child (other web processes sharing the data dir wait here)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(task: _Task) -> None:
    if task.out.is_file():
        return
    task.out.parent.mkdir(parents=True, exist_ok=True)
    log_file = task.out.with_suffix(".log")
    with _host_turn(task.host_lock):
        if task.out.is_file():  # another web process on this host computed it while we waited
            return
        with log_file.open("w") as child_log:
            # Its own session, so a timeout can kill the child and anything it started, as one group. -P: the
            # current folder is not put on its path, so a user's folder named app/ or workers/ cannot stand in.
            process = subprocess.Popen([sys.executable, "-P", *task.command, "--out", str(task.out)], stdout=child_log,
                                       stderr=subprocess.STDOUT, cwd=child_process_dir(), start_new_session=True)
        try:
            returncode = process.wait(timeout=task.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            _record_failure(task.out, f"it took longer than {task.timeout:g} s, the limit "
                                      "(TUNEBOARD_INVENTORY_TIMEOUT_SECONDS), and was stopped")
            return
    if returncode != 0:
        _record_failure(task.out, failure_reason(log_file))
    elif not task.out.is_file():
        _record_failure(task.out, "the process exited without writing its result")


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()  # reap it: a killed child not waited for stays a zombie


def _record_failure(out: Path, reason: str) -> None:
    try:
        out.with_suffix(".error").write_text(reason)
    except OSError:
        log.warning("could not record the failure of %s: %s", out, reason)
