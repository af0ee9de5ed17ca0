"""Who is calling: the FastAPI dependencies that turn a bearer token or a session cookie into a
Principal, refuse everyone else, and check CSRF tokens on browser writes.

API paths answer 401 in OpenAI's error envelope; pages redirect to the sign-in page. Objects of
another team are looked up through `team_scoped`, which answers "not found" exactly as for an id that
does not exist. Must not import torch or `workers`.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.accounts import credentials, users
from app.db import new_session
from app.web.api_errors import error_response, is_api_path

SESSION_COOKIE = "tuneboard_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class NotAuthenticated(Exception):
    """No valid token or session; the handler answers 401 (API) or redirects to sign in (pages)."""


class Forbidden(Exception):
    """Signed in, but not allowed: a failed CSRF check, or a non-admin on an admin page."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def sign_in_url(request: Request) -> str:
    """The sign-in page, returning to the current page afterwards."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return f"/login?next={quote(target, safe='')}"


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer ...` header."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


async def _check_csrf(request: Request, principal: users.Principal) -> None:
    # Cookies ride along with cross-site requests; a token the page holds does not.
    sent = request.headers.get(CSRF_HEADER)
    # Only a small urlencoded form (bounded by the body limit) is parsed here. A multipart body is an upload:
    # parsing it for the field would read it whole before the upload's own size limit applies, and the pages
    # send their uploads with the header.
    if sent is None and request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        sent = (await request.form()).get(CSRF_FIELD)
    if not sent or not credentials.same(str(sent), principal.csrf_token or ""):
        raise Forbidden("The form is out of date or was sent from another site (CSRF check failed); "
                        "reload the page and try again.")


def _resolve(token: str | None, cookie: str | None) -> users.Principal | None:
    # A session of its own, closed at once: a long-lived response (an SSE stream) must not hold a
    # database connection for its whole life.
    with new_session() as session:
        if token is not None:
            return users.principal_for_token(session, token)
        return users.principal_for_session(session, cookie) if cookie else None


async def current_principal(request: Request) -> users.Principal:
    """The caller, from a bearer token or a session cookie; NotAuthenticated when neither is valid."""
    token = bearer_token(request)
    principal = await run_in_threadpool(_resolve, token, request.cookies.get(SESSION_COOKIE))
    if principal is None:
        raise NotAuthenticated()
    if token is None and request.method not in SAFE_METHODS:
        await _check_csrf(request, principal)
    request.state.principal = principal  # for the page header (user, team switcher, CSRF token)
    return principal


PrincipalDep = Annotated[users.Principal, Depends(current_principal)]


async def admin_principal(principal: PrincipalDep) -> users.Principal:
    """The caller, who must be an admin of the current team."""
    if not principal.is_admin:
        raise Forbidden("Only team admins can do this.")
    return principal


AdminDep = Annotated[users.Principal, Depends(admin_principal)]


async def browser_principal(principal: PrincipalDep) -> users.Principal:
    """The caller, signed in with a browser session: an API token acts in one team for scripts, and must not
    reach what widens it (the account's password, joining other teams)."""
    if principal.via != "session":
        raise Forbidden("This needs you signed in with a browser; an API token cannot do it.")
    return principal


BrowserDep = Annotated[users.Principal, Depends(browser_principal)]


def team_scoped(session: Session, model, object_id: str, principal: users.Principal):
    """The object with this id if it belongs to the caller's team, else None (as if it did not exist)."""
    found = session.get(model, object_id)
    return found if found is not None and found.team_id == principal.team.id else None


def install_auth_handlers(app: FastAPI) -> None:
    """Anonymous callers: 401 in the envelope on the API, a redirect to sign in on pages; 403 when refused."""
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
