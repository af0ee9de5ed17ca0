"""Refuses the NUL character anywhere in a request's URL, query string, JSON body or form body.

No id, name, cursor or setting of Tuneboard holds NUL, and PostgreSQL refuses it in every text value, so one
reaching a query made the request answer 500 (and on SQLite, matched nothing or stored a value PostgreSQL
could never hold). One check at the door, before any route, answers 422 in the API's error envelope naming
the parameter instead. Multipart uploads are the upload route's to check. Must not import torch or `workers`.
"""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qsl

_NUL = "\x00"
# A JSON string holds NUL only as the escape \u0000 (a raw NUL byte is not valid JSON); it is an escape when
# an even number of backslashes (possibly none) precede it.
_JSON_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000", re.IGNORECASE)
_BRACKETED = re.compile(r"^([^\[]+)\[")


def document_nul_refusal(openapi: dict) -> dict:
    """Add the 422 this middleware answers (to any operation: a query string may carry NUL anywhere) to every
    operation of an OpenAPI schema that does not document one already."""
    for operations in openapi.get("paths", {}).values():
        for operation in operations.values():
            if isinstance(operation, dict) and "responses" in operation:
                operation["responses"].setdefault("422", {
                    "description": "The URL, query or body holds the NUL character",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}})
    return openapi


def _refusal(param: str | None, where: str) -> bytes:
    name = f"{param}: " if param else ""
    return json.dumps({"error": {
        "message": f"{name}the NUL character (\\u0000, %00) is not allowed in {where}.",
        "type": "invalid_request_error", "param": param, "code": "invalid_value"}}).encode()


def _query_param(name: str) -> str:
    # metadata[key]=value filters are documented as the one parameter `metadata`.
    match = _BRACKETED.match(name)
    return match.group(1) if match else name


def nul_in_query(query: str) -> str | None:
    """The name of the first query (or form) parameter whose name or value holds NUL; '' when unnamed."""
    for name, value in parse_qsl(query, keep_blank_values=True):
        if _NUL in name or _NUL in value:
            return _query_param(name.replace(_NUL, "")) or ""
    return None


def nul_in_json(body: bytes) -> str | None:
    """The dotted path of the first key or string value holding NUL in a JSON body; None when there is none
    (or when the body is not JSON at all: the route's own validation says so)."""
    if not _JSON_NUL_ESCAPE.search(body):
        return None
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return _find_nul(document, [])


def _find_nul(value, path: list[str]) -> str | None:
    if isinstance(value, str):
        return ".".join(path) if _NUL in value else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and _NUL in key:
            return ".".join([*path, key.replace(_NUL, "")])
        found = _find_nul(item, [*path, str(key)])
        if found is not None:
            return found
    return None


def _content_type(scope: dict) -> bytes:
    for key, value in scope.get("headers", ()):
        if key.lower() == b"content-type":
            return value.split(b";")[0].strip().lower()
    return b""


class NulGuardMiddleware:
    """Answers 422 naming the parameter when the URL, query or a JSON / form body carries NUL."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _NUL in scope["path"]:
            await _refuse(send, _refusal(None, "the URL path"))
            return
        query = scope.get("query_string", b"").decode("latin-1")
        param = nul_in_query(query) if "%00" in query or _NUL in query else None
        if param is not None:
            await _refuse(send, _refusal(param or None, "the query string"))
            return
        kind = _content_type(scope)
        is_json = kind == b"application/json" or kind.endswith(b"+json")
        if kind != b"application/x-www-form-urlencoded" and not is_json:
            await self.app(scope, receive, send)
            return
        # JSON and form bodies are small (TUNEBOARD_MAX_JSON_BODY_BYTES, enforced before this runs).
        messages, chunks = [], []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if kind == b"application/x-www-form-urlencoded":
            param = nul_in_query(body.decode("latin-1")) if b"%00" in body or b"\x00" in body else None
            where = "the form"
        else:
            param, where = nul_in_json(body), "the JSON body"
        if param is not None:
            await _refuse(send, _refusal(param or None, where))
            return

        async def replay():
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


async def _refuse(send, body: bytes) -> None:
    await send({"type": "http.response.start", "status": 422,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
