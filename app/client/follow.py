"""Following a job's SSE stream to its end, across dropped connections.

The stream's event ids are Redis stream ids; after a drop the client reconnects with the last id it
saw in Last-Event-ID, and the last step it holds, so the server resumes right after it (sending from
its database any step the stream lost meanwhile): no point is shown twice or lost. The
`end` event closes a finished job's stream; the job object fetched then is the final word (its
status, error, final metrics), since a stream trimmed or flushed on the server may lack the status.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from app.client.http import ApiError, Client, SseEvent, describe_transport_error
from app.client.progress import Display
from app.job_status import TERMINAL_STATUSES

# Waits between reconnect attempts; the last one repeats. Together about two minutes before giving up.
BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0, 10.0)
MAX_FAILURES = 16


def format_event(data: dict[str, Any]) -> str:
    """An `event` as one line: local time, level when not info, message."""
    created = data.get("created_at")
    stamp = time.strftime("%H:%M:%S", time.localtime(created)) + " " if isinstance(created, int | float) else ""
    level = data.get("level") or "info"
    prefix = "" if level == "info" else f"{level}: "
    return f"{stamp}{prefix}{data.get('message', '')}"


class Follower:
    """Reads one job's stream into a Display until the job ends; returns the final job object."""

    def __init__(self, client: Client, job_id: str, display: Display, *,
                 sleep: Callable[[float], None] = time.sleep):
        self.client, self.job_id, self.display, self.sleep = client, job_id, display, sleep
        self.last_event_id: str | None = None
        self.last_step: int | None = None  # the highest step shown, lowered by rewinds
        self.status: str | None = None
        self._failures = 0

    def run(self) -> dict[str, Any]:
        """Follow until the stream ends with the job finished; ApiError when the server stays away."""
        while True:
            reason = "the server closed the stream"
            try:
                for event in self.client.stream_events(self.job_id, self.last_event_id, on_open=self._opened,
                                                       after_step=self.last_step):
                    if event.event == "end":
                        job = self.client.get_job(self.job_id)
                        if job["status"] in TERMINAL_STATUSES:
                            return job
                        break  # an end without a finished job: resume following
                    self._handle(event)
            except httpx.TransportError as exc:
                reason = describe_transport_error(exc)
            except ApiError as exc:
                if not exc.retryable:
                    raise
                reason = exc.message
            self._wait_before_retry(reason)

    def _opened(self) -> None:
        if self._failures:
            where = f" after event {self.last_event_id}" if self.last_event_id else ""
            self.display.message(f"Reconnected; resuming{where}.")
        self._failures = 0

    def _wait_before_retry(self, reason: str) -> None:
        self._failures += 1
        if self._failures > MAX_FAILURES:
            raise ApiError(f"lost the connection to {self.client.url} ({reason}) and could not reconnect; the job "
                           f"keeps running: {self.client.page_url(self.job_id)}")
        delay = BACKOFF[min(self._failures, len(BACKOFF)) - 1]
        self.display.message(f"Connection lost ({reason}); reconnecting in {delay:g}s...")
        self.sleep(delay)

    def _handle(self, event: SseEvent) -> None:
        if event.id:
            self.last_event_id = event.id
        data = event.data
        if event.event == "metric":
            if isinstance(data.get("step"), int):
                self.last_step = max(self.last_step or 0, data["step"])
            self.display.metric(data, event.id)
        elif event.event == "status":
            self.status = data.get("status") or self.status
            self.display.set_total(data.get("total_steps"))
        elif event.event == "event":
            self.display.message(format_event(data))
        elif event.event == "rewind" and isinstance(data.get("step"), int):
            self.last_step = min(self.last_step, data["step"]) if self.last_step is not None else None
            self.display.rewind(data["step"])
        # Other types (a newer server's) are skipped: the stream is meant to grow.
