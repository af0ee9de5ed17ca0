"""Signing in and out: the password form (throttled, the same cost for every email), one-time sign-in links,
and switching teams.

The only pages open to anonymous visitors (with /healthz and static files). Must not import torch or
`workers`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app import redis_client
from app.accounts import credentials, invitations, sign_in_limits, users
from app.accounts.auth import SESSION_COOKIE, BrowserDep, Forbidden, PrincipalDep
from app.db import SessionDep
from app.web.templating import templates

router = APIRouter(include_in_schema=False)
LOST_LINK_ADVICE = ("ask an admin of your team to invite you again, or an operator to run "
                    "`tuneboard sign-in-link --user EMAIL` on the server")
RETRY_LATER_SECONDS = 30


def _safe_next(target: str | None) -> str:
    # Only same-site paths: "//evil.example" or "https://..." would make the login an open redirect.
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def set_session_cookie(request: Request, response: Response, value: str) -> None:
    """The session cookie: HttpOnly, SameSite=Lax, Secure when the page came over HTTPS (as seen by a trusted
    proxy, through the proxy-headers middleware)."""
    response.set_cookie(SESSION_COOKIE, value, max_age=users.SESSION_SECONDS, path="/", httponly=True,
                        samesite="lax", secure=request.url.scheme == "https")


def _client_address(request: Request) -> str:
    # The peer, or what a trusted proxy said it was: the middleware believes X-Forwarded-For from those only.
    return request.client.host if request.client else "unknown"


def _login_page(request: Request, context: dict, status_code: int, **headers: str) -> HTMLResponse:
    return templates.TemplateResponse(request, "login.html", {"next": "/", "email": "", "error": None, **context},
                                      status_code=status_code, headers=headers or None)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str | None = None):
    """The sign-in form."""
    return _login_page(request, {"next": _safe_next(next)}, 200)


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, session: SessionDep, email: Annotated[str, Form()] = "",
          password: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/"):
    """Check the password (throttled), then start a session and go where the user was headed."""
    email = users.normalise_email(email)
    client = redis_client.get_redis()
    context = {"next": _safe_next(next), "email": email}
    try:
        attempt = sign_in_limits.reserve(client, email, _client_address(request))
    except sign_in_limits.LimiterUnavailable:
        # Unthrottled guessing is worse than a short wait: refuse, and say why.
        context["error"] = (f"Sign-in is paused: its rate limiter (Redis) cannot be reached. Try again in "
                            f"{RETRY_LATER_SECONDS} s.")
        return _login_page(request, context, 503, **{"Retry-After": str(RETRY_LATER_SECONDS)})
    if attempt.wait_seconds:
        context["error"] = sign_in_limits.wait_message(attempt.wait_seconds)
        return _login_page(request, context, 429, **{"Retry-After": str(attempt.wait_seconds)})
    user = users.find_user(session, email)
    # One argon2 verification whatever the email: a stand-in hash for unknown or password-less accounts.
    matches = credentials.password_matches(password, user.password_hash if user else None)
    if user is None or not user.is_active or not matches:
        context["error"] = "Wrong email or password."
        return _login_page(request, context, 401)
    sign_in_limits.succeeded(client, attempt)
    try:
        _, cookie = users.start_session(session, user)
    except users.AccountError as exc:
        return _no_team_yet(request, session, user, context, exc.message)
    response = RedirectResponse(_safe_next(next), status_code=303)
    set_session_cookie(request, response, cookie)
    return response


def _no_team_yet(request: Request, session, user, context: dict, message: str) -> HTMLResponse:
    """The password was right but the user is in no team: offer their oldest pending invitation, through a
    one-time ticket minted at their own request (they have just proved their password)."""
    pending = invitations.pending_for_user(session, user)
    if not pending:
        context["error"] = message
        return _login_page(request, context, 403)
    invitation, team = pending[0]
    context.update(invitation_team=team.name, invitation_role=invitation.role,
                   ticket=users.create_sign_in_link(session, user, team))
    return _login_page(request, context, 200)


@router.post("/login/invitation", response_class=HTMLResponse)
def answer_invitation_at_sign_in(request: Request, session: SessionDep, ticket: Annotated[str, Form()] = "",
                                 decision: Annotated[str, Form()] = "accept"):
    """For a user in no team: accept (and sign in) or decline the offered invitation, with their one-time ticket."""
    found = users.use_sign_in_link(session, ticket)
    if found is None:
        return _link_refused(request)
    user, team = found
    if decision != "accept":
        for invitation, invited_to in invitations.pending_for_user(session, user):
            if invited_to.id == team.id:
                invitations.decline(session, user, invitation.id)
        return _login_page(request, {"email": user.email, "error": f"You declined the invitation to {team.name}."},
                           200)
    return _sign_in_by_link(request, session, user, team)


def _link_refused(request: Request) -> HTMLResponse:
    return _login_page(request, {"error": f"This sign-in link is unknown, used or expired; {LOST_LINK_ADVICE}."},
                       400)


def _sign_in_by_link(request: Request, session, user, team) -> Response:
    invitations.accept_by_link(session, user, team)  # following an invitation's link is accepting it
    try:
        _, cookie = users.start_session(session, user, team, from_link=True)
    except users.AccountError as exc:  # the invitation was withdrawn meanwhile
        return _login_page(request, {"email": user.email, "error": exc.message}, 403)
    # Without a password yet: set one. With one (an operator's link for a forgotten password): may reset it.
    response = RedirectResponse("/account?welcome=1" if not user.password_hash else "/account?reset=1",
                                status_code=303)
    set_session_cookie(request, response, cookie)
    return response


@router.get("/login/link/{token}", response_class=HTMLResponse)
def login_with_link(request: Request, token: str, session: SessionDep):
    """Spend a one-time sign-in link (first run, a new account's invitation, an operator's link) and sign in."""
    found = users.use_sign_in_link(session, token)
    if found is None:
        return _link_refused(request)
    user, team = found
    return _sign_in_by_link(request, session, user, team)


@router.post("/logout")
def logout(request: Request, session: SessionDep, principal: PrincipalDep):
    """End this browser's session."""
    users.end_session(session, request.cookies.get(SESSION_COOKIE, ""))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.post("/session/team")
def switch_team(request: Request, session: SessionDep, principal: BrowserDep,
                team_id: Annotated[str, Form()], next: Annotated[str, Form()] = "/"):
    """Work in another of the user's teams from now on (a team that only invited them is refused)."""
    if not users.switch_team(session, request.cookies.get(SESSION_COOKIE, ""), team_id):
        raise Forbidden("You are not a member of that team. If it invited you, accept the invitation on your "
                        "account page first.")
    return RedirectResponse(_safe_next(next), status_code=303)
