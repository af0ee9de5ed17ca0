"""Chat completions answered by vLLM servers: a bigger fleet's inference, with the team's adapters loaded at run time.

An admin lists vLLM OpenAI-compatible servers in TUNEBOARD_VLLM_URLS, each started with `--enable-lora` and
`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`. Each serves one base model; which one is asked of the server itself
(`GET /v1/models`: the entry without a `parent`), at most every `DISCOVERY_SECONDS`. A request for that base, or for
a team's adapter on it, goes there instead of to the inference queue. An adapter is copied from the artifact store
into TUNEBOARD_VLLM_ADAPTER_DIR (a folder the server reads too, at TUNEBOARD_VLLM_ADAPTER_DIR_ON_SERVER) and loaded
once with `POST /v1/load_lora_adapter` under a name derived from its storage key; vLLM then keeps up to its
`--max-loras` adapters on the GPU and batches requests for different ones together. A server restarted since
forgets its adapters: a 404 for one reloads it and asks again, once.

The server's SSE events are turned into the entries an inference worker writes (`ReplyEntry`), so the API answers
alike whichever side generated. Must not import torch or `workers`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx

from app.inference.replies import ReplyEntry
from app.inference.reply_reader import NoWorker
from app.settings import Settings
from app.storage import artifacts

log = logging.getLogger(__name__)

DISCOVERY_SECONDS = 30.0
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# Connecting is quick or the server is down; a reply may stream for minutes, so reads wait long.
TIMEOUT = httpx.Timeout(connect=5.0, read=600.0, write=30.0, pool=10.0)


@dataclass
class _Server:
    url: str
    bases: frozenset[str] = frozenset()
    asked_at: float = 0.0
    adapters: set[str] = field(default_factory=set)  # loaded by this process or seen in its model list


_servers: dict[str, _Server] = {}


def adapter_name(adapter_key: str) -> str:
    """The name an adapter is loaded under in vLLM: stable for a storage key, safe in a path and a model id."""
    return "tb-" + hashlib.sha256(adapter_key.encode()).hexdigest()[:24]


def _headers(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.vllm_api_key}"} if settings.vllm_api_key else {}


async def _discover(client: httpx.AsyncClient, settings: Settings, server: _Server) -> None:
    try:
        response = await client.get(f"{server.url}/v1/models", headers=_headers(settings), timeout=5.0)
        response.raise_for_status()
        models = response.json().get("data", [])
    except (httpx.HTTPError, ValueError) as exc:
        log.warning("vLLM server %s did not list its models (%s); not routing to it for %.0f s", server.url, exc,
                    DISCOVERY_SECONDS)
        server.bases, server.asked_at = frozenset(), time.monotonic()
        return
    server.bases = frozenset(m["id"] for m in models if not m.get("parent"))
    server.adapters = {m["id"] for m in models if m.get("parent")}
    server.asked_at = time.monotonic()


async def server_for(settings: Settings, base_model: str) -> _Server | None:
    """The vLLM server that serves this base model, or None (the inference workers answer)."""
    servers = [_servers.setdefault(url, _Server(url)) for url in settings.vllm_url_list]
    stale = [server for server in servers if time.monotonic() - server.asked_at > DISCOVERY_SECONDS]
    if stale:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            for server in stale:
                await _discover(client, settings, server)
    return next((server for server in servers if base_model in server.bases), None)


def _materialise(settings: Settings, adapter_key: str, name: str) -> str:
    """Copy the adapter's two files where the vLLM server reads them (once); returns the folder as it sees it."""
    target = Path(settings.vllm_adapter_folder) / name
    if not all((target / file).is_file() for file in ADAPTER_FILES):
        source = artifacts.local_dir(settings, adapter_key)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
        try:
            for file in ADAPTER_FILES:
                shutil.copyfile(source / file, staging / file)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)  # whole or absent: the server never reads half an adapter
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return f"{settings.vllm_adapter_folder_on_server.rstrip('/')}/{name}"


