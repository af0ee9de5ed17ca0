"""REST calls of the terminal client: files, jobs and a job's Server-Sent Events stream.

The server's URL comes from --url, else TUNEBOARD_URL, else http://127.0.0.1:8000 (what `tuneboard up`
serves); the token from --token, else TUNEBOARD_TOKEN, and is sent as `Authorization: Bearer <token>`.
Every failure, whether the API's `{"error": {...}}` envelope or a server that cannot be reached,
becomes one `ApiError` that the commands print as a single line (exit status 2).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import httpx
from httpx_sse import connect_sse

DEFAULT_URL = "http://127.0.0.1:8000"
# The stream's server pings every 10 s; three missed pings mean a dead connection, not a quiet job.
STREAM_READ_TIMEOUT = 35.0
# The server validates a dataset after receiving it, inside the upload request.
UPLOAD_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
TIMEOUT = httpx.Timeout(60.0, connect=10.0)


class ApiError(Exception):
    """A request that failed: the API's error envelope, or no answer at all (status None)."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 status: int | None = None, where: str | None = None):
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.where = message, param, code, status, where

    @property
    def retryable(self) -> bool:
        """Whether trying again later may succeed (no answer, or a 5xx from the server or a proxy)."""
        return self.status is None or self.status >= 500

    def one_line(self) -> str:
        """The message with its param and config location, for stderr."""
        details = [f"param: {self.param}"] if self.param else []
        if self.where:
            details.append(self.where)
        suffix = f" [{'; '.join(details)}]" if details else ""
        return " ".join(f"{self.message}{suffix}".split())  # messages with newlines stay on one line


def error_from(response: httpx.Response) -> ApiError:
    """The ApiError of a non-2xx response, from its envelope when it has one."""
    try:
        body = response.json()
        error = body["error"]
        message = error.get("message") or f"HTTP {response.status_code}"
        param, code = error.get("param"), error.get("code")
    except (ValueError, KeyError, TypeError, AttributeError):
        # A proxy's HTML page or an empty body: say what came back rather than guess.
        message, param, code = f"HTTP {response.status_code} {response.reason_phrase} from {response.url}", None, None
    if response.status_code == 401:
        message += " (pass --token or set TUNEBOARD_TOKEN)"
    return ApiError(message, param=param, code=code, status=response.status_code)


@dataclass(frozen=True)
class SseEvent:
    """One Server-Sent Event: the last id the stream named (a Redis stream id, or None), its type and JSON data."""

    id: str | None
    event: str
    data: dict[str, Any]


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {"raw": text}
    return value if isinstance(value, dict) else {"value": value}


class _CountingFile:
    """A binary file that reports how many bytes were read, so an upload can show its progress."""

    def __init__(self, file: BinaryIO, on_progress: Callable[[int], None]):
        self._file, self._on_progress, self.sent = file, on_progress, 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(size)
        self.sent += len(chunk)
        self._on_progress(self.sent)
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        position = self._file.seek(offset, whence)
        if whence == os.SEEK_SET:
            self.sent = position  # httpx rewinds before sending
        return position

    def tell(self) -> int:
        return self._file.tell()

    def fileno(self) -> int:
        # Lets httpx learn the size with fstat and send a Content-Length instead of chunking.
        return self._file.fileno()


@dataclass(frozen=True)
class Connection:
    """Where the server is and who is calling."""

    url: str
    token: str


def connection_from(url: str | None, token: str | None) -> Connection:
    """The server URL and token from the options, else TUNEBOARD_URL / TUNEBOARD_TOKEN."""
    url = (url or os.environ.get("TUNEBOARD_URL") or DEFAULT_URL).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ApiError(f"the server URL {url!r} must start with http:// or https://", param="--url")
    token = token or os.environ.get("TUNEBOARD_TOKEN")
    if not token:
        raise ApiError("no API token: pass --token or set TUNEBOARD_TOKEN (create one on your account page, or "
                       "with `tuneboard tokens create --user EMAIL` on the server)", param="--token")
    return Connection(url, token)


