"""Asking the Hugging Face hub whether a model id exists, within a few seconds, and naming near catalog ids.

A mistyped id used to wait for a child process to import the ML stack and time out on the hub (~38 s), then
show a raw `OSError`. Here the web app asks the hub itself (huggingface_hub's `model_info`, a bounded timeout)
and tells a typo (the hub answers 404) from being offline (no answer, or HF_HUB_OFFLINE), and a model already
in the local Hugging Face cache needs no answer at all. Must not import torch or `workers`.
"""

from __future__ import annotations

import difflib
import os
import threading
import time
from typing import Literal

from app.estimator import catalog

HUB_TIMEOUT_SECONDS = 4.0
# A missing or unreachable answer is asked again after this long (the user may fix the network or the hub may
# create the repo); an existing model is remembered for the process's life.
RETRY_AFTER_SECONDS = 60.0
Answer = Literal["exists", "missing", "unreachable"]
_answers: dict[str, tuple[Answer, str, float]] = {}
_lock = threading.Lock()


def in_local_cache(model_id: str) -> bool:
    """Whether the model's config.json is in this host's Hugging Face cache (a worker here can load it offline)."""
    from huggingface_hub import try_to_load_from_cache

    # huggingface_hub reads HF_HUB_CACHE once, at import; a process whose environment names another cache later
    # (a test, an embedding app) would look in the wrong place.
    found = try_to_load_from_cache(model_id, "config.json", cache_dir=os.environ.get("HF_HUB_CACHE") or None)
    return isinstance(found, str)


def _ask_hub(model_id: str) -> tuple[Answer, str]:
    from huggingface_hub import model_info
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    try:
        model_info(model_id, timeout=HUB_TIMEOUT_SECONDS)
    except GatedRepoError:
        return "exists", "gated"  # it exists; the worker needs a token with access
    except RepositoryNotFoundError:
        return "missing", "the Hugging Face hub has no public model with this id"
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 404:
            return "missing", "the Hugging Face hub has no public model with this id"
        return "unreachable", f"huggingface.co answered HTTP {status}"
    except OfflineModeIsEnabled:
        return "unreachable", "HF_HUB_OFFLINE is set, so Tuneboard does not ask the Hugging Face hub"
    except Exception as exc:  # a timeout, DNS, TLS or 5xx answer all mean "cannot tell now"
        return "unreachable", f"huggingface.co did not answer within {HUB_TIMEOUT_SECONDS:g} s ({type(exc).__name__})"
    return "exists", ""


def look_up(model_id: str) -> tuple[Answer, str]:
    """('exists' | 'missing' | 'unreachable', why), asked of the hub at most once a minute per id."""
    now = time.monotonic()
    with _lock:
        known = _answers.get(model_id)
    if known and (known[0] == "exists" or now - known[2] < RETRY_AFTER_SECONDS):
        return known[0], known[1]
    answer, why = _ask_hub(model_id)
    with _lock:
        _answers[model_id] = (answer, why, now)
    return answer, why


def forget(model_id: str) -> None:
    """Ask the hub again next time ("Try again")."""
    with _lock:
        _answers.pop(model_id, None)


def similar_catalog_ids(model_id: str, limit: int = 3) -> list[str]:
    """Catalog ids that look like `model_id` (difflib, case-insensitive; the name part alone counts too)."""
    ids = [entry.id for entry in catalog.entries()]
    typed = model_id.strip().lower()
    scored = []
    for candidate in ids:
        whole = difflib.SequenceMatcher(None, typed, candidate.lower()).ratio()
        name = difflib.SequenceMatcher(None, typed.rsplit("/", 1)[-1], candidate.lower().rsplit("/", 1)[-1]).ratio()
        scored.append((max(whole, name), candidate))
    return [candidate for score, candidate in sorted(scored, reverse=True)[:limit] if score >= 0.75]
