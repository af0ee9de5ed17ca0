"""The streamed zip: what arrives piece by piece is a valid archive holding exactly the entries' bytes."""

from __future__ import annotations

import io
import os
import zipfile

from app.storage.zip_stream import stream_zip


def _chunked(data: bytes, size: int):
    return (data[i:i + size] for i in range(0, len(data), size))


def test_streamed_zip_unpacks_to_the_same_bytes():
    weights, config = os.urandom(3_000_001), b'{"r": 8}'
    pieces = list(stream_zip([("adapter_model.safetensors", _chunked(weights, 65536)),
                              ("adapter_config.json", [config])]))
    assert len(pieces) > 40  # sent as the chunks came, not built whole first
    archive = zipfile.ZipFile(io.BytesIO(b"".join(pieces)))
    assert archive.testzip() is None
    assert archive.namelist() == ["adapter_model.safetensors", "adapter_config.json"]
    assert archive.read("adapter_model.safetensors") == weights
    assert archive.read("adapter_config.json") == config


def test_an_empty_entry_is_kept():
    archive = zipfile.ZipFile(io.BytesIO(b"".join(stream_zip([("empty.txt", [])]))))
    assert archive.read("empty.txt") == b""
