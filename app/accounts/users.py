"""Users, teams, memberships, API tokens, browser sessions and one-time sign-in links.

Functions take the session as a keyword and commit their own changes. Only digests of tokens are
stored; the plaintext is returned once, to be shown once. Access to a team comes only from a
membership (pending invitations live in app/accounts/invitations.py and grant nothing). A user has at most one
unused sign-in link, and it stops working once the user sets a password. Must not import torch or
`workers`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from app.accounts import credentials
from app.tables import ApiToken, BrowserSession, Membership, SignInLink, Team, User, now

SESSION_SECONDS = 14 * 24 * 3600
LINK_SECONDS = 24 * 3600
# A browser signed in by a one-time link (a new account, an operator's link for a forgotten password) may set a
# password without the current one for this long; afterwards it is an ordinary session.
PASSWORD_RESET_SECONDS = 3600
ROLES = ("admin", "member")
# Writing last_used_at on every API call would make each call a write; once a minute is enough to show.
LAST_USED_RESOLUTION = 60.0


class AccountError(ValueError):
    """A request about accounts that cannot be done; `field` names the input at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, for which team, in which role, and how they proved it."""

    user: User
    team: Team
    role: str
    via: str  # "session" or "token"
    csrf_token: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def normalise_email(email: str) -> str:
    """Emails compare case-insensitively and without surrounding spaces."""
    return email.strip().lower()


def find_user(session: Session, email: str) -> User | None:
    """The user with this email, if any."""
    return session.scalars(select(User).where(User.email == normalise_email(email))).first()


def create_user(session: Session, email: str, *, name: str = "", password: str | None = None,
                commit: bool = True) -> User:
    """A new active user; AccountError when the email is taken or malformed or the password too weak. With
    commit=False the caller commits it together with what belongs to it (an invitation)."""
    email = normalise_email(email)
    if "@" not in email or email.startswith("@") or len(email) > 320:
        raise AccountError("email", f"{email!r} is not an email address")
    if find_user(session, email) is not None:
        raise AccountError("email", f"a user with email {email} already exists")
    if password is not None and (problem := credentials.password_problem(password)):
        raise AccountError("password", problem)
    user = User(email=email, name=name or email.split("@")[0],
                password_hash=credentials.hash_password(password) if password else None,
                password_set_at=now() if password else None)
    session.add(user)
    if commit:
        session.commit()
    else:
        session.flush()
    return user


def may_skip_current_password(session: Session, user: User, cookie: str | None) -> bool:
    """Whether this browser may set the user's password without the current one: the account has none yet,
    or the browser was signed in by a one-time link within the last hour."""
    if user.password_hash is None:
        return True
    browser = _browser_session(session, cookie) if cookie else None
    return browser is not None and browser.user_id == user.id and (browser.password_reset_until or 0) > now()


def change_password(session: Session, user: User, new_password: str, *, current_password: str, cookie: str | None,
                    revoke_tokens: bool = False) -> int:
    """Set a new password, proving the current one unless `may_skip_current_password`; ends every other browser
    session of the user (and, when asked, revokes their API tokens). Returns how many sessions ended."""
    user = session.get(User, user.id)  # the caller's copy may come from another (closed) session
    if not may_skip_current_password(session, user, cookie):
        if not current_password:
            raise AccountError("current_password", "enter your current password")
        if not credentials.password_matches(current_password, user.password_hash):
            raise AccountError("current_password", "the current password is wrong")
    if problem := credentials.password_problem(new_password):
        raise AccountError("password", problem)
    browser = _browser_session(session, cookie) if cookie else None
    keep = browser.id if browser is not None and browser.user_id == user.id else None
    user.password_hash = credentials.hash_password(new_password)
    user.password_set_at = now()
    if keep is not None:
        browser.password_reset_until = None
    # Whoever else holds a session or a link of this user (the reason for a change, often) is out.
    ended = session.execute(delete(BrowserSession).where(BrowserSession.user_id == user.id,
                                                         BrowserSession.id != (keep or -1))).rowcount
    session.execute(delete(SignInLink).where(SignInLink.user_id == user.id, SignInLink.used_at.is_(None)))
    if revoke_tokens:
        session.execute(update(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
                        .values(revoked_at=now()))
    session.commit()
    return ended


def create_team(session: Session, name: str) -> Team:
    """A new team with a unique name."""
    name = name.strip()
    if not name or len(name) > 200:
        raise AccountError("name", "a team name has 1 to 200 characters")
    if session.scalars(select(Team).where(func.lower(Team.name) == name.lower())).first() is not None:
        raise AccountError("name", f"a team named {name!r} already exists")
    team = Team(name=name)
    session.add(team)
    session.commit()
    return team


def set_membership(session: Session, user: User, team: Team, role: str) -> Membership:
    """Make a user a member of a team directly: a new team's creator, the first admin, an operator. Anyone else
    joins by accepting an invitation (app/accounts/invitations.py)."""
    if role not in ROLES:
        raise AccountError("role", f"role must be one of {', '.join(ROLES)}")
    membership = session.get(Membership, (user.id, team.id))
    if membership is None:
        membership = Membership(user_id=user.id, team_id=team.id, role=role)
        session.add(membership)
    else:
        membership.role = role
    session.commit()
    return membership


def admin_count(session: Session, team_id: str) -> int:
    """How many admins a team has."""
    return session.scalar(select(func.count()).select_from(Membership)
                          .where(Membership.team_id == team_id, Membership.role == "admin"))


def _keep_an_admin(session: Session, membership: Membership, team: Team, what: str) -> None:
    if membership.role == "admin" and admin_count(session, team.id) <= 1:
        raise AccountError("members", f"cannot {what} the last admin of {team.name}: make another member an "
                                      "admin first")


def change_role(session: Session, team: Team, user_id: str, role: str) -> None:
    """Make a member of the team an admin or a member; the team always keeps one admin."""
    if role not in ROLES:
        raise AccountError("role", f"role must be one of {', '.join(ROLES)}")
    membership = session.get(Membership, (user_id, team.id))
    if membership is None:
        raise AccountError("user", "that user is not a member of this team")
    if role != "admin":
        _keep_an_admin(session, membership, team, "demote")
    membership.role = role
    session.commit()


def remove_member(session: Session, team: Team, user_id: str) -> None:
    """Take a user out of the team (their jobs stay with it); the team always keeps one admin."""
    membership = session.get(Membership, (user_id, team.id))
    if membership is None:
        raise AccountError("user", "that user is not a member of this team")
    _keep_an_admin(session, membership, team, "remove")
    session.delete(membership)
    session.commit()


def memberships(session: Session, user: User) -> list[tuple[Team, str]]:
    """The teams a user belongs to with their role, by team name."""
    rows = session.execute(select(Team, Membership.role).join(Membership, Membership.team_id == Team.id)
                           .where(Membership.user_id == user.id).order_by(Team.name)).all()
    return [(team, role) for team, role in rows]


def role_in(session: Session, user: User, team_id: str) -> str | None:
    """The user's role in a team, or None when not a member."""
    membership = session.get(Membership, (user.id, team_id))
    return membership.role if membership else None


