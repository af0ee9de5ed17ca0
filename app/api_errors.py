"""The OpenAI-style error envelope, `{"error": {"message", "type", "param", "code"}}`, for every API error."""

from __future__ import annotations

import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException


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


def validation_param(loc: tuple, message: str = "") -> str:
    """Dotted field path of a pydantic error location, without the 'body' prefix or union branch names.

    A model-level check (e.g. LoraSettings refusing layers_to_transform with a regex target) is located at
    the model; when its message names a field in backticks, the path is completed with that field.
    """
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    # pydantic names union branches (e.g. 'list[str]') in the location; they are not fields.
    parts = [p for p in parts if "[" not in p and p not in ("str", "int", "float", "bool")]
    named = _BACKTICKED.findall(message)
    if named and not set(named) & set(parts):
        parts.append(named[0])
    return ".".join(parts)


def describe_validation_error(exc: RequestValidationError) -> tuple[str, str]:
    """The first validation problem as (param, message), e.g. ('lora.r', 'lora.r: must be >= 1')."""
    first = exc.errors()[0]
    param = validation_param(tuple(first.get("loc", ())), first.get("msg", ""))
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    return param, f"{param}: {message}" if param else message


def install_error_handlers(app: FastAPI) -> None:
    """Answer API errors with the envelope; pages keep FastAPI's defaults."""

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        param, message = describe_validation_error(exc)
        return error_response(422, message, param=param or None, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(exc.status_code, str(exc.detail), code=code,
                              type_="invalid_request_error" if exc.status_code < 500 else "server_error")


def install_auth_handlers(app: FastAPI) -> None:
    """Anonymous callers: 401 in the envelope on the API, a redirect to sign in on pages; 403 when refused."""
    from fastapi.responses import HTMLResponse, RedirectResponse

    from app.auth import Forbidden, NotAuthenticated, is_api_path, sign_in_url

    @app.exception_handler(NotAuthenticated)
    async def _anonymous(request: Request, exc: NotAuthenticated):
        if is_api_path(request.url.path) or request.headers.get("HX-Request") == "true":
            response = error_response(401, "Sign in, or send an API token as 'Authorization: Bearer tb_...' "
                                      "(create one on your account page).", type_="invalid_request_error",
                                      code="invalid_api_key")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return RedirectResponse(sign_in_url(request), status_code=303)

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden):
        if is_api_path(request.url.path) or request.headers.get("HX-Request") == "true":
            return error_response(403, exc.message, type_="invalid_request_error", code="forbidden")
        return HTMLResponse(f"<!doctype html><title>Not allowed</title><p>{exc.message}</p>"
                            '<p><a href="/">Back to Tuneboard</a></p>', status_code=403)
