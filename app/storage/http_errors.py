"""How a failing artifact store reaches an HTTP caller: 503 naming the store and the cause, never a bare 500."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

from app.storage.artifacts import StoreUnavailable
from app.web.api_errors import error_response, is_api_path

logger = logging.getLogger(__name__)


def install_store_error_handler(app: FastAPI) -> None:
    """Answer StoreUnavailable with 503: the envelope on the API, plain text on pages."""

    @app.exception_handler(StoreUnavailable)
    async def _store_unavailable(request: Request, exc: StoreUnavailable):
        # Any route that reads or writes the artifact store (a download, a preview): the store's name and the
        # cause tell an operator what to fix, where a bare 500 tells nothing.
        logger.warning("%s %s: %s", request.method, request.url.path, exc)
        if not is_api_path(request.url.path):
            return PlainTextResponse(str(exc), status_code=503)
        return error_response(503, str(exc), type_="server_error", code="artifact_store_unavailable")
