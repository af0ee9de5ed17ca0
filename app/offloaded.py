"""Results the web app cannot compute itself (they need torch or a tokenizer): computed once by a
`python -m workers.<module>` child process, cached as JSON in the data dir, and polled by the page.

The first request starts the child and learns "pending"; later ones read the cached file, or the
one-line reason the child failed. Must not import torch or `workers`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from pathlib import Path

from app.settings import REPO_ROOT

_running: dict[Path, subprocess.Popen] = {}
_lock = threading.Lock()


class Pending(Exception):
    """The child process is still computing."""


class Failed(Exception):
    """The computation failed; the message says why in one line."""


def failure_reason(log_file: Path) -> str:
    """The most telling line of a failed child's output: its last error line, else its last line."""
    text = log_file.read_text(errors="replace") if log_file.exists() else ""
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^\w*(Error|Exception|Failure)\b", line)]
    return (errors or lines or ["the process exited without output"])[-1][:500]


def cached_or_start(out: Path, command: list[str]) -> dict:
    """The cached result at `out`; otherwise start `command` (once) and raise Pending, or raise Failed."""
    error_file, log_file = out.with_suffix(".error"), out.with_suffix(".log")
    with _lock:
        process = _running.get(out)
        if process is not None and process.poll() is not None:
            del _running[out]
            if process.returncode != 0:
                error_file.write_text(failure_reason(log_file))
        if out.is_file():
            return json.loads(out.read_text())
        if process is not None and process.poll() is None:
            raise Pending()
        if error_file.is_file():
            raise Failed(error_file.read_text())
        out.parent.mkdir(parents=True, exist_ok=True)
        # The child keeps its own copy of the log's file descriptor; ours closes right away.
        with log_file.open("w") as log:
            _running[out] = subprocess.Popen([sys.executable, *command, "--out", str(out)], stdout=log,
                                             stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        raise Pending()


def forget_failure(out: Path) -> None:
    """Drop a cached failure so the next request tries again."""
    out.with_suffix(".error").unlink(missing_ok=True)
