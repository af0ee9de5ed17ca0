"""Artifacts (uploaded datasets, checkpoints, adapters) addressed by key, in the configured store.

Every reader and writer goes through here: a folder on local disk by default, any S3-compatible store
when TUNEBOARD_STORAGE_URL is s3://... Code that needs a real file (training, previews) asks for a local
copy, and a job writes under a local work folder that it then publishes. With the local store both are
the stored files themselves, so nothing is copied. A store that fails (a full disk, lost permissions, an
S3 service that refuses) raises `StoreUnavailable`, whose message names the store and the cause, so an
upload answers 503 and a job fails saying so, never as an internal error. Must not import torch or `workers`.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from app.safe_paths import UnsafePath, inside
from app.settings import Settings
from app.storage.keys import ArtifactMissing, StoredObject, safe_key
from app.storage.local import LocalStore

__all__ = ["ArtifactMissing", "StoreUnavailable", "StoredObject"]

# What an OSError means for a store, in words a user can act on.
_CAUSES = {
    errno.ENOSPC: "no space left on its disk",
    errno.EDQUOT: "its disk quota is exhausted",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted (its permissions or attributes refuse writes)",
    errno.EROFS: "its filesystem is read-only",
    errno.ENOTDIR: "a file stands where one of its folders should be",
    errno.ENOENT: "its folder is missing",
    errno.EIO: "an input/output error on its disk",
}


class StoreUnavailable(Exception):  # named after what the user meets
    """The artifact store failed a read or a write; the message names the store, what was being done, and why."""

    def __init__(self, store: str, doing: str, cause: str):
        super().__init__(f"The artifact store ({store}) failed while {doing}: {cause}.")
        self.store, self.doing, self.cause = store, doing, cause


def describe_cause(exc: BaseException) -> str:
    """The cause of a store failure in a few words (the errno's meaning and the path, or the service's answer)."""
    if isinstance(exc, OSError) and exc.errno in _CAUSES:
        where = f" at {exc.filename}" if exc.filename else ""
        return f"{_CAUSES[exc.errno]}{where}"
    return f"{type(exc).__name__}: {exc}"


def _is_store_error(exc: BaseException) -> bool:
    # boto3 loads only with an S3 store, so its errors are told by module rather than imported.
    return isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in ("botocore", "boto3", "s3transfer")


@contextmanager
def _failures_named(settings: Settings, doing: str):
    """Turn a store's own error (OSError, boto's) into StoreUnavailable; a missing artifact or a refused key stays."""
    try:
        yield
    except (ArtifactMissing, UnsafePath, StoreUnavailable):
        raise
    except Exception as exc:
        if not _is_store_error(exc):
            raise
        raise StoreUnavailable(get_store(settings).describe(), doing, describe_cause(exc)) from exc


def store_failure(settings: Settings, exc: BaseException) -> StoreUnavailable | None:
    """The store failure behind an exception a job ended with, or None when the store is not to blame: a
    StoreUnavailable, or an OSError writing under the store's (or the work) folder, as the trainer's own
    checkpoint writes into the local store raise."""
    if isinstance(exc, StoreUnavailable):
        return exc
    if not isinstance(exc, OSError) or isinstance(exc, ArtifactMissing) or not exc.filename:
        return None
    try:
        Path(os.fsdecode(exc.filename)).resolve().relative_to(_work_root(settings).resolve())
    except (ValueError, TypeError, OSError):
        return None
    return StoreUnavailable(get_store(settings).describe(), "writing a job's files", describe_cause(exc))


class ArtifactStore(Protocol):
    def describe(self) -> str: ...
    def local_path(self, key: str) -> Path | None: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def put_file(self, key: str, source: Path) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def size(self, key: str) -> int: ...
    def iter_chunks(self, key: str, chunk_size: int) -> Iterator[bytes]: ...
    def download(self, key: str, destination: Path) -> None: ...
    def list(self, prefix: str) -> list[StoredObject]: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def ping(self) -> None: ...


@lru_cache(maxsize=8)
def _store(storage_url: str | None, endpoint_url: str | None, region: str | None, artifacts_dir: Path):
    if not storage_url:
        return LocalStore(artifacts_dir)
    from app.storage.s3 import S3Store  # boto3 loads only where an S3 store is configured

    return S3Store(storage_url, endpoint_url=endpoint_url, region=region)


def get_store(settings: Settings) -> ArtifactStore:
    """The store these settings name, one per configuration per process."""
    return _store(settings.storage_url, settings.s3_endpoint_url, settings.s3_region, settings.artifacts_dir)


def is_remote(settings: Settings) -> bool:
    """True when artifacts live outside this machine's disk."""
    return bool(settings.storage_url)


def save_bytes(settings: Settings, key: str, data: bytes) -> None:
    """Store bytes under a key, atomically; StoreUnavailable when the store cannot take them."""
    with _failures_named(settings, f"storing {key}"):
        get_store(settings).put_bytes(key, data)


