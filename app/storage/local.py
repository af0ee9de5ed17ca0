"""The artifact store on local disk: one folder (the data dir's `artifacts/` by default), keys as paths.

Used by a single machine, or by several that share the folder over a network filesystem.
Must not import torch or `workers`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from app.safe_paths import inside
from app.storage.keys import ArtifactMissing, StoredObject, safe_key


class LocalStore:
    """Artifacts as files under `root`; writes are atomic (a reader never sees half a file)."""

    def __init__(self, root: Path):
        self.root = root

    def describe(self) -> str:
        """Where the artifacts live, for logs and /readyz."""
        return f"folder {self.root}"

    def local_path(self, key: str) -> Path:
        """The file that holds a key: callers may read it in place instead of copying it."""
        return inside(self.root, safe_key(key))

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store bytes under a key, replacing what was there."""
        target = self.local_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)

    def put_file(self, key: str, source: Path) -> None:
        """Store a local file's content under a key."""
        target = self.local_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
        os.close(fd)
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)

    def get_bytes(self, key: str) -> bytes:
        """The content stored under a key; ArtifactMissing when there is none."""
        try:
            return self.local_path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise ArtifactMissing(key) from None

    def size(self, key: str) -> int:
        """Bytes stored under a key; ArtifactMissing when there is none."""
        path = self.local_path(key)
        if not path.is_file():
            raise ArtifactMissing(key)
        return path.stat().st_size

    def iter_chunks(self, key: str, chunk_size: int) -> Iterator[bytes]:
        """The content under a key, piece by piece (for downloads larger than memory)."""
        with self.local_path(key).open("rb") as handle:
            while chunk := handle.read(chunk_size):
                yield chunk

    def download(self, key: str, destination: Path) -> None:
        """Copy a stored file to a local path."""
        source = self.local_path(key)
        if not source.is_file():
            raise ArtifactMissing(key)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)

    def list(self, prefix: str) -> list[StoredObject]:
        """Every object under a folder-like prefix, by key."""
        base = self.local_path(prefix)
        if not base.is_dir():
            return []
        found = [
            StoredObject(path.relative_to(self.root).as_posix(), path.stat().st_size)
            for path in base.rglob("*")
            if path.is_file() and not path.name.startswith(".upload-")
        ]
        return sorted(found, key=lambda item: item.key)

    def delete(self, key: str) -> None:
        """Remove one object if present."""
        self.local_path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under a folder-like prefix."""
        shutil.rmtree(self.local_path(prefix), ignore_errors=True)

    def ping(self) -> None:
        """Raise OSError unless the folder can be written."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK):
            raise OSError(f"artifact folder {self.root} is not writable")
