"""REST: `POST /v1/chat/completions`, OpenAI's chat completions answered by a base model or a team's adapter.

The `openai` SDK works unchanged: `model` is a base model id or a job's `fine_tuned_model` (or a checkpoint's
`fine_tuned_model_checkpoint`), `stream=True` gives chat.completion.chunk events and `[DONE]`. The request goes
to an inference worker (never computed here), or to a vLLM server that serves its base (`app.inference.vllm`); the
answer's status is decided once the worker has loaded the model and produced its first piece, so a model that
cannot load is an HTTP error the SDK raises, not a broken stream.
Must not import torch or `workers`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Literal

import anyio
import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse
from kombu.exceptions import OperationalError
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

from app.accounts.auth import PrincipalDep
from app.db import new_session
from app.fleet import queue
from app.inference import targets, vllm
from app.inference.replies import ReplyEntry
from app.inference.reply_reader import NoWorker, ReplyReader
from app.settings import get_settings
from app.web.api_errors import ErrorEnvelope, error_response

router = APIRouter(prefix="/v1/chat", tags=["inference"])
DEFAULT_MAX_TOKENS = 512
MAX_MESSAGES = 256
MAX_CONVERSATION_CHARS = 200_000
MAX_STOPS = 4
MAX_STOP_CHARS = 64
# A worker's error code -> the HTTP status the client gets.
ERROR_STATUS = {"model_not_found": 404, "adapter_missing": 404, "no_chat_template": 400,
                "context_length_exceeded": 400, "unsupported": 400, "out_of_memory": 503, "no_worker": 503}


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        """The message's text, its parts joined."""
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI's other options (logprobs, user...) are accepted, unused
    model: str = Field(..., min_length=1, max_length=1024)
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    min_tokens: int = Field(0, ge=0, description="Tuneboard extension (as vLLM's): no end of turn before this many "
                                                 "tokens; at most max_tokens.")
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=1, description="One choice per request (n > 1 is not supported).")
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("messages")
    @classmethod
    def _bounded(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if sum(len(message.text()) for message in messages) > MAX_CONVERSATION_CHARS:
            raise ValueError(f"the conversation is longer than {MAX_CONVERSATION_CHARS:,} characters")
        return messages

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences")
        if any(len(item) > MAX_STOP_CHARS or not item for item in stops):
            raise ValueError(f"each stop sequence must have 1 to {MAX_STOP_CHARS} characters")
        return stops

    def new_tokens(self, limit: int) -> int:
        """The most tokens to generate, within the install's limit (ValueError past it)."""
        asked = self.max_completion_tokens or self.max_tokens
        if asked is not None and asked > limit:
            raise ValueError(f"max_tokens: at most {limit} (TUNEBOARD_INFERENCE_MAX_NEW_TOKENS)")
        return asked or min(DEFAULT_MAX_TOKENS, limit)


def _chunk(request_id: str, created: int, model: str, delta: dict, finish_reason: str | None = None,
           usage: dict | None = None) -> bytes:
    body = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}] if usage is None else [],
            **({"usage": usage} if usage is not None else {})}
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n".encode()


def _usage(end: dict) -> dict:
    return {"prompt_tokens": end["prompt_tokens"], "completion_tokens": end["completion_tokens"],
            "total_tokens": end["prompt_tokens"] + end["completion_tokens"]}


def _timing(end: dict) -> dict:
    """Tuneboard's extension beside `usage`: the reply's speed and what the worker had to load for it."""
    keys = ("tokens_per_second", "first_token_seconds", "seconds", "load_seconds", "base_loaded", "adapter_loaded",
            "base_loads", "adapter_loads")
    return {key: end.get(key) for key in keys}


def _error(entry: ReplyEntry) -> JSONResponse:
    code = entry.data.get("code", "inference_failed")
    return error_response(ERROR_STATUS.get(code, 502), entry.data.get("message", "the inference worker failed"),
                          type_="server_error" if code not in ERROR_STATUS else "invalid_request_error",
                          param="model" if code in ("model_not_found", "adapter_missing") else None, code=code)


async def _send(body: ChatCompletionRequest, principal, max_new_tokens: int) -> tuple[str, targets.Target, dict]:
    settings = get_settings()

    def resolve() -> targets.Target:
        with new_session() as session:
            return targets.resolve(session, principal.team.id, body.model, settings)

    target = await run_in_threadpool(resolve)
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    request = {
        "request_id": request_id, "base_model": target.base_model, "adapter_key": target.adapter_key,
        "messages": [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                     for m in body.messages],
        "generation": {"max_new_tokens": max_new_tokens, "min_new_tokens": min(body.min_tokens, max_new_tokens),
                       "temperature": body.temperature, "top_p": body.top_p,
                       "seed": body.seed, "stop": body.stop or []},
    }
    return request_id, target, request