def save_file(settings: Settings, key: str, source: Path) -> None:
    """Store a local file's content under a key; StoreUnavailable when the store cannot take it."""
    with _failures_named(settings, f"storing {key}"):
        get_store(settings).put_file(key, source)


def read_bytes(settings: Settings, key: str) -> bytes:
    """The content of an artifact; ArtifactMissing when there is none, StoreUnavailable when the store fails."""
    with _failures_named(settings, f"reading {key}"):
        return get_store(settings).get_bytes(key)


def size(settings: Settings, key: str) -> int:
    """Bytes stored under a key; ArtifactMissing when there is none, StoreUnavailable when the store fails."""
    with _failures_named(settings, f"reading {key}"):
        return get_store(settings).size(key)


def iter_chunks(settings: Settings, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
    """An artifact's content piece by piece, so a multi-GB adapter never sits in memory whole."""
    return get_store(settings).iter_chunks(key, chunk_size)


def list_objects(settings: Settings, prefix: str) -> list[StoredObject]:
    """Every artifact under a folder-like prefix; StoreUnavailable when the store fails."""
    with _failures_named(settings, f"listing {prefix}"):
        return get_store(settings).list(prefix)


def delete(settings: Settings, key: str) -> None:
    """Remove an artifact if present."""
    get_store(settings).delete(key)


def delete_prefix(settings: Settings, prefix: str) -> None:
    """Remove every artifact under a folder-like prefix (a job's checkpoints and adapter)."""
    get_store(settings).delete_prefix(prefix)


def ping(settings: Settings) -> None:
    """Raise unless the store can be used (what /readyz reports)."""
    get_store(settings).ping()


def _cache_path(settings: Settings, key: str) -> Path:
    return inside(settings.scratch_dir / "cache", safe_key(key))


def local_file(settings: Settings, key: str) -> Path:
    """A local file holding the artifact: the stored file itself, or a cached download of it.

    Keys are never rewritten with other content (every upload and checkpoint gets a fresh key), so a
    cached copy stays valid."""
    store = get_store(settings)
    path = store.local_path(key)
    if path is not None:
        if not path.is_file():
            raise ArtifactMissing(key)
        return path
    cached = _cache_path(settings, key)
    if not cached.is_file():
        with _failures_named(settings, f"reading {key}"):
            store.download(key, cached)
    return cached


def local_dir(settings: Settings, prefix: str) -> Path:
    """A local folder holding every artifact under prefix (a checkpoint to resume from)."""
    store = get_store(settings)
    path = store.local_path(prefix)
    if path is not None:
        if not path.is_dir():
            raise ArtifactMissing(prefix)
        return path
    with _failures_named(settings, f"reading {prefix}"):
        objects = store.list(prefix)
        if not objects:
            raise ArtifactMissing(prefix)
        root = _cache_path(settings, prefix)
        for item in objects:
            target = _cache_path(settings, item.key)
            if not target.is_file() or target.stat().st_size != item.size:
                store.download(item.key, target)
    return root


def job_dir_key(job_id: str) -> str:
    """The key prefix under which a job's checkpoints and adapter live."""
    return f"jobs/{job_id}"


def _work_root(settings: Settings) -> Path:
    store = get_store(settings)
    return store.root if isinstance(store, LocalStore) else settings.scratch_dir / "work"


def _work_path(settings: Settings, key: str) -> Path:
    return inside(_work_root(settings), safe_key(key))


def work_dir(settings: Settings, key: str) -> Path:
    """The local folder where a job writes what is to be stored under key (with the local store, its final place),
    created and proven writable: StoreUnavailable now, before a model is loaded, rather than at its first checkpoint."""
    path = _work_path(settings, key)
    with _failures_named(settings, f"preparing the folder for {key}"):
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".probe-"):
            pass
    return path


def work_key(settings: Settings, path: Path) -> str:
    """The storage key of a path inside the work folder."""
    return path.resolve().relative_to(_work_root(settings).resolve()).as_posix()


def publish_dir(settings: Settings, path: Path) -> str:
    """Store every file of a work folder under its key (nothing to copy with the local store); returns the key."""
    key = work_key(settings, path)
    store = get_store(settings)
    if store.local_path(key) is not None:
        return key  # the work folder is the store's own folder: already in place
    with _failures_named(settings, f"storing {key}"):
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            store.put_file(f"{key}/{file.relative_to(path).as_posix()}", file)
    return key


def discard_work(settings: Settings, key: str) -> None:
    """Drop the local copies of a job's files (its work folder, a downloaded checkpoint) once they are stored
    elsewhere, so a worker host's disk does not fill with every job it ever ran."""
    if is_remote(settings):
        shutil.rmtree(_work_path(settings, key), ignore_errors=True)
        shutil.rmtree(_cache_path(settings, key), ignore_errors=True)
