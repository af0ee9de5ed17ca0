"""Team invitations: an admin invites an email; the person joins only by accepting, signed in as themselves.

An invitation grants nothing until accepted: no session, token or team switch reaches the team before.
It carries a one-time sign-in link only for an account nobody has taken up yet (no password, never signed
in, in no team, invited by no other team): a brand-new invitee, who accepts by following the link. For
anyone else the invitation waits on their account page. Must not import torch or `workers`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.accounts import users
from app.tables import Membership, SignInLink, Team, TeamInvitation, User, now


class InvitationPredatesClaim(users.AccountError):
    """The invitation is older than the account's password, so it may have reached a link's holder instead."""


@dataclass(frozen=True, slots=True)
class Invited:
    """The outcome of an invitation: who, and the sign-in link when one may be given (else None)."""

    user: User
    invitation: TeamInvitation
    link: str | None


def _unclaimed_for(session: Session, user: User, team: Team) -> bool:
    """Whether nobody owns the account yet but this team's invitation: only then may a link sign in as it."""
    if user.password_hash is not None or user.password_set_at is not None or user.signed_in_at is not None:
        return False
    if session.scalars(select(Membership.team_id).where(Membership.user_id == user.id).limit(1)).first():
        return False
    # A link would also reach another team's pending invitation: that team's invitee is not ours to sign in as.
    return session.scalars(select(TeamInvitation.id).where(TeamInvitation.user_id == user.id,
                                                           TeamInvitation.team_id != team.id).limit(1)).first() is None


def invite(session: Session, team: Team, email: str, role: str, *, invited_by: User) -> Invited:
    """Invite an email to the team (creating the account when it is new); inviting again updates the role and,
    for a still unclaimed account, replaces its link, so one link at most is ever live."""
    if role not in users.ROLES:
        raise users.AccountError("role", f"role must be one of {', '.join(users.ROLES)}")
    # A new account is committed with its invitation: another team never sees it without the invitation (and
    # so can never take it for an account nobody has invited).
    user = users.find_user(session, email) or users.create_user(session, email, commit=False)
    if users.role_in(session, user, team.id) is not None:
        raise users.AccountError("email", f"{user.email} is already a member of {team.name}")
    invitation = session.scalars(select(TeamInvitation).where(TeamInvitation.team_id == team.id,
                                                              TeamInvitation.user_id == user.id)).first()
    if invitation is None:
        invitation = TeamInvitation(team_id=team.id, user_id=user.id)
        session.add(invitation)
    # Re-inviting renews the invitation's date: it is what `accept` compares with the account's claim.
    invitation.role, invitation.invited_by, invitation.created_at = role, invited_by.id, now()
    session.commit()
    link = users.create_sign_in_link(session, user, team) if _unclaimed_for(session, user, team) else None
    return Invited(user, invitation, link)


def pending_for_team(session: Session, team: Team) -> list[tuple[TeamInvitation, User]]:
    """The team's invitations not yet accepted, by email."""
    rows = session.execute(select(TeamInvitation, User).join(User, User.id == TeamInvitation.user_id)
                           .where(TeamInvitation.team_id == team.id).order_by(User.email)).all()
    return [(invitation, user) for invitation, user in rows]


def pending_for_user(session: Session, user: User) -> list[tuple[TeamInvitation, Team]]:
    """The invitations waiting for the user, by team name."""
    rows = session.execute(select(TeamInvitation, Team).join(Team, Team.id == TeamInvitation.team_id)
                           .where(TeamInvitation.user_id == user.id).order_by(Team.name)).all()
    return [(invitation, team) for invitation, team in rows]


def _join(session: Session, invitation: TeamInvitation) -> None:
    if session.get(Membership, (invitation.user_id, invitation.team_id)) is None:
        session.add(Membership(user_id=invitation.user_id, team_id=invitation.team_id, role=invitation.role))
    session.delete(invitation)
    session.commit()


def _own(session: Session, user: User, invitation_id: str) -> TeamInvitation:
    invitation = session.get(TeamInvitation, invitation_id)
    # Someone else's invitation answers exactly as one that does not exist.
    if invitation is None or invitation.user_id != user.id:
        raise users.AccountError("invitation", "this invitation does not exist any more")
    return invitation


def accept(session: Session, user: User, invitation_id: str) -> Team:
    """The user joins the team of one of their own invitations, with the role it offered, if the account was
    already claimed (its password set) when the invitation was made."""
    invitation = _own(session, user, invitation_id)
    if user.password_set_at is None or user.password_set_at > invitation.created_at:
        # Until a password is set, whoever holds the account's one-time link (another team's admin, say) could be
        # signed in as it: an invitation made meanwhile was meant for the person, not for the link's holder.
        raise InvitationPredatesClaim("invitation", "this invitation was made before you set your password; set "
                                                    "one if you have not, then ask an admin of the team to invite "
                                                    "you again")
    team = session.get(Team, invitation.team_id)
    _join(session, invitation)
    return team


def decline(session: Session, user: User, invitation_id: str) -> Team:
    """The user turns down one of their own invitations."""
    invitation = _own(session, user, invitation_id)
    team = session.get(Team, invitation.team_id)
    session.delete(invitation)
    session.commit()
    return team


def accept_by_link(session: Session, user: User, team: Team) -> None:
    """Following a team's one-time link accepts that team's invitation, if one is pending."""
    invitation = session.scalars(select(TeamInvitation).where(TeamInvitation.team_id == team.id,
                                                              TeamInvitation.user_id == user.id)).first()
    if invitation is not None:
        _join(session, invitation)


def withdraw(session: Session, team: Team, invitation_id: str) -> None:
    """An admin takes back one of the team's pending invitations, and the link it carried."""
    invitation = session.get(TeamInvitation, invitation_id)
    if invitation is None or invitation.team_id != team.id:
        raise users.AccountError("invitation", "this invitation does not exist any more")
    session.execute(delete(SignInLink).where(SignInLink.user_id == invitation.user_id,
                                             SignInLink.team_id == team.id, SignInLink.used_at.is_(None)))
    session.delete(invitation)
    session.commit()
