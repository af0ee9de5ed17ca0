"""The account page (API tokens, password, the user's pending invitations) and the team page (members, pending
invitations, new teams).

Tokens are shown once, at creation; only their digests and last four characters are kept. Whatever widens
what a caller can do (the password, joining a team) needs a browser session, not an API token.
Must not import torch or `workers`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import select

from app import redis_client
from app.accounts import invitations, sign_in_limits, users
from app.accounts.auth import SESSION_COOKIE, AdminDep, BrowserDep, PrincipalDep
from app.db import SessionDep, new_session
from app.tables import ApiToken, Membership, User
from app.web.templating import templates

router = APIRouter(include_in_schema=False)


def user_teams(request) -> dict:
    """For the header's team switcher: the signed-in user's teams."""
    principal = getattr(request.state, "principal", None)
    if principal is None or principal.via != "session":
        return {"user_teams": []}
    with new_session() as session:
        return {"user_teams": [team for team, _role in users.memberships(session, principal.user)]}


templates.context_processors.append(user_teams)


def _account(request: Request, session, principal, status_code: int | None = None, **extra) -> HTMLResponse:
    tokens = session.scalars(select(ApiToken).where(ApiToken.user_id == principal.user.id)
                             .order_by(ApiToken.created_at.desc())).all()
    cookie = request.cookies.get(SESSION_COOKIE) if principal.via == "session" else None
    context = {"principal": principal, "tokens": tokens, "teams": users.memberships(session, principal.user),
               "invitations": invitations.pending_for_user(session, principal.user),
               "needs_current_password": not users.may_skip_current_password(session, principal.user, cookie),
               "new_token": None, "errors": {}, "notice": None,
               "welcome": request.query_params.get("welcome") == "1",
               "reset": request.query_params.get("reset") == "1", **extra}
    return templates.TemplateResponse(request, "account.html", context,
                                      status_code=status_code or (422 if context["errors"] else 200))


@router.get("/account", response_class=HTMLResponse)
def account_page(request: Request, session: SessionDep, principal: PrincipalDep):
    """The user's API tokens, password and pending invitations."""
    return _account(request, session, principal)


@router.post("/account/tokens", response_class=HTMLResponse)
def create_token(request: Request, session: SessionDep, principal: PrincipalDep, name: Annotated[str, Form()] = ""):
    """Create a token for the current team and show it once."""
    token, plaintext = users.create_api_token(session, principal.user, principal.team, name)
    return _account(request, session, principal, new_token=plaintext, new_token_name=token.name)


@router.post("/account/tokens/{token_id}/revoke")
def revoke_token(token_id: str, session: SessionDep, principal: PrincipalDep):
    """Revoke one of the user's tokens; it stops working at once."""
    users.revoke_api_token(session, principal.user, token_id)
    return RedirectResponse("/account", status_code=303)


@router.post("/account/password", response_class=HTMLResponse)
def change_password(request: Request, session: SessionDep, principal: BrowserDep,
                    password: Annotated[str, Form()] = "", current_password: Annotated[str, Form()] = "",
                    revoke_tokens: Annotated[bool, Form()] = False):
    """Set a new password (proving the current one), ending the user's other sessions and, if asked, tokens."""
    cookie = request.cookies.get(SESSION_COOKIE)
    attempt = None
    if not users.may_skip_current_password(session, principal.user, cookie):
        # Someone holding a stolen session must not guess the password at full speed either.
        client = redis_client.get_redis()
        try:
            attempt = sign_in_limits.reserve(client, principal.user.email, request.client.host if request.client
                                             else "unknown")
        except sign_in_limits.LimiterUnavailable:
            return _account(request, session, principal, 503, errors={
                "current_password": "cannot check passwords now: the rate limiter (Redis) is unreachable"})
        if attempt.wait_seconds:
            return _account(request, session, principal, 429, errors={
                "current_password": sign_in_limits.wait_message(attempt.wait_seconds)})
    try:
        ended = users.change_password(session, principal.user, password, current_password=current_password,
                                         cookie=cookie, revoke_tokens=revoke_tokens)
    except users.AccountError as exc:
        if attempt is not None and exc.field != "current_password":  # the current password was right
            sign_in_limits.succeeded(redis_client.get_redis(), attempt)
        return _account(request, session, principal, errors={exc.field: exc.message})
    if attempt is not None:
        sign_in_limits.succeeded(redis_client.get_redis(), attempt)
    notice = f"Password changed; {ended} other session{'s' if ended != 1 else ''} signed out"
    notice += " and every API token revoked." if revoke_tokens else "."
    return _account(request, session, principal, notice=notice)


