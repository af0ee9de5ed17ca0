"""Nobody signs in as someone else through an invitation: inviting an existing account gives no sign-in link,
only a pending invitation the person accepts signed in as themselves; until then it grants nothing (no session,
team switch or token reaches the team). A link is minted only for an account nobody has taken up yet, one live
link at a time, or by an operator's `tuneboard sign-in-link`."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from app.accounts.auth import SESSION_COOKIE
from app.settings import REPO_ROOT
from tests.jobs.helpers import chat_records, json_lines

LINK = re.compile(r"(/login/link/[\w-]+)")


@pytest.fixture
def app(tuneboard_env):
    from app.main import create_app

    return create_app()


def _csrf(html: str) -> str:
    return re.search(r'<meta name="csrf-token" content="([^"]+)"', html).group(1)


def _browser(app, account) -> TestClient:
    return TestClient(app, follow_redirects=False, cookies={SESSION_COOKIE: account.session_cookie})


def _team_id(page: str, name: str) -> str | None:
    found = re.search(rf'<option value="(team-[^"]+)"[^>]*>{re.escape(name)}</option>', page)
    return found.group(1) if found else None


def _section(html: str, element_id: str) -> str:
    found = re.search(rf'id="{element_id}".*?</table>', html, re.S)
    return found.group(0) if found else ""


def test_invite_existing_user_gives_no_sign_in_link(app, account, make_user):
    """The attack: a plain member makes a team, invites an existing email, and must get nothing that signs in as
    that person, nor any way into their team."""
    victim = account  # alice, admin of Alpha
    with TestClient(app, headers=victim.headers) as script:
        secret_file = script.post("/v1/files", files={"file": ("alpha.jsonl", io.BytesIO(json_lines(chat_records(2))))},
                                  data={"purpose": "fine-tune"}).json()["id"]
    mallory = make_user("mallory@example.com", "Gamma", "member")
    with _browser(app, mallory) as attacker:
        csrf = _csrf(attacker.get("/team").text)
        assert attacker.post("/teams", data={"name": "Evil", "csrf_token": csrf}).status_code == 303
        evil_page = attacker.get("/jobs").text
        attacker.post("/session/team", data={"team_id": _team_id(evil_page, "Evil"), "csrf_token": csrf})
        invited = attacker.post("/team/invite", data={"email": victim.email, "role": "member", "csrf_token": csrf})
        assert invited.status_code == 200
        assert not LINK.search(invited.text), "inviting an existing account handed out a link that signs in as it"
        assert "already has an account" in invited.text
        assert victim.email in _section(invited.text, "invited") and victim.email not in _section(invited.text,
                                                                                                    "members")
        # Straight into the victim's team: refused, and the attacker stays where they were.
        switched = attacker.post("/session/team", data={"team_id": victim.team_id, "csrf_token": csrf})
        assert switched.status_code == 403 and "not a member of that team" in switched.text
        assert re.search(r'selected>Evil</option>', attacker.get("/jobs").text)
        created = attacker.post("/account/tokens", data={"name": "loot", "csrf_token": csrf}).text
        token = re.search(r'id="new-token-value">(tb_[^<]+)<', created).group(1)
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as loot:
        assert secret_file not in loot.get("/v1/files").text
    # The victim still sees an invitation, to accept or not, signed in as herself.
    with _browser(app, victim) as alice:
        assert "You are invited to team <strong>Evil</strong>" in alice.get("/account").text


def test_an_invited_user_gets_nothing_of_the_team_until_accepting(app, account, make_user):
    evil = make_user("eve@example.com", "Evil", "admin")
    with _browser(app, evil) as admin:
        admin.post("/team/invite", data={"email": account.email, "role": "member",
                                         "csrf_token": _csrf(admin.get("/team").text)})
    with _browser(app, account) as alice:
        page = alice.get("/account").text
        csrf = _csrf(page)
        assert _team_id(page, "Evil") is None, "the team switcher offers a team that only invited her"
        assert alice.post("/session/team", data={"team_id": evil.team_id, "csrf_token": csrf}).status_code == 403
        invitation = re.search(r'/account/invitations/(inv-\w+)/accept', page).group(1)
        accepted = alice.post(f"/account/invitations/{invitation}/accept", data={"csrf_token": csrf})
        assert accepted.status_code == 200 and "You joined Evil" in accepted.text
        assert alice.post("/session/team", data={"team_id": evil.team_id, "csrf_token": csrf}).status_code == 303
        team = alice.get("/team").text
        assert account.email in _section(team, "members") and "Invited" not in team


def test_someone_elses_invitation_cannot_be_accepted_or_declined(app, account, make_user):
    evil = make_user("eve@example.com", "Evil", "admin")
    bob = make_user("bob@example.com", "Alpha", "member")
    with _browser(app, evil) as admin:
        admin.post("/team/invite", data={"email": account.email, "csrf_token": _csrf(admin.get("/team").text)})
    with _browser(app, account) as alice:
        invitation = re.search(r'/account/invitations/(inv-\w+)/accept', alice.get("/account").text).group(1)
    with _browser(app, bob) as other:
        csrf = _csrf(other.get("/account").text)
        for answer in ("accept", "decline"):
            refused = other.post(f"/account/invitations/{invitation}/{answer}", data={"csrf_token": csrf})
            assert refused.status_code == 404 and "does not exist" in refused.text
        assert other.post("/session/team", data={"team_id": evil.team_id, "csrf_token": csrf}).status_code == 403
    with TestClient(app, headers=account.headers, follow_redirects=False) as script:
        # An API token acts in its own team for scripts: it cannot join its user to another.
        assert script.post(f"/account/invitations/{invitation}/accept").status_code == 403
    with _browser(app, account) as alice:
        assert "You are invited to team <strong>Evil</strong>" in alice.get("/account").text


def test_a_new_account_invited_again_gets_a_new_link_and_the_old_one_dies(app, account):
    with _browser(app, account) as admin:
        csrf = _csrf(admin.get("/team").text)
        first = LINK.search(admin.post("/team/invite", data={"email": "dan@example.com", "csrf_token": csrf}).text)
        again = admin.post("/team/invite", data={"email": "dan@example.com", "role": "admin", "csrf_token": csrf})
        second = LINK.search(again.text)
        assert first and second and first.group(1) != second.group(1)
        assert "dan@example.com" in _section(again.text, "invited")
    with TestClient(app, follow_redirects=False) as stranger:
        refused = stranger.get(first.group(1))
        assert refused.status_code == 400 and "unknown, used or expired" in refused.text
    with TestClient(app, follow_redirects=False) as dan:
        assert dan.get(second.group(1)).headers["location"] == "/account?welcome=1"
        team = dan.get("/team").text
        assert re.search(r'data-user="dan@example.com"><td>dan@example.com</td><td>admin</td>', team)


def test_another_team_gets_no_link_for_someone_elses_new_invitee(app, account, make_user):
    from app.accounts import users
    from app.db import new_session

    with new_session() as session:  # as the first run makes it: no password, never signed in, admin of a team
        users.set_membership(session, users.create_user(session, "admin@localhost"),
                                users.create_team(session, "Default"), "admin")
    with _browser(app, account) as alpha:
        link = LINK.search(alpha.post("/team/invite", data={
            "email": "newbie@example.com", "csrf_token": _csrf(alpha.get("/team").text)}).text).group(1)
    evil = make_user("eve@example.com", "Evil", "admin")
    with _browser(app, evil) as attacker:
        csrf = _csrf(attacker.get("/team").text)
        stolen = attacker.post("/team/invite", data={"email": "newbie@example.com", "csrf_token": csrf})
        assert not LINK.search(stolen.text) and "already has an account" in stolen.text
        # Nor for the first admin, who has no password yet and has never signed in.
        first_admin = attacker.post("/team/invite", data={"email": "admin@localhost", "csrf_token": csrf})
    assert first_admin.status_code == 200 and not LINK.search(first_admin.text)
    with TestClient(app, follow_redirects=False) as newbie:
        assert newbie.get(link).status_code == 303  # Alpha's link still works: nobody replaced it
        assert "Alpha" in newbie.get("/team").text


def test_a_withdrawn_invitation_takes_its_link_along(app, account):
    with _browser(app, account) as admin:
        csrf = _csrf(admin.get("/team").text)
        page = admin.post("/team/invite", data={"email": "dan@example.com", "csrf_token": csrf}).text
        link = LINK.search(page).group(1)
        invitation = re.search(r'/team/invitations/(inv-\w+)/withdraw', page).group(1)
        assert admin.post(f"/team/invitations/{invitation}/withdraw", data={"csrf_token": csrf}).status_code == 303
        assert "dan@example.com" not in admin.get("/team").text
    with TestClient(app, follow_redirects=False) as dan:
        assert dan.get(link).status_code == 400


def test_a_user_in_no_team_accepts_an_invitation_at_sign_in(app, account, make_user):
    from app.accounts import users
    from app.db import new_session
    from app.tables import Team

    bob = make_user("bob@example.com", "Alpha", "member")
    with new_session() as session:
        users.remove_member(session, session.get(Team, account.team_id), bob.user_id)
    with _browser(app, account) as admin:
        admin.post("/team/invite", data={"email": bob.email, "csrf_token": _csrf(admin.get("/team").text)})
    with TestClient(app, follow_redirects=False) as browser:
        offer = browser.post("/login", data={"email": bob.email, "password": "correct horse 1"})
        assert offer.status_code == 200 and "<strong>Alpha</strong> has invited you" in offer.text
        ticket = re.search(r'name="ticket" value="([^"]+)"', offer.text).group(1)
        signed_in = browser.post("/login/invitation", data={"ticket": ticket, "decision": "accept"})
        assert signed_in.status_code == 303
        assert re.search(r'data-user="bob@example.com"><td>bob@example.com</td><td>member</td>',
                         browser.get("/team").text)
        assert browser.post("/login/invitation", data={"ticket": ticket}).status_code == 400  # spent


def test_operator_prints_a_sign_in_link_and_the_login_page_says_how(app, account, tuneboard_env):
    with TestClient(app) as browser:
        advice = browser.get("/login/link/not-a-link").text
        assert "tuneboard sign-in-link --user EMAIL" in advice and "tokens create" not in advice
        assert "tuneboard sign-in-link --user EMAIL" in browser.get("/login").text
    done = subprocess.run([sys.executable, "-m", "app.cli", "sign-in-link", "--user", account.email, "--url",
                           "http://testserver"], cwd=REPO_ROOT, env=tuneboard_env.env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    link = done.stdout.strip().removeprefix("http://testserver")
    with TestClient(app, follow_redirects=False) as alice:
        assert alice.get(link).headers["location"] == "/account?reset=1"
        assert account.email in alice.get("/account").text
    unknown = subprocess.run([sys.executable, "-m", "app.cli", "sign-in-link", "--user", "nobody@example.com"],
                             cwd=REPO_ROOT, env=tuneboard_env.env, capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and "no user nobody@example.com" in unknown.stderr


def test_a_link_holder_cannot_accept_another_teams_invitation_for_the_new_account(app, account, make_user):
    """Mallory invites a new email and keeps its link; Alpha then invites the same person. Signed in through the
    link and with a password of her own choosing, Mallory must not get into Alpha as that person."""
    mallory = make_user("mallory@example.com", "Gamma", "admin")
    with _browser(app, mallory) as attacker:
        link = LINK.search(attacker.post("/team/invite", data={
            "email": "newbie@example.com", "csrf_token": _csrf(attacker.get("/team").text)}).text).group(1)
    with _browser(app, account) as alpha:
        csrf = _csrf(alpha.get("/team").text)
        assert not LINK.search(alpha.post("/team/invite", data={"email": "newbie@example.com",
                                                                "csrf_token": csrf}).text)
    with TestClient(app, follow_redirects=False) as as_newbie:
        assert as_newbie.get(link).status_code == 303
        csrf_newbie = _csrf(as_newbie.get("/account").text)
        assert as_newbie.post("/account/password", data={"password": "mallory owns this 1",
                                                         "csrf_token": csrf_newbie}).status_code == 200
        page = as_newbie.get("/account").text
        invitation = re.search(r'/account/invitations/(inv-\w+)/accept', page).group(1)
        refused = as_newbie.post(f"/account/invitations/{invitation}/accept", data={"csrf_token": csrf_newbie})
        assert refused.status_code == 409 and "invite you again" in refused.text
        assert _team_id(as_newbie.get("/jobs").text, "Alpha") is None
    with _browser(app, account) as alpha:
        members = _section(alpha.get("/team").text, "members")
        assert "newbie@example.com" not in members
