"""`tuneboard tokens create` and `tuneboard sign-in-link`, and the first admin's one-time link that `up` and
`web` print on a fresh install. Must not import torch or `workers`.
"""

from __future__ import annotations

import argparse
import sys

from app.cli.common import fail, prepare_database
from app.settings import get_settings


def first_run_link(base_url: str) -> str | None:
    """On an install with no users: create the admin and return a one-time sign-in URL for them."""
    from app.accounts import users
    from app.db import new_session

    with new_session() as session:
        created = users.ensure_first_admin(session)
        if created is None:
            return None
        user, team = created
        return f"{base_url}/login/link/{users.create_sign_in_link(session, user, team)}"


def cmd_tokens_create(args: argparse.Namespace) -> int:
    """Print a new API token for a user (creating the first admin on a fresh install)."""
    from app.accounts import users
    from app.db import new_session
    from app.tables import Team

    if problem := prepare_database(get_settings()):
        return fail(problem)
    with new_session() as session:
        users.ensure_first_admin(session, args.user)
        user = users.find_user(session, args.user)
        if user is None:
            return fail(f"no user {args.user}; invite them from the Team page first")
        teams = users.memberships(session, user)
        team = next((t for t, _ in teams if args.team is None or t.name == args.team), None)
        if team is None:
            names = ", ".join(t.name for t, _ in teams) or "none"
            return fail(f"{args.user} is not in team {args.team!r} (their teams: {names})")
        _, plaintext = users.create_api_token(session, user, session.get(Team, team.id), args.name)
    print(plaintext)
    return 0


def cmd_sign_in_link(args: argparse.Namespace) -> int:
    """Print a one-time browser sign-in link for a user (a lost invitation link or a forgotten password)."""
    from app.accounts import invitations, users
    from app.db import new_session

    settings = get_settings()
    if problem := prepare_database(settings):
        return fail(problem)
    with new_session() as session:
        user = users.find_user(session, args.user)
        if user is None:
            return fail(f"no user {args.user}; invite them from the Team page first")
        # Their teams first, then the teams that invited them: following the link accepts that invitation.
        teams = [team for team, _ in users.memberships(session, user)]
        teams += [team for _, team in invitations.pending_for_user(session, user)]
        team = next((t for t in teams if args.team is None or t.name == args.team), None)
        if team is None:
            names = ", ".join(t.name for t in teams) or "none"
            return fail(f"{args.user} is neither in nor invited to team {args.team!r} (their teams: {names})")
        token = users.create_sign_in_link(session, user, team)
    base = (args.url or f"http://{settings.host}:{settings.port}").rstrip("/")
    print(f"{base}/login/link/{token}")
    print(f"One-time link for {user.email} in {team.name}, valid for a day; it replaces any earlier link. Signed in "
          "with it, they can set a new password within the hour without the old one.", file=sys.stderr)
    return 0
