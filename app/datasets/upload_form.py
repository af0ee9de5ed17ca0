"""Reading a multipart upload under the upload size limit, file parts streamed to disk as they arrive.

Starlette's own form parsing spools a file of any size and keeps up to a megabyte per text field (and a
thousand of them); here the body is counted while it is read, a declared Content-Length over the limit is
refused before reading, text fields share a small budget, and each file part goes to a named temporary
file in the scratch folder (whose path the artifact store can take). Must not import torch or `workers`.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

# Room for the multipart framing and the form's text fields beside the file itself.
FORM_FIELDS_BYTES = 1024 * 1024


class UploadTooLarge(ValueError):
    """The upload exceeds the configured size limit; the message names it."""


def too_large(limit: int) -> UploadTooLarge:
    """The error for a body or file over `limit` bytes."""
    return UploadTooLarge(f"the upload is larger than the limit of {limit:,} bytes ({limit / 1024**2:g} MiB, "
                          "TUNEBOARD_MAX_UPLOAD_BYTES)")


class _StreamingParser(MultiPartParser):
    """Starlette's parser, with file parts in named files under `directory` and a budget for text fields."""

    def __init__(self, request: Request, stream: AsyncIterator[bytes], directory: Path, file_limit: int):
        super().__init__(request.headers, stream, max_files=1, max_fields=1000, max_part_size=FORM_FIELDS_BYTES)
        self.directory = directory
        self.file_limit = file_limit
        self.field_bytes = 0

    def on_headers_finished(self) -> None:
        super().on_headers_finished()
        upload = self._current_part.file
        if upload is not None:
            upload.file.close()
            upload.file = tempfile.NamedTemporaryFile(dir=self.directory, prefix=".upload-")
            self._files_to_close_on_error.append(upload.file)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current_part.file is None:
            self.field_bytes += end - start
            if self.field_bytes > FORM_FIELDS_BYTES:
                raise UploadTooLarge(f"the form's text fields are larger than {FORM_FIELDS_BYTES:,} bytes")
        super().on_part_data(data, start, end)


async def read_upload_form(request: Request, limit: int, directory: Path) -> FormData:
    """The form of a multipart request whose body stays under `limit` plus room for fields; UploadTooLarge
    otherwise. Close the form (`await form.close()`) to delete its files."""
    if getattr(request, "_form", None) is not None:
        # A CSRF check without its header already read the body the unbounded way; pages send the header.
        raise MultiPartException("send the X-CSRF-Token header with an upload")
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise MultiPartException("the body must be multipart/form-data with the file in a part")
    ceiling = limit + FORM_FIELDS_BYTES
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > ceiling:
        raise too_large(limit)

    async def counted() -> AsyncIterator[bytes]:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > ceiling:
                raise too_large(limit)
            yield chunk

    directory.mkdir(parents=True, exist_ok=True)
    form = await _StreamingParser(request, counted(), directory, limit).parse()
    for value in form.values():
        if isinstance(value, UploadFile) and (value.size or 0) > limit:
            await form.close()
            raise too_large(limit)
    return form