@router.post("/completions", summary="Create a chat completion",
             responses={400: {"model": ErrorEnvelope}, 404: {"model": ErrorEnvelope}, 422: {"model": ErrorEnvelope},
                        503: {"model": ErrorEnvelope, "description": "No inference worker took the request"}})
async def create_chat_completion(body: ChatCompletionRequest, principal: PrincipalDep):
    """Answer with a base model or one of the team's adapters, streamed (`stream`) or whole."""
    settings = get_settings()
    try:
        max_new_tokens = body.new_tokens(settings.inference_max_new_tokens)
    except ValueError as exc:
        return error_response(422, str(exc), param="max_tokens")
    try:
        request_id, target, request = await _send(body, principal, max_new_tokens)
    except targets.ModelNotFound as exc:
        return error_response(404, str(exc), param="model", code="model_not_found")
    # A base a vLLM server serves is answered there; any other by the inference workers, through Redis.
    server = await vllm.server_for(settings, target.base_model)
    reader = vllm.VllmReply(settings, server, target.adapter_key, request) if server else ReplyReader(settings,
                                                                                                     request_id)
    try:
        await reader.want()
        if server is None:
            await run_in_threadpool(queue.enqueue_generation, request, settings.inference_queue,
                                    settings.inference_wait_seconds)
        entries = reader.entries()
        first = await _first_answer(entries)
    except NoWorker as exc:
        await reader.close()
        return error_response(503, str(exc), type_="server_error", code="no_worker")
    except (redis.RedisError, OperationalError) as exc:  # the queue and the replies both live in Redis
        with anyio.CancelScope(shield=True):
            await reader.client.aclose()
        return error_response(503, f"Redis, which carries chat requests to the workers, did not answer: {exc}",
                              type_="server_error", code="redis_unavailable")
    except BaseException:
        await reader.close()
        raise
    if first.kind == "error":
        await reader.close()
        return _error(first)
    created = int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_stream(reader, entries, first, request_id, created, target.model, include_usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    try:
        return await _whole(entries, first, request_id, created, target.model)
    finally:
        await reader.close()


async def _first_answer(entries: AsyncIterator[ReplyEntry]) -> ReplyEntry:
    """The first entry past `start`: a piece of text, the end, or the error that decides the answer's status."""
    async for entry in entries:
        if entry.kind != "start":
            return entry
    raise NoWorker("the inference worker's reply ended without an answer")


async def _whole(entries, first: ReplyEntry, request_id: str, created: int, model: str) -> JSONResponse:
    pieces: list[str] = []
    entry = first
    while True:
        if entry.kind == "delta":
            pieces.append(entry.data["text"])
        elif entry.kind == "error":
            return _error(entry)
        elif entry.kind == "end":
            break
        try:
            entry = await anext(entries)
        except NoWorker as exc:
            return error_response(503, str(exc), type_="server_error", code="no_worker")
    end = entry.data
    return JSONResponse({
        "id": request_id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(pieces)},
                     "finish_reason": end["finish_reason"], "logprobs": None}],
        "usage": _usage(end), "tuneboard": _timing(end),
    })


async def _stream(reader: ReplyReader, entries, first: ReplyEntry, request_id: str, created: int, model: str,
                  include_usage: bool) -> AsyncIterator[bytes]:
    try:
        yield _chunk(request_id, created, model, {"role": "assistant", "content": ""})
        entry = first
        while True:
            if entry.kind == "delta":
                yield _chunk(request_id, created, model, {"content": entry.data["text"]})
            elif entry.kind == "error":
                yield _stream_error(entry.data.get("message", "the inference worker failed"),
                                    entry.data.get("code", "inference_failed"))
                return
            elif entry.kind == "end":
                end = entry.data
                yield _chunk(request_id, created, model, {}, finish_reason=end["finish_reason"])
                if include_usage:
                    yield _chunk(request_id, created, model, {}, usage={**_usage(end), "tuneboard": _timing(end)})
                yield b"data: [DONE]\n\n"
                return
            try:
                entry = await anext(entries)
            except NoWorker as exc:
                yield _stream_error(str(exc), "no_worker")
                return
            except redis.RedisError as exc:
                yield _stream_error(f"Redis stopped answering mid-reply: {exc}", "redis_unavailable")
                return
    finally:
        # A client that leaves cancels this generator: shielded, the close still tells the worker to stop now,
        # rather than when the request's `wanted` key expires.
        with anyio.CancelScope(shield=True):
            await reader.close()


def _stream_error(message: str, code: str) -> bytes:
    # The openai SDK raises an APIError for an event whose data carries `error`.
    body = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n".encode()

