"""The live progress line of `tuneboard submit`, and the messages printed above it.

    [##########..........] step 120/600 · epoch 0.40 · loss 1.2345 · 2,310 tok/s · ETA 3m12s

On a terminal the line is redrawn in place with a carriage return and messages scroll above it. When
stdout is not a terminal (a pipe, a CI log) nothing is redrawn: the line is printed once each time the
run passes another tenth of its steps, and every message on a line of its own, so logs stay short
and can be compared from run to run.

Hand-written rather than tqdm or rich: neither is a dependency of the web install (tqdm arrives only
with the worker's ML stack, rich through other packages' extras), the line's fields are our own, and the
not-a-terminal cadence above is not what either library prints.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections import deque
from typing import Any, TextIO

BAR_WIDTH = 20
# The rate behind the ETA is measured over the last points only, so a slow start does not linger in it.
RATE_WINDOW = 20
# Redraw at most this often on a terminal: a reconnect replays hundreds of points at once.
REDRAW_SECONDS = 0.1


def render_bar(step: int, total: int | None, width: int = BAR_WIDTH) -> str:
    """'[#####.....]' filled in proportion to step / total (all dots while the total is unknown)."""
    filled = 0 if not total else max(0, min(width, step * width // total))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def format_eta(seconds: float) -> str:
    """A duration as '45s', '3m12s' or '1h05m'."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def stream_millis(event_id: str | None) -> int | None:
    """The server time (ms) in a Redis stream id such as '1712345678901-0'."""
    if not event_id:
        return None
    head = event_id.split("-", 1)[0]
    return int(head) if head.isdigit() else None


class Progress:
    """What the line shows: the latest step, epoch, loss and throughput, and the ETA they imply."""

    def __init__(self) -> None:
        self.step, self.total, self.epoch = 0, None, None
        self.loss = self.eval_loss = self.tokens_per_second = None
        # (server ms, step) of recent metric points; server time, from the event ids, because points
        # replayed after a reconnect arrive all at once and their arrival times say nothing of the pace.
        self._points: deque[tuple[int, int]] = deque(maxlen=RATE_WINDOW)

    def add_metric(self, data: dict[str, Any], event_id: str | None = None) -> None:
        """Take one `metric` event's data."""
        step = data.get("step")
        if isinstance(step, int):
            self.step = step
            millis = stream_millis(event_id)
            if millis is not None and (not self._points or step > self._points[-1][1]):
                self._points.append((millis, step))
        if data.get("epoch") is not None:
            self.epoch = data["epoch"]
        for name in ("loss", "eval_loss", "tokens_per_second"):
            if data.get(name) is not None:
                setattr(self, name, data[name])

    def rewind(self, step: int) -> None:
        """The run resumed from the checkpoint at `step`: later points will be logged again."""
        self.step = step
        self._points.clear()

    def eta_seconds(self) -> float | None:
        """Seconds left at the recent pace, or None until two points and the total are known."""
        if not self.total or len(self._points) < 2:
            return None
        (first_ms, first_step), (last_ms, last_step) = self._points[0], self._points[-1]
        if last_step <= first_step or last_ms <= first_ms:
            return None
        rate = (last_step - first_step) / ((last_ms - first_ms) / 1000)
        return max(0, self.total - self.step) / rate

    def line(self, width: int = BAR_WIDTH) -> str:
        """The progress line."""
        parts = [f"{render_bar(self.step, self.total, width)} step {self.step}/{self.total or '?'}"]
        if self.epoch is not None:
            parts.append(f"epoch {self.epoch:.2f}")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.eval_loss is not None:
            parts.append(f"eval {self.eval_loss:.4f}")
        if self.tokens_per_second is not None:
            parts.append(f"{self.tokens_per_second:,.0f} tok/s")
        eta = self.eta_seconds()
        if eta is not None and self.step < (self.total or 0):
            parts.append(f"ETA {format_eta(eta)}")
        return " · ".join(parts)


class Display:
    """Prints the progress line and the messages above it, to a terminal or to a log."""

    def __init__(self, out: TextIO | None = None, *, tty: bool | None = None):
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.progress = Progress()
        self._shown = 0  # characters of the bar currently on screen (terminal only)
        self._last_draw = 0.0
        self._printed_step: int | None = None  # the step of the last printed line (log only)

    # --- inputs ----------------------------------------------------------------------------------------
    def set_total(self, total: int | None) -> None:
        """The run's total steps, once the worker knows them."""
        if total:
            self.progress.total = total

    def metric(self, data: dict[str, Any], event_id: str | None = None) -> None:
        """A `metric` event: update the line."""
        before = self.progress.step
        self.progress.add_metric(data, event_id)
        if self.tty:
            self._draw()
        elif self._crossed_mark(before, self.progress.step):
            self._print(self.progress.line())
            self._printed_step = self.progress.step

    def rewind(self, step: int) -> None:
        """A `rewind` event: the run restarted from a checkpoint."""
        self.progress.rewind(step)
        self._printed_step = step
        self.message(f"Resuming from the checkpoint at step {step}; later steps run again.")

    def message(self, text: str) -> None:
        """A line above the progress line (an event, a reconnect notice)."""
        if self.tty:
            self._clear()
            self._print(text)
            if self.progress.step or self.progress.total:
                self._draw(force=True)
        else:
            self._print(text)

    def close(self) -> None:
        """Leave the last state of the line on screen and end it, before a summary is printed."""
        if self.tty:
            if self._shown:
                self._draw(force=True)
                self.out.write("\n")
                self.out.flush()
                self._shown = 0
        elif self.progress.step and self._printed_step != self.progress.step:
            self._print(self.progress.line())
            self._printed_step = self.progress.step

    # --- output ----------------------------------------------------------------------------------------
    def _crossed_mark(self, before: int, step: int) -> bool:
        total = self.progress.total
        if self._printed_step is None:
            return step > 0
        if step <= self._printed_step:
            return False  # an eval point for a step already shown
        if not total:
            return step - self._printed_step >= 10
        return step >= total or step * 10 // total > self._printed_step * 10 // total

    def _draw(self, force: bool = False) -> None:
        moment = time.monotonic()
        if not force and moment - self._last_draw < REDRAW_SECONDS and self.progress.step != self.progress.total:
            return
        self._last_draw = moment
        # Longer than the terminal, the line would wrap and the carriage return would redraw only its tail.
        columns = shutil.get_terminal_size((100, 24)).columns - 1
        line = self.progress.line()[:columns]
        self.out.write("\r" + line + " " * max(0, self._shown - len(line)))
        self.out.flush()
        self._shown = len(line)

    def _clear(self) -> None:
        if self._shown:
            self.out.write("\r" + " " * self._shown + "\r")
            self._shown = 0

    def _print(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()