def ensure_first_admin(session: Session, email: str = "admin@localhost") -> tuple[User, Team] | None:
    """On an install with no user yet, create an admin in a first team; None when users exist."""
    if session.scalars(select(User.id).limit(1)).first() is not None:
        return None
    user = create_user(session, email, name="Admin")
    # An install upgraded from before teams already has "Default", holding its earlier jobs: join it.
    team = session.scalars(select(Team).where(Team.name == "Default")).first() or create_team(session, "Default")
    set_membership(session, user, team, "admin")
    return user, team


# --- API tokens ---------------------------------------------------------------------------------------

def create_api_token(session: Session, user: User, team: Team, name: str) -> tuple[ApiToken, str]:
    """A new token for the user in the team; returns the record and the plaintext (shown once)."""
    if role_in(session, user, team.id) is None:
        raise AccountError("team", f"{user.email} is not a member of {team.name}")
    name = name.strip() or "token"
    plaintext = credentials.new_token(credentials.API_TOKEN_PREFIX)
    token = ApiToken(user_id=user.id, team_id=team.id, name=name[:200], digest=credentials.digest(plaintext),
                     hint=plaintext[-4:])
    session.add(token)
    session.commit()
    return token, plaintext


def revoke_api_token(session: Session, user: User, token_id: str) -> bool:
    """Revoke one of the user's own tokens; False when there is no such live token."""
    result = session.execute(update(ApiToken).where(ApiToken.id == token_id, ApiToken.user_id == user.id,
                                                    ApiToken.revoked_at.is_(None)).values(revoked_at=now()))
    session.commit()
    return result.rowcount == 1


