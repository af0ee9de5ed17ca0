"""The cost bound on user-written regular expressions: time PEFT's own matching work in a child process.

PEFT matches `target_modules`, `exclude_modules`, `modules_to_save`, `rank_pattern`, `alpha_pattern` and
`layers_pattern` with Python's `re` against every module name. `re` backtracks, so a short pattern such as
`(?:.|.){0,21}X` can take seconds per name, and `re` cannot be interrupted from another thread. So before
the estimator matches, a pattern that is not a plain dotted name is run, exactly as PEFT runs it, against
the model's module names in a throwaway `python -I -S` process that is killed when the work exceeds
WORK_BUDGET_SECONDS. A pattern that passes costs the web process and the worker at most about that much;
one that does not is refused naming its field. The `regex` module's match timeout was not used: its
optimisations answer many of these patterns in microseconds where `re` (and so PEFT on the worker) takes
minutes, so it would bound the web process but not the job. Verdicts are cached per pattern and model.

Stdlib only (this file also runs as the child's script); must not import torch, peft or `workers`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

WORK_BUDGET_SECONDS = 0.25  # all patterns of one config against all module names; real ones take milliseconds
START_TIMEOUT_SECONDS = 10.0  # the child's interpreter start, which a busy host may slow down
MAX_PATTERN_CHARS = 512
MAX_PATTERN_ENTRIES = 256  # list entries / dict keys of one field

# A dotted module name (what most users write) is matched in linear time whatever wraps it.
_PLAIN = re.compile(r"[\w.-]*")


_BUSY = "the server was too busy to check the pattern; try again"


class PatternTooCostly(ValueError):
    """A pattern whose matching work exceeds the budget; `field` names the setting."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class PatternCheck:
    """One PEFT matching call to time: `regex` applied with `mode` ("match" or "fullmatch") to every name."""

    field: str
    shown: str  # the pattern as the user wrote it
    regex: str  # the expression PEFT builds around it
    mode: str


def is_plain(pattern: str) -> bool:
    """Whether a pattern is a dotted name that no input can make expensive."""
    return _PLAIN.fullmatch(pattern) is not None


def check_cost(checks: Sequence[PatternCheck], names: Sequence[str]) -> None:
    """Raise PatternTooCostly naming the field whose pattern exceeds the budget against these module names."""
    needed = tuple(c for c in checks if not is_plain(c.shown))
    if needed:
        failure = _verdict(needed, tuple(names))
        if failure is not None and failure[1].endswith(_BUSY):
            _verdict.cache_clear()  # a busy host is no verdict on the pattern: check it again next time
        if failure is not None:
            raise PatternTooCostly(*failure)


@lru_cache(maxsize=512)
def _verdict(checks: tuple[PatternCheck, ...], names: tuple[str, ...]) -> tuple[str, str] | None:
    payload = json.dumps({"checks": [[c.regex, c.mode] for c in checks], "names": names})
    child = subprocess.Popen([sys.executable, "-I", "-S", __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
    try:
        return _watch(child, payload, checks, len(names))
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        for stream in (child.stdin, child.stdout):
            stream.close()


def _watch(child: subprocess.Popen, payload: str, checks: tuple[PatternCheck, ...], count: int) -> tuple | None:
    import os
    import selectors

    child.stdin.write(payload.encode())
    child.stdin.close()
    fd = child.stdout.fileno()
    selector = selectors.DefaultSelector()
    selector.register(fd, selectors.EVENT_READ)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    started, current, pending = False, 0, b""
    while True:
        remaining = deadline - time.monotonic()
        chunk = os.read(fd, 4096) if remaining > 0 and selector.select(remaining) else None
        if chunk is None:
            check = checks[current]
            if not started:
                return check.field, f"{check.field}: {_BUSY}"
            return check.field, (
                f"{check.field}: the pattern {check.shown!r} takes more than {WORK_BUDGET_SECONDS * 1000:.0f} ms to "
                f"match against this model's {count:,} module names with Python's re, as PEFT does; write it "
                "without nested or overlapping repetition (such as (a|a)* or (.*)*)")
        if not chunk:  # the child ended without finishing
            return checks[current].field, f"{checks[current].field}: the pattern could not be checked"
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            word, _, index = line.decode().partition(" ")
            if word == "ready":
                started = True
                deadline = time.monotonic() + WORK_BUDGET_SECONDS
            elif word == "start":
                current = int(index)
            elif word == "done":
                return None


def _probe() -> None:
    """The child: run every check, saying which one it is on, so the parent can name the one it had to stop."""
    request = json.loads(sys.stdin.read())
    names = request["names"]
    compiled = [(getattr(re.compile(pattern), mode)) for pattern, mode in request["checks"]]
    print("ready", flush=True)
    for index, call in enumerate(compiled):
        print("start", index, flush=True)
        for name in names:
            call(name)
    print("done", flush=True)


if __name__ == "__main__":
    _probe()
