"""The size limit on JSON and form request bodies (TUNEBOARD_MAX_JSON_BODY_BYTES), enforced while they arrive.

A pure ASGI middleware: it counts the bytes of every body that is not a multipart upload as they come in
(a Content-Length that already says too much is refused before reading; a chunked body or one that lies
about its length is refused at the first byte past the limit) and answers 413 in the API's error envelope.
Multipart bodies (dataset uploads) are streamed to the store by their own route under their own limit, so
they pass through untouched. Must not import torch or `workers`.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from app.settings import Settings

_MULTIPART = b"multipart/"


def too_large_body(limit: int) -> bytes:
    """The 413 envelope naming the limit."""
    return json.dumps({"error": {
        "message": f"The request body is larger than the limit of {limit} bytes ({limit / 1024**2:g} MiB) "
                   "for JSON and form bodies (TUNEBOARD_MAX_JSON_BODY_BYTES).",
        "type": "invalid_request_error", "param": None, "code": "request_too_large"}}).encode()


def document_body_limit(openapi: dict) -> dict:
    """Add the 413 this middleware answers to every operation of an OpenAPI schema that takes a JSON or form body."""
    for operations in openapi.get("paths", {}).values():
        for operation in operations.values():
            kinds = operation.get("requestBody", {}).get("content", {}) if isinstance(operation, dict) else {}
            if any(not kind.startswith("multipart/") for kind in kinds):
                operation["responses"].setdefault("413", {
                    "description": "The body is larger than TUNEBOARD_MAX_JSON_BODY_BYTES",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}})
    return openapi


def _header(scope: dict, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


class BodyLimitMiddleware:
    """Refuses non-multipart request bodies larger than the configured limit with a 413."""

    def __init__(self, app, settings: Callable[[], Settings]):
        self.app = app
        self._settings = settings

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        if (_header(scope, b"content-type") or b"").lower().lstrip().startswith(_MULTIPART):
            await self.app(scope, receive, send)
            return
        limit = self._settings().max_json_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            await _refuse(send, limit)
            return
        # Read the whole body first (at most `limit` bytes are ever held), then hand it to the app: a body
        # over the limit is refused before any route has seen a byte of it.
        messages, received = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                messages.append(message)  # the client went away; let the app see that
                break
            received += len(message.get("body", b""))
            if received > limit:
                await _refuse(send, limit)
                return
            messages.append(message)
            if not message.get("more_body", False):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


def _has_body(scope: dict) -> bool:
    # HTTP/1.1: a request has a body only when it says so with Content-Length or Transfer-Encoding.
    length = _header(scope, b"content-length")
    return (length is not None and length.strip() not in (b"", b"0")) or \
        _header(scope, b"transfer-encoding") is not None


async def _refuse(send, limit: int) -> None:
    body = too_large_body(limit)
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
