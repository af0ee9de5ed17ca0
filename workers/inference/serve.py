"""A chat completion request on an inference worker: fetch its adapter, prepare the engine, stream the reply.

The request (sent by `app.inference.requests`) names a base model and, for a fine-tuned model, the adapter's
folder in the artifact store. The reply goes to the request's Redis stream (`app.inference.replies`): `start` once
this worker took it, `delta`s, then `end` or `error`. Nothing runs for a client that is gone: a request whose
client left while it waited is dropped unread, and a generation stops within a second of its client leaving. A
heartbeat key says this worker is still on the request (loading a large base can take minutes), so the web side
can tell a slow worker from a dead one.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

from app import redis_client
from app.inference import replies
from app.settings import get_settings
from app.storage import artifacts
from workers.inference.engine import InferenceEngine
from workers.inference.generation import GenerationSettings, InferenceFailure, generate
from workers.training.contract import TrainingFailure

log = logging.getLogger(__name__)

# How often a generation asks whether its client still listens (one Redis EXISTS).
WANTED_CHECK_SECONDS = 0.5
HEARTBEAT_SECONDS = 2.0

_engine: InferenceEngine | None = None
_engine_made = threading.Lock()


def engine() -> InferenceEngine:
    """This process's engine (made on first use)."""
    global _engine
    with _engine_made:
        if _engine is None:
            settings = get_settings()
            _engine = InferenceEngine(settings.data_dir, max_adapters=settings.inference_max_adapters)
        return _engine


def adapter_name(key: str) -> str:
    """A PEFT adapter name for a stored adapter folder: unique per key, and free of the dots PEFT cannot take."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", key)


class _Heartbeat(threading.Thread):
    """Keeps the request's `alive` key up while this worker is on it."""

    def __init__(self, client: Any, request_id: str):
        super().__init__(name=f"heartbeat-{request_id}", daemon=True)
        self.client, self.request_id, self.done = client, request_id, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                replies.mark_alive(self.client, self.request_id)
            except Exception:  # Redis away: the reply cannot reach the client either; the generation's check stops it
                log.warning("inference heartbeat of %s failed", self.request_id, exc_info=True)
            self.done.wait(HEARTBEAT_SECONDS)


class _Listener:
    """Whether the client still waits, asked of Redis at most every WANTED_CHECK_SECONDS."""

    def __init__(self, client: Any, request_id: str):
        self.client, self.request_id = client, request_id
        self.checked, self.wanted = 0.0, True

    def gone(self) -> bool:
        now = time.monotonic()
        if self.wanted and now - self.checked >= WANTED_CHECK_SECONDS:
            self.checked = now
            try:
                self.wanted = replies.is_wanted(self.client, self.request_id)
            except Exception:
                self.wanted = False
        return not self.wanted


def serve(request: dict[str, Any], worker: str) -> str:
    """Answer one chat completion request; returns how it ended ("end", "error", "abandoned")."""
    client = redis_client.get_redis()
    request_id = request["request_id"]
    if not replies.is_wanted(client, request_id):
        log.info("inference request %s: its client left before a worker took it; dropped", request_id)
        return "abandoned"
    heartbeat = _Heartbeat(client, request_id)
    heartbeat.start()
    try:
        return _serve(client, request, request_id, worker)
    finally:
        heartbeat.done.set()
        replies.clear_alive(client, request_id)


def _serve(client: Any, request: dict[str, Any], request_id: str, worker: str) -> str:
    listener = _Listener(client, request_id)
    current = engine()
    with current.lock:
        needs_base = current.base_model != request["base_model"]
        replies.append(client, request_id, "start", {"worker": worker, "loading_base": needs_base})
        try:
            adapter = None
            if key := request.get("adapter_key"):
                adapter = (adapter_name(key), artifacts.local_dir(get_settings(), key))
            loaded = current.prepare(request["base_model"], adapter)
            settings = GenerationSettings(**request["generation"])
            messages = request["messages"]

            def on_text(text: str) -> None:
                replies.append(client, request_id, "delta", {"text": text})

            result = generate(current, messages, settings, use_adapter=adapter is not None, on_text=on_text,
                              should_stop=listener.gone)
        except InferenceFailure as failure:
            replies.append(client, request_id, "error", {"code": failure.code, "message": failure.message})
            return "error"
        except TrainingFailure as failure:  # the base model's loading says why it cannot load, as for training
            replies.append(client, request_id, "error", {"code": failure.code, "message": failure.reason})
            return "error"
        except artifacts.ArtifactMissing:
            replies.append(client, request_id, "error", {"code": "adapter_missing", "message":
                           "the adapter's files are not in the artifact store any more"})
            return "error"
        except Exception as exc:  # the client gets one line; the worker log keeps the traceback
            log.exception("inference request %s failed", request_id)
            replies.append(client, request_id, "error", {"code": "inference_failed",
                                                         "message": f"{type(exc).__name__}: {exc}"[:500]})
            return "error"
    if result.finish_reason == "cancelled":
        log.info("inference request %s: the client left after %d tokens; stopped", request_id,
                 result.completion_tokens)
        return "abandoned"
    replies.append(client, request_id, "end", {
        "finish_reason": result.finish_reason, "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens, "first_token_seconds": result.first_token_seconds,
        "seconds": result.seconds, "tokens_per_second": result.tokens_per_second,
        "load_seconds": loaded.seconds, "base_loaded": loaded.base_loaded, "adapter_loaded": loaded.adapter_loaded,
        "base_loads": current.stats.base_loads, "adapter_loads": current.stats.adapter_loads,
    })
    return "end"
