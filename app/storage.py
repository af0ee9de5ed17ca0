"""Artifacts (uploaded datasets, checkpoints, adapters) addressed by key under one storage root.

The local data directory for now; every reader and writer goes through these functions so another
backend can replace them without touching callers. Must not import torch or `workers`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from app.settings import Settings


def _safe_key(key: str) -> str:
    parts = [p for p in key.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"invalid storage key {key!r}")
    return "/".join(parts)


def path_for(settings: Settings, key: str) -> Path:
    """Where an artifact key lives on local disk."""
    return settings.artifacts_dir / _safe_key(key)


def save_bytes(settings: Settings, key: str, data: bytes) -> Path:
    """Write an artifact atomically (a reader never sees half a file)."""
    target = path_for(settings, key)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, target)
    return target


def read_bytes(settings: Settings, key: str) -> bytes:
    """The content of an artifact."""
    return path_for(settings, key).read_bytes()


def delete(settings: Settings, key: str) -> None:
    """Remove an artifact if present."""
    path_for(settings, key).unlink(missing_ok=True)


def job_dir_key(job_id: str) -> str:
    """The key prefix under which a job's checkpoints and adapter live."""
    return f"jobs/{job_id}"


def relative_key(settings: Settings, path: Path) -> str:
    """The storage key of a path inside the artifacts directory."""
    return path.resolve().relative_to(settings.artifacts_dir.resolve()).as_posix()
