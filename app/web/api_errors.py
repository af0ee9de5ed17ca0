"""The OpenAI-style error envelope, `{"error": {"message", "type", "param", "code"}}`, for every API error."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(BaseModel):
    error: ErrorBody


def error_response(status: int, message: str, *, type_: str = "invalid_request_error",
                   param: str | None = None, code: str | None = None) -> JSONResponse:
    """A JSON error in the envelope OpenAI clients expect."""
    body = ErrorEnvelope(error=ErrorBody(message=message, type=type_, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status)


_BACKTICKED = re.compile(r"`(\w+)`")
# What FastAPI says (as a 400) when a body cannot even be decoded.
FASTAPI_BODY_PARSE_ERROR = "There was an error parsing the body"


def validation_param(loc: tuple, message: str = "") -> str:
    """Dotted field path of a pydantic error location, without the 'body' prefix or union branch names.

    A model-level check (e.g. LoraSettings refusing layers_to_transform with a regex target) is located at
    the model; when its message names a field in backticks, the path is completed with that field.
    """
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    # pydantic names union branches (e.g. 'list[str]', 'constrained-int') in the location; they are not fields.
    parts = [p for p in parts if "[" not in p and p not in ("str", "int", "float", "bool")
             and not p.startswith(("constrained-", "function-"))]
    named = _BACKTICKED.findall(message)
    if named and not set(named) & set(parts):
        parts.append(named[0])
    return ".".join(parts)


def describe_validation_error(exc: RequestValidationError) -> tuple[str, str]:
    """The first validation problem as (param, message), e.g. ('lora.r', 'lora.r: must be >= 1')."""
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        # Its location is a character offset, not a field.
        return "", f"The request body is not valid JSON: {first.get('ctx', {}).get('error', 'parse error')}"
    param = validation_param(tuple(first.get("loc", ())), first.get("msg", ""))
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    return param, f"{param}: {message}" if param else message


def document_error_envelope(openapi: dict) -> dict:
    """Make the schema say what a validation error really looks like: FastAPI documents every 422 as its own
    `{"detail": [...]}`, but the handler below answers the envelope."""
    envelope = {"$ref": "#/components/schemas/ErrorEnvelope"}
    for operations in openapi.get("paths", {}).values():
        for operation in operations.values():
            answer = operation.get("responses", {}).get("422") if isinstance(operation, dict) else None
            if answer is not None:
                for media in answer.get("content", {}).values():
                    if media.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                        media["schema"] = dict(envelope)
    schemas = openapi.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's, now unused
        others = {key: value for key, value in schemas.items() if key != name}
        if name in schemas and f"/{name}'" not in str(openapi.get("paths")) + str(others):
            schemas.pop(name)
    return openapi


def _http_message(request: Request, exc: StarletteHTTPException) -> str:
    """Starlette's bare 'Not Found' / 'Method Not Allowed', said with the method and path at fault."""
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404 and exc.detail == "Not Found":
        return f"No API endpoint answers {where}; /docs describes the API."
    if exc.status_code == 405 and exc.detail == "Method Not Allowed":
        return f"{where} is not allowed; allowed: {(exc.headers or {}).get('Allow', 'none')}."
    return str(exc.detail)


def is_api_path(path: str) -> bool:
    """Whether a path belongs to the REST API (JSON errors) rather than the pages (redirects)."""
    return path.startswith("/v1/") or path in ("/openapi.json",)


def install_error_handlers(app: FastAPI) -> None:
    """Answer API errors with the envelope (a crash on a page stays a plain 500)."""
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        param, message = describe_validation_error(exc)
        return error_response(422, message, param=param or None, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400 and exc.detail == FASTAPI_BODY_PARSE_ERROR:
            # A body FastAPI could not decode (not UTF-8, a broken multipart): a validation error like any other
            # malformed body, answered as the schema documents (422), and saying what was wrong.
            return error_response(422, "The request body could not be read: it is not valid UTF-8 JSON, or not "
                                  "a well-formed form for this endpoint.", code="invalid_body")
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        response = error_response(exc.status_code, _http_message(request, exc), code=code,
                                  type_="invalid_request_error" if exc.status_code < 500 else "server_error")
        response.headers.update(exc.headers or {})  # e.g. Allow on a 405
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        # Starlette still logs the traceback; an OpenAI client expects the envelope even for a crash.
        if not is_api_path(request.url.path):
            return PlainTextResponse("Internal Server Error", status_code=500)
        return error_response(500, "The server failed to answer this request; the error is logged.",
                              type_="server_error", code="internal_error")
