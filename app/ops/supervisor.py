"""`tuneboard up`: start the embedded Redis, a worker and the web server as child processes, and stop
them all together on Ctrl-C or when any of them dies. Must not import torch or `workers`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from app.bundled_files import child_process_dir


@dataclass
class Children:
    """The processes `up` started, stopped in reverse order."""

    processes: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    one_shots: set[int] = field(default_factory=set)  # pids of children expected to end (a preparation step)

    def add(self, name: str, process: subprocess.Popen) -> None:
        self.processes.append((name, process))

    def start(self, name: str, command: list[str], env: dict[str, str], log: Path | None = None, *,
              one_shot: bool = False) -> subprocess.Popen:
        """Start a child in its own process group, its output to the console or a log file. A one-shot child
        may end without stopping the others, but is still stopped with them."""
        output = log.open("ab") if log else None
        process = subprocess.Popen(command, cwd=child_process_dir(), env=env, stdout=output, stderr=subprocess.STDOUT
                                   if output else None, start_new_session=True)
        self.add(name, process)
        if one_shot:
            self.one_shots.add(process.pid)
        return process

    def first_exited(self) -> tuple[str, int] | None:
        """The name and exit code of a long-running child that has ended, if any."""
        for name, process in self.processes:
            if process.pid in self.one_shots:
                continue
            code = process.poll()
            if code is not None:
                return name, code
        return None

    def stop_all(self, timeout: float = 20.0) -> None:
        """Stop the children in reverse order of start, each (its whole group) ended before the next is asked:
        SIGTERM, then SIGKILL after the timeout. Redis, started first, goes last: the web app and the worker
        never lose it mid-stop (each loss would print a retry and a traceback)."""
        for _name, process in reversed(self.processes):
            strays = _descendants(process.pid)
            if process.poll() is None:
                _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
            # What it started in a session of its own (the web app's model inventory) would outlive it.
            for stray in strays:
                _kill_stray(stray)
        # A child's own children (a Celery pool process) may outlive it; end the groups for good.
        for _name, process in self.processes:
            _signal_group(process, signal.SIGKILL)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _kill_stray(process: psutil.Process) -> None:
    try:
        if process.is_running():  # the same process still: psutil compares its start time, not only the pid
            process.kill()
    except psutil.Error:
        pass


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def catch_stop_signals() -> dict:
    """From now on Ctrl-C / SIGTERM only set a flag, read by wait_for_interrupt (no KeyboardInterrupt)."""
    stop = {"signal": None}

    def handler(signum, _frame):
        stop["signal"] = signum

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def _child_exited(name: str, code: int) -> int:
    """Say that a child ended on its own; returns the exit status for `up`."""
    print(f"tuneboard: {name} exited with status {code}; stopping everything.", file=sys.stderr, flush=True)
    return 1


def wait_for_interrupt(children: Children, stop: dict, until: subprocess.Popen | None = None,
                       timeout: float | None = None) -> int | None:
    """Block until Ctrl-C / SIGTERM or a child exits, and return the exit status for `up`; with `until`, return
    None as soon as that process ends or the timeout passes."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while stop["signal"] is None:
        exited = children.first_exited()
        if exited is not None:
            return _child_exited(*exited)
        if until is not None and (until.poll() is not None or (deadline is not None and time.monotonic() > deadline)):
            return None
        time.sleep(0.2)
    return 0