@router.post("/account/invitations/{invitation_id}/accept", response_class=HTMLResponse)
def accept_invitation(request: Request, invitation_id: str, session: SessionDep, principal: BrowserDep):
    """Join the team that invited the user."""
    try:
        team = invitations.accept(session, principal.user, invitation_id)
    except invitations.InvitationPredatesClaim as exc:
        return _account(request, session, principal, 409, errors={exc.field: exc.message})
    except users.AccountError as exc:
        return _account(request, session, principal, 404, errors={exc.field: exc.message})
    return _account(request, session, principal, notice=f"You joined {team.name}; switch to it in the header.")


@router.post("/account/invitations/{invitation_id}/decline", response_class=HTMLResponse)
def decline_invitation(request: Request, invitation_id: str, session: SessionDep, principal: BrowserDep):
    """Turn down an invitation."""
    try:
        team = invitations.decline(session, principal.user, invitation_id)
    except users.AccountError as exc:
        return _account(request, session, principal, 404, errors={exc.field: exc.message})
    return _account(request, session, principal, notice=f"You declined the invitation to {team.name}.")


def _team(request: Request, session, principal, status_code: int | None = None, **extra) -> HTMLResponse:
    members = session.execute(select(User, Membership.role).join(Membership, Membership.user_id == User.id)
                              .where(Membership.team_id == principal.team.id).order_by(User.email)).all()
    context = {"principal": principal, "members": members, "invite_link": None, "invite_pending": None,
               "invited": invitations.pending_for_team(session, principal.team),
               "my_invitations": invitations.pending_for_user(session, principal.user), "errors": {}, **extra}
    return templates.TemplateResponse(request, "team.html", context,
                                      status_code=status_code or (422 if context["errors"] else 200))


@router.get("/team", response_class=HTMLResponse)
def team_page(request: Request, session: SessionDep, principal: PrincipalDep):
    """The current team's members and pending invitations (admins manage them here)."""
    return _team(request, session, principal)


@router.post("/team/invite", response_class=HTMLResponse)
def invite(request: Request, session: SessionDep, principal: AdminDep, email: Annotated[str, Form()] = "",
           role: Annotated[str, Form()] = "member"):
    """Invite an email: a new account gets a one-time sign-in link; an existing one accepts on its account page."""
    try:
        invited = invitations.invite(session, principal.team, email, role, invited_by=principal.user)
    except users.AccountError as exc:
        return _team(request, session, principal, errors={exc.field: exc.message})
    if invited.link is None:
        return _team(request, session, principal, invite_pending=invited.user.email)
    url = str(request.base_url).rstrip("/") + f"/login/link/{invited.link}"
    return _team(request, session, principal, invite_link=url, invited_email=invited.user.email)


@router.post("/team/invitations/{invitation_id}/withdraw")
def withdraw_invitation(request: Request, invitation_id: str, session: SessionDep, principal: AdminDep):
    """Take back a pending invitation (and the sign-in link it carried)."""
    try:
        invitations.withdraw(session, principal.team, invitation_id)
    except users.AccountError as exc:
        return _team(request, session, principal, 404, errors={exc.field: exc.message})
    return RedirectResponse("/team", status_code=303)


def _refusal_status(exc: users.AccountError) -> int:
    # No such member: 404; the last admin: a conflict with the team's state; a bad role: the input.
    return {"user": 404, "members": 409}.get(exc.field, 422)


@router.post("/team/members/{user_id}/role")
def change_role(request: Request, user_id: str, session: SessionDep, principal: AdminDep,
                role: Annotated[str, Form()] = ""):
    """Make a member an admin or a member (the team keeps at least one admin)."""
    try:
        users.change_role(session, principal.team, user_id, role)
    except users.AccountError as exc:
        return _team(request, session, principal, _refusal_status(exc), errors={exc.field: exc.message})
    return RedirectResponse("/team", status_code=303)


@router.post("/team/members/{user_id}/remove")
def remove_member(request: Request, user_id: str, session: SessionDep, principal: AdminDep):
    """Take a user out of the team (their jobs stay with the team; the team keeps at least one admin)."""
    try:
        users.remove_member(session, principal.team, user_id)
    except users.AccountError as exc:
        return _team(request, session, principal, _refusal_status(exc), errors={exc.field: exc.message})
    if user_id == principal.user.id:  # an admin who left: carry on in another of their teams, if any
        if teams := users.memberships(session, principal.user):
            users.switch_team(session, request.cookies.get(SESSION_COOKIE, ""), teams[0][0].id)
        return RedirectResponse("/", status_code=303)
    return RedirectResponse("/team", status_code=303)


@router.post("/teams", response_class=HTMLResponse)
def create_team(request: Request, session: SessionDep, principal: PrincipalDep, name: Annotated[str, Form()] = ""):
    """Create a team with the current user as its admin."""
    try:
        team = users.create_team(session, name)
    except users.AccountError as exc:
        return _team(request, session, principal, errors={"team_name": exc.message})
    users.set_membership(session, principal.user, team, "admin")
    return RedirectResponse("/team", status_code=303)