class Client:
    """Tuneboard's REST API, synchronously; use as a context manager."""

    def __init__(self, connection: Connection, *, transport: httpx.BaseTransport | None = None):
        self.url = connection.url
        self._http = httpx.Client(base_url=connection.url, timeout=TIMEOUT, transport=transport,
                                  headers={"Authorization": f"Bearer {connection.token}",
                                           "User-Agent": "tuneboard-cli"})

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._http.close()

    # --- URLs people open or paste ---------------------------------------------------------------------
    def page_url(self, job_id: str) -> str:
        """The job's page in the browser."""
        return f"{self.url}/jobs/{job_id}"

    def job_url(self, job_id: str, tail: str = "") -> str:
        """An API URL of the job, e.g. tail='/adapter' or '/cancel'."""
        return f"{self.url}/v1/fine_tuning/jobs/{job_id}{tail}"

    # --- calls -----------------------------------------------------------------------------------------
    def upload_file(self, path: Path, on_progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """POST /v1/files with purpose=fine-tune; on_progress(bytes_sent) as the body goes out."""
        with path.open("rb") as raw:
            body = _CountingFile(raw, on_progress or (lambda sent: None))
            return self._request("POST", "/v1/files", files={"file": (path.name, body)},
                                 data={"purpose": "fine-tune"}, timeout=UPLOAD_TIMEOUT)

    def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/fine_tuning/jobs; returns the job object."""
        return self._request("POST", "/v1/fine_tuning/jobs", json=body)

    def list_jobs(self, *, limit: int = 20, status: str | None = None, after: str | None = None) -> dict[str, Any]:
        """GET /v1/fine_tuning/jobs: one page, newest first."""
        params = {"limit": limit, **({"status": status} if status else {}), **({"after": after} if after else {})}
        return self._request("GET", "/v1/fine_tuning/jobs", params=params)

    def get_job(self, job_id: str) -> dict[str, Any]:
        """GET /v1/fine_tuning/jobs/{id}."""
        return self._request("GET", f"/v1/fine_tuning/jobs/{job_id}")

    def stream_events(self, job_id: str, last_event_id: str | None = None, on_open: Callable[[], None] | None = None,
                      *, after_step: int | None = None) -> Iterator[SseEvent]:
        """The job's live updates after last_event_id, until the server closes the stream.

        `after_step` is the last step the caller holds: the server sends, from its database, any step the
        stream lost past it. Raises ApiError for an answer other than 200 and lets httpx.TransportError
        through when the connection drops, so the caller can reconnect from the last id it saw.
        """
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        params = {"after_step": after_step} if after_step is not None else {}
        timeout = httpx.Timeout(10.0, read=STREAM_READ_TIMEOUT)
        with connect_sse(self._http, "GET", f"/v1/fine_tuning/jobs/{job_id}/stream", headers=headers,
                         params=params, timeout=timeout) as source:
            if source.response.status_code != 200:
                source.response.read()
                raise error_from(source.response)
            if on_open:
                on_open()
            for sse in source.iter_sse():
                # The SSE spec dispatches no event without data; httpx-sse reports one at each ping once an
                # id was seen. Its SSEError (a reply that is not an event stream) is an httpx.TransportError.
                if sse.data:
                    yield SseEvent(sse.id or None, sse.event, _json_object(sse.data))

    def _request(self, method: str, path: str, **options: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, **options)
        except httpx.TransportError as exc:
            raise ApiError(f"cannot reach Tuneboard at {self.url}: {describe_transport_error(exc)}") from None
        if response.is_error:
            raise error_from(response)
        try:
            return response.json()
        except ValueError:
            raise ApiError(f"{method} {path} answered something other than JSON; is {self.url} a Tuneboard "
                           "server?", status=response.status_code) from None


def describe_transport_error(exc: httpx.TransportError) -> str:
    """A short reason for a failed connection ('connection refused', 'timed out', ...)."""
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text.split("] ", 1)[-1] if text.startswith("[Errno") else text