def principal_for_token(session: Session, plaintext: str) -> Principal | None:
    """Who an API token acts for, if it is live and its user still belongs to its team."""
    token = session.scalars(select(ApiToken).where(ApiToken.digest == credentials.digest(plaintext),
                                                   ApiToken.revoked_at.is_(None))).first()
    if token is None:
        return None
    user, team = session.get(User, token.user_id), session.get(Team, token.team_id)
    role = role_in(session, user, team.id)
    if not user.is_active or role is None:
        return None
    moment = now()
    if token.last_used_at is None or moment - token.last_used_at > LAST_USED_RESOLUTION:
        token.last_used_at = moment
        session.commit()
    return Principal(user, team, role, "token")


# --- browser sessions and sign-in links ---------------------------------------------------------------

def start_session(session: Session, user: User, team: Team | None = None, *,
                  from_link: bool = False) -> tuple[BrowserSession, str]:
    """A new browser session in the given team if the user is a member there (else their first team); returns the
    row and the cookie value. A session from a one-time link may reset the password for a while."""
    if team is None or role_in(session, user, team.id) is None:
        teams = memberships(session, user)
        if not teams:
            raise AccountError("team", f"{user.email} belongs to no team; ask an admin to invite you to one")
        team = teams[0][0]
    moment = now()
    plaintext = credentials.new_token()
    browser = BrowserSession(digest=credentials.digest(plaintext), user_id=user.id, team_id=team.id,
                             csrf_token=credentials.new_token(), expires_at=moment + SESSION_SECONDS,
                             password_reset_until=moment + PASSWORD_RESET_SECONDS if from_link else None)
    session.add(browser)
    user.signed_in_at = moment
    session.commit()
    return browser, plaintext


def principal_for_session(session: Session, cookie: str) -> Principal | None:
    """Who a session cookie belongs to, if the session is live and the user still in its team."""
    browser = session.scalars(select(BrowserSession).where(BrowserSession.digest == credentials.digest(cookie),
                                                           BrowserSession.expires_at > now())).first()
    if browser is None:
        return None
    user, team = session.get(User, browser.user_id), session.get(Team, browser.team_id)
    role = role_in(session, user, team.id)
    if not user.is_active or role is None:
        return None
    return Principal(user, team, role, "session", browser.csrf_token)


def _browser_session(session: Session, cookie: str) -> BrowserSession | None:
    return session.scalars(select(BrowserSession).where(BrowserSession.digest == credentials.digest(cookie))).first()


def end_session(session: Session, cookie: str) -> None:
    """Sign a browser out."""
    browser = _browser_session(session, cookie)
    if browser is not None:
        session.delete(browser)
        session.commit()


def switch_team(session: Session, cookie: str, team_id: str) -> bool:
    """Move a browser session to another team the user is a member of (an invitation is not enough)."""
    browser = _browser_session(session, cookie)
    if browser is None or role_in(session, session.get(User, browser.user_id), team_id) is None:
        return False
    browser.team_id = team_id
    session.commit()
    return True


def create_sign_in_link(session: Session, user: User, team: Team) -> str:
    """A one-time sign-in token for the user, valid for a day; it replaces any unused earlier one.

    Signing in as someone is the whole power of an account, so only these may call it: the first run, an
    invitation that creates an account (app/accounts/invitations.py decides), and an operator's CLI."""
    session.execute(delete(SignInLink).where(SignInLink.user_id == user.id, SignInLink.used_at.is_(None)))
    plaintext = credentials.new_token()
    session.add(SignInLink(digest=credentials.digest(plaintext), user_id=user.id, team_id=team.id,
                           expires_at=now() + LINK_SECONDS))
    session.commit()
    return plaintext


def use_sign_in_link(session: Session, plaintext: str) -> tuple[User, Team] | None:
    """Spend a sign-in link once; None when unknown, used, expired, or older than the user's password."""
    moment = now()
    link = session.scalars(select(SignInLink).where(SignInLink.digest == credentials.digest(plaintext))).first()
    if link is None or link.used_at is not None or link.expires_at <= moment:
        return None
    user = session.get(User, link.user_id)
    if not user.is_active or (user.password_set_at is not None and link.created_at < user.password_set_at):
        return None
    # Spent with a conditional UPDATE: two browsers racing with one link, only one wins.
    spent = session.execute(update(SignInLink).where(SignInLink.id == link.id, SignInLink.used_at.is_(None))
                            .values(used_at=moment))
    session.commit()
    if spent.rowcount != 1:
        return None
    return user, session.get(Team, link.team_id)
