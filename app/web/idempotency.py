"""Idempotency-Key on the API's creating POSTs: a retried request makes one object, not two.

Each key is remembered per team and endpoint in Redis for 24 hours (no table, no migration) together
with a fingerprint of the request and, once the request succeeded, the id of the object it made. A
retry with the same key and body answers that object again; the same key with another body, or while
the first request is still running, answers 409 in the error envelope. A request that fails forgets
its key, so the client can fix the request and retry with the same key. Must not import torch or
`workers`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Annotated, Any

import redis
from fastapi import Header
from fastapi.responses import JSONResponse

from app import redis_client
from app.settings import get_settings
from app.web.api_errors import error_response

KEY_PREFIX = "idem:"  # after the install's redis_key_prefix
TTL_SECONDS = 24 * 3600
# A claim whose request never finished (the server died mid-request) must not block retries for a day.
PENDING_TTL_SECONDS = 300
MAX_KEY_LENGTH = 255
HEADER = "Idempotency-Key"

IdempotencyKey = Annotated[str | None, Header(
    alias=HEADER, max_length=MAX_KEY_LENGTH,
    description="Any unique string (e.g. a UUID). A retry with the same key and the same request within 24 "
                "hours returns the object the first request created instead of creating another; the same "
                "key with a different request answers 409.",
)]


def fingerprint(payload: Any) -> str:
    """A digest of a request's meaningful content (JSON-serialisable), independent of key order."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _redis_key(team_id: str, endpoint: str, key: str) -> str:
    # The key is the client's string; hashing keeps odd characters and long keys out of Redis key names.
    return (get_settings().redis_key_prefix + KEY_PREFIX + f"{team_id}:{endpoint}:"
            + hashlib.sha256(key.encode()).hexdigest())


def _conflict(message: str, code: str) -> JSONResponse:
    return error_response(409, message, param=HEADER, code=code)


def run_once(team_id: str, endpoint: str, key: str | None, request_fingerprint: str, *,
             create: Callable[[], Any], replay: Callable[[str], Any | None]) -> Any:
    """Run `create` once per key: a retry gets `replay(object_id)` of the first result instead.

    `create` returns the API object (a dict with an `id`) or an error response; `replay` returns the
    object again, or None when it no longer exists (then the request runs anew).
    """
    if key is None:
        return create()
    client = redis_client.get_redis()
    name = _redis_key(team_id, endpoint, key)
    try:
        earlier = _claim(client, name, request_fingerprint)
    except redis.RedisError:
        return error_response(503, "The idempotency store (Redis) is unreachable; retry shortly, or send the "
                              "request without an Idempotency-Key.", type_="server_error",
                              param=HEADER, code="idempotency_unavailable")
    if earlier is None:
        return _finish(client, name, request_fingerprint, create)
    if earlier.get("fingerprint") != request_fingerprint:
        return _conflict(f"The {HEADER} {key!r} was already used with a different request; use a new key "
                         "for a new request.", "idempotency_key_reused")
    if earlier.get("object_id") is None:
        return _conflict(f"A request with the {HEADER} {key!r} is still being processed; retry shortly.",
                         "idempotency_request_in_progress")
    found = replay(earlier["object_id"])
    if found is None:  # e.g. the uploaded file was deleted since: the retry makes it anew
        client.delete(name)
        return run_once(team_id, endpoint, key, request_fingerprint, create=create, replay=replay)
    return found


def _claim(client: redis.Redis, name: str, request_fingerprint: str) -> dict | None:
    """Take the key for this request (None), or return what an earlier request with it left."""
    pending = json.dumps({"fingerprint": request_fingerprint, "object_id": None})
    # SET NX makes two concurrent first attempts race for the key; exactly one of them runs.
    if client.set(name, pending, nx=True, ex=PENDING_TTL_SECONDS):
        return None
    raw = client.get(name)
    if raw is None:  # expired between the two calls
        return _claim(client, name, request_fingerprint)
    return json.loads(raw)


def _finish(client: redis.Redis, name: str, request_fingerprint: str, create: Callable[[], Any]) -> Any:
    """Run the request; remember the object it made, or forget the key when it failed."""
    try:
        result = create()
    except BaseException:
        client.delete(name)
        raise
    if isinstance(result, dict) and "id" in result:
        client.set(name, json.dumps({"fingerprint": request_fingerprint, "object_id": result["id"]}),
                   ex=TTL_SECONDS)
    else:
        client.delete(name)
    return result
