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

from app.settings import REPO_ROOT


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
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT
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
        """SIGTERM every child (its whole group), then SIGKILL what is left after the timeout."""
        for _name, process in reversed(self.processes):
            if process.poll() is None:
                _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for _name, process in reversed(self.processes):
            remaining = max(0.1, deadline - time.monotonic())
            try:
                process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        # A child's own children (a Celery pool process) may outlive it; end the groups for good.
        for _name, process in self.processes:
            _signal_group(process, signal.SIGKILL)


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


def wait_for_interrupt(children: Children, stop: dict) -> int:
    """Block until Ctrl-C / SIGTERM or a child exits; returns the exit status for `up`."""
    while stop["signal"] is None:
        exited = children.first_exited()
        if exited is not None:
            name, code = exited
            print(f"tuneboard: {name} exited with status {code}; stopping everything.", file=sys.stderr, flush=True)
            return 1
        time.sleep(0.3)
    return 0
