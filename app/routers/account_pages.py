"""The account page (API tokens, password) and the team page (members, invitations, new teams).

Tokens are shown once, at creation; only their digests and last four characters are kept.
Must not import torch or `workers`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import select

from app import accounts
from app.auth import AdminDep, PrincipalDep
from app.db import SessionDep
from app.models import ApiToken, Membership, User
from app.templating import templates

router = APIRouter(include_in_schema=False)


def _account(request: Request, session, principal, **extra) -> HTMLResponse:
    tokens = session.scalars(select(ApiToken).where(ApiToken.user_id == principal.user.id)
                             .order_by(ApiToken.created_at.desc())).all()
    context = {"principal": principal, "tokens": tokens, "teams": accounts.memberships(session, principal.user),
               "new_token": None, "errors": {}, "welcome": request.query_params.get("welcome") == "1", **extra}
    return templates.TemplateResponse(request, "account.html", context,
                                      status_code=422 if context["errors"] else 200)


@router.get("/account", response_class=HTMLResponse)
def account_page(request: Request, session: SessionDep, principal: PrincipalDep):
    """The user's API tokens and password."""
    return _account(request, session, principal)


@router.post("/account/tokens", response_class=HTMLResponse)
def create_token(request: Request, session: SessionDep, principal: PrincipalDep, name: Annotated[str, Form()] = ""):
    """Create a token for the current team and show it once."""
    token, plaintext = accounts.create_api_token(session, principal.user, principal.team, name)
    return _account(request, session, principal, new_token=plaintext, new_token_name=token.name)


@router.post("/account/tokens/{token_id}/revoke")
def revoke_token(token_id: str, session: SessionDep, principal: PrincipalDep):
    """Revoke one of the user's tokens; it stops working at once."""
    accounts.revoke_api_token(session, principal.user, token_id)
    return RedirectResponse("/account", status_code=303)


@router.post("/account/password", response_class=HTMLResponse)
def change_password(request: Request, session: SessionDep, principal: PrincipalDep,
                    password: Annotated[str, Form()] = ""):
    """Set a new password."""
    try:
        accounts.set_password(session, principal.user, password)
    except accounts.AccountError as exc:
        return _account(request, session, principal, errors={"password": exc.message})
    return _account(request, session, principal, password_changed=True)


def _team(request: Request, session, principal, **extra) -> HTMLResponse:
    members = session.execute(select(User, Membership.role).join(Membership, Membership.user_id == User.id)
                              .where(Membership.team_id == principal.team.id).order_by(User.email)).all()
    context = {"principal": principal, "members": members, "invite_link": None, "errors": {}, **extra}
    return templates.TemplateResponse(request, "team.html", context, status_code=422 if context["errors"] else 200)


@router.get("/team", response_class=HTMLResponse)
def team_page(request: Request, session: SessionDep, principal: PrincipalDep):
    """The current team's members (admins manage them here)."""
    return _team(request, session, principal)


@router.post("/team/invite", response_class=HTMLResponse)
def invite(request: Request, session: SessionDep, principal: AdminDep, email: Annotated[str, Form()] = "",
           role: Annotated[str, Form()] = "member"):
    """Add a user (new or existing) to the team and make a one-time sign-in link for them."""
    try:
        user = accounts.find_user(session, email) or accounts.create_user(session, email)
        accounts.set_membership(session, user, principal.team, role)
    except accounts.AccountError as exc:
        return _team(request, session, principal, errors={exc.field: exc.message})
    link = accounts.create_sign_in_link(session, user, principal.team)
    url = str(request.base_url).rstrip("/") + f"/login/link/{link}"
    return _team(request, session, principal, invite_link=url, invited=user.email)


@router.post("/team/members/{user_id}/role")
def change_role(user_id: str, session: SessionDep, principal: AdminDep, role: Annotated[str, Form()]):
    """Make a member an admin or a member."""
    user = session.get(User, user_id)
    if user is not None and accounts.role_in(session, user, principal.team.id) is not None:
        accounts.set_membership(session, user, principal.team, role)
    return RedirectResponse("/team", status_code=303)


@router.post("/team/members/{user_id}/remove")
def remove_member(user_id: str, session: SessionDep, principal: AdminDep):
    """Take a user out of the team (their jobs stay with the team)."""
    membership = session.get(Membership, (user_id, principal.team.id))
    if membership is not None and user_id != principal.user.id:
        session.delete(membership)
        session.commit()
    return RedirectResponse("/team", status_code=303)


@router.post("/teams", response_class=HTMLResponse)
def create_team(request: Request, session: SessionDep, principal: PrincipalDep, name: Annotated[str, Form()] = ""):
    """Create a team with the current user as its admin."""
    try:
        team = accounts.create_team(session, name)
    except accounts.AccountError as exc:
        return _team(request, session, principal, errors={"team_name": exc.message})
    accounts.set_membership(session, principal.user, team, "admin")
    return RedirectResponse("/team", status_code=303)
