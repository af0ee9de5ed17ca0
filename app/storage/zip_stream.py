"""A zip archive written piece by piece as it is sent, for downloads larger than memory.

Stored (uncompressed) entries: adapter weights do not compress. Must not import torch or `workers`.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator


class _Sink:
    """A write-only stream zipfile writes into; what it wrote is taken out between entries' chunks.

    It has no tell() or seek(), so zipfile writes each entry's sizes after its data (data descriptors)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


def stream_zip(entries: Iterable[tuple[str, Iterable[bytes]]]) -> Iterator[bytes]:
    """The bytes of a zip holding each (name, chunks) entry, produced as the chunks arrive."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED) as archive:
        for name, chunks in entries:
            with archive.open(name, "w", force_zip64=True) as entry:
                for chunk in chunks:
                    entry.write(chunk)
                    yield sink.take()
            yield sink.take()
    yield sink.take()
