"""Signing in and out: the password form, one-time sign-in links, and switching teams.

The only pages open to anonymous visitors (with /healthz and static files). Must not import torch or
`workers`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app import accounts, credentials, sign_in_limits, streams
from app.auth import SESSION_COOKIE, PrincipalDep
from app.db import SessionDep
from app.templating import templates

router = APIRouter(include_in_schema=False)


def _safe_next(target: str | None) -> str:
    # Only same-site paths: "//evil.example" or "https://..." would make the login an open redirect.
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def set_session_cookie(request: Request, response: Response, value: str) -> None:
    """The session cookie: HttpOnly, SameSite=Lax, Secure when the page came over HTTPS."""
    response.set_cookie(SESSION_COOKIE, value, max_age=accounts.SESSION_SECONDS, path="/", httponly=True,
                        samesite="lax", secure=request.url.scheme == "https")


def _client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str | None = None):
    """The sign-in form."""
    return templates.TemplateResponse(request, "login.html", {"next": _safe_next(next), "error": None, "email": ""})


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, session: SessionDep, email: Annotated[str, Form()] = "",
          password: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/"):
    """Check the password (rate-limited), then start a session and go where the user was headed."""
    email = accounts.normalise_email(email)
    client, address = streams.get_redis(), _client_address(request)
    context = {"next": _safe_next(next), "email": email}
    if wait := sign_in_limits.blocked_for(client, email, address):
        context["error"] = f"Too many failed sign-ins; try again in {max(1, wait // 60)} min."
        return templates.TemplateResponse(request, "login.html", context, status_code=429)
    user = accounts.find_user(session, email)
    if user is None or not user.is_active or not credentials.password_matches(password,
                                                                              user.password_hash if user else None):
        sign_in_limits.record_failure(client, email, address)
        context["error"] = "Wrong email or password."
        return templates.TemplateResponse(request, "login.html", context, status_code=401)
    try:
        _, cookie = accounts.start_session(session, user)
    except accounts.AccountError as exc:
        context["error"] = exc.message
        return templates.TemplateResponse(request, "login.html", context, status_code=403)
    sign_in_limits.clear(client, email)
    response = RedirectResponse(_safe_next(next), status_code=303)
    set_session_cookie(request, response, cookie)
    return response


@router.get("/login/link/{token}", response_class=HTMLResponse)
def login_with_link(request: Request, token: str, session: SessionDep):
    """Spend a one-time sign-in link (first run, invitation) and sign the browser in."""
    found = accounts.use_sign_in_link(session, token)
    if found is None:
        return templates.TemplateResponse(request, "login.html", {
            "next": "/", "email": "", "error": "This sign-in link is unknown, used or expired; ask an admin for a "
                                               "new one (or run `tuneboard tokens create`)."}, status_code=400)
    user, team = found
    _, cookie = accounts.start_session(session, user, team)
    response = RedirectResponse("/account?welcome=1" if not user.password_hash else "/", status_code=303)
    set_session_cookie(request, response, cookie)
    return response


@router.post("/logout")
def logout(request: Request, session: SessionDep, principal: PrincipalDep):
    """End this browser's session."""
    accounts.end_session(session, request.cookies.get(SESSION_COOKIE, ""))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.post("/session/team")
def switch_team(request: Request, session: SessionDep, principal: PrincipalDep,
                team_id: Annotated[str, Form()], next: Annotated[str, Form()] = "/"):
    """Work in another of the user's teams from now on."""
    accounts.switch_team(session, request.cookies.get(SESSION_COOKIE, ""), team_id)
    return RedirectResponse(_safe_next(next), status_code=303)