class VllmReply:
    """One chat completion on a vLLM server, read as the entries an inference worker would have written."""

    def __init__(self, settings: Settings, server: _Server, adapter_key: str | None, request: dict):
        self.settings, self.server, self.adapter_key, self.request = settings, server, adapter_key, request
        self.client = httpx.AsyncClient(timeout=TIMEOUT, headers=_headers(settings))
        self.model = adapter_name(adapter_key) if adapter_key else request["base_model"]
        self._response: httpx.Response | None = None

    async def want(self) -> None:
        """Make sure the server has the adapter loaded (nothing to do for the base)."""
        if self.adapter_key and self.model not in self.server.adapters:
            await self._load()

    async def _load(self) -> None:
        path = await anyio.to_thread.run_sync(_materialise, self.settings, self.adapter_key, self.model)
        try:
            response = await self.client.post(f"{self.server.url}/v1/load_lora_adapter",
                                              json={"lora_name": self.model, "lora_path": path})
        except httpx.HTTPError as exc:
            raise NoWorker(f"the vLLM server at {self.server.url} did not answer: {exc}") from exc
        # vLLM answers 400 for a name it already holds: loaded by another web process, which is what we want.
        if response.status_code >= 400 and "already" not in response.text:
            raise NoWorker(f"the vLLM server at {self.server.url} refused to load the adapter: "
                           f"{response.status_code} {response.text[:300]}")
        self.server.adapters.add(self.model)
        log.info("vLLM %s: loaded adapter %s from %s", self.server.url, self.model, path)

    def _body(self) -> dict:
        generation = self.request["generation"]
        body = {"model": self.model, "messages": self.request["messages"], "stream": True,
                "stream_options": {"include_usage": True}, "max_tokens": generation["max_new_tokens"],
                "temperature": generation["temperature"], "top_p": generation["top_p"]}
        if generation.get("min_new_tokens"):
            body["min_tokens"] = generation["min_new_tokens"]
        if generation.get("seed") is not None:
            body["seed"] = generation["seed"]
        if generation.get("stop"):
            body["stop"] = generation["stop"]
        return body

    async def _open(self) -> httpx.Response:
        response = await self._send()
        if response.status_code == 404 and self.adapter_key:
            await response.aclose()  # restarted since it loaded the adapter: load it again, ask once more
            self.server.adapters.discard(self.model)
            await self._load()
            response = await self._send()
        return response

    async def _send(self) -> httpx.Response:
        request = self.client.build_request("POST", f"{self.server.url}/v1/chat/completions", json=self._body())
        try:
            return await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise NoWorker(f"the vLLM server at {self.server.url} did not answer: {exc}") from exc

    async def entries(self) -> AsyncIterator[ReplyEntry]:
        """start, the reply's deltas, then end (with usage and timing) or error."""
        started = time.perf_counter()
        response = self._response = await self._open()
        yield ReplyEntry("0", "start", {"backend": "vllm", "server": self.server.url})
        if response.status_code != 200:
            text = (await response.aread()).decode(errors="replace")
            yield ReplyEntry("1", "error", _error_data(response.status_code, text))
            return
        first_token: float | None = None
        finish_reason, usage, position = "stop", None, 1
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                yield ReplyEntry(str(position), "error", {"code": "inference_failed",
                                                          "message": str(chunk["error"].get("message", chunk))})
                return
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    first_token = first_token if first_token is not None else time.perf_counter() - started
                    position += 1
                    yield ReplyEntry(str(position), "delta", {"text": text})
                finish_reason = choice.get("finish_reason") or finish_reason
        seconds = time.perf_counter() - started
        completion = (usage or {}).get("completion_tokens", 0)
        span = seconds - (first_token or 0.0)
        yield ReplyEntry(str(position + 1), "end", {
            "finish_reason": finish_reason, "prompt_tokens": (usage or {}).get("prompt_tokens", 0),
            "completion_tokens": completion, "seconds": seconds, "first_token_seconds": first_token,
            "tokens_per_second": (completion - 1) / span if completion > 1 and span > 0 else None,
            "load_seconds": None, "base_loaded": False, "adapter_loaded": False, "backend": "vllm"})

    async def close(self) -> None:
        """Stop reading (a client that left ends the server's generation as its connection closes)."""
        if self._response is not None:
            await self._response.aclose()
        await self.client.aclose()


def _error_data(status: int, text: str) -> dict:
    try:
        body = json.loads(text)
        message = body.get("message") or body.get("error", {}).get("message") or text
    except (ValueError, AttributeError):
        message = text
    message = f"the vLLM server answered {status}: {str(message)[:500]}"
    if status == 400 and "context length" in text.lower():
        return {"code": "context_length_exceeded", "message": message}
    if status == 404:
        return {"code": "model_not_found", "message": message}
    return {"code": "unsupported" if status == 400 else "inference_failed", "message": message}
