"""Changing a password proves the current one (except with no password yet, or right after a one-time link),
signs out every other browser of the user, can revoke their API tokens, and voids sign-in links made before
it. A team always keeps an admin: the last one can neither demote nor remove themselves."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from app.accounts.auth import SESSION_COOKIE

PASSWORD = "correct horse 1"  # what tests/service_fixtures.make_account gives every user
NEW_PASSWORD = "a brand new passphrase"


@pytest.fixture
def app(tuneboard_env):
    from app.main import create_app

    return create_app()


def _csrf(html: str) -> str:
    return re.search(r'<meta name="csrf-token" content="([^"]+)"', html).group(1)


def _browser(app, cookie: str) -> TestClient:
    return TestClient(app, follow_redirects=False, cookies={SESSION_COOKIE: cookie})


def _second_session(account) -> str:
    from app.accounts import users
    from app.db import new_session
    from app.tables import Team, User

    with new_session() as session:
        _, cookie = users.start_session(session, session.get(User, account.user_id),
                                           session.get(Team, account.team_id))
    return cookie


def _link_for(account) -> str:
    from app.accounts import users
    from app.db import new_session
    from app.tables import Team, User

    with new_session() as session:
        token = users.create_sign_in_link(session, session.get(User, account.user_id),
                                             session.get(Team, account.team_id))
    return f"/login/link/{token}"


def _signs_in(app, email: str, password: str) -> bool:
    with TestClient(app, follow_redirects=False) as browser:
        return browser.post("/login", data={"email": email, "password": password}).status_code == 303


def test_stolen_session_cannot_change_the_password_without_the_current_one(app, account):
    with _browser(app, account.session_cookie) as thief:
        page = thief.get("/account").text
        assert 'name="current_password"' in page
        csrf = _csrf(page)
        missing = thief.post("/account/password", data={"password": NEW_PASSWORD, "csrf_token": csrf})
        assert missing.status_code == 422 and "enter your current password" in missing.text
        wrong = thief.post("/account/password", data={"password": NEW_PASSWORD, "current_password": "guess guess",
                                                      "csrf_token": csrf})
        assert wrong.status_code == 422 and "the current password is wrong" in wrong.text
    assert _signs_in(app, account.email, PASSWORD) and not _signs_in(app, account.email, NEW_PASSWORD)


def test_password_change_signs_out_every_other_browser_and_can_revoke_tokens(app, account):
    other = _second_session(account)
    with _browser(app, account.session_cookie) as owner:
        csrf = _csrf(owner.get("/account").text)
        changed = owner.post("/account/password", data={
            "password": NEW_PASSWORD, "current_password": PASSWORD, "revoke_tokens": "true", "csrf_token": csrf})
        assert changed.status_code == 200 and "1 other session signed out" in changed.text
        assert "every API token revoked" in changed.text
        assert owner.get("/account").status_code == 200  # this browser stays signed in
    with _browser(app, other) as elsewhere:
        assert elsewhere.get("/account").headers["location"].startswith("/login?next=")
    with TestClient(app, headers=account.headers) as script:
        assert script.get("/v1/files").status_code == 401
    assert _signs_in(app, account.email, NEW_PASSWORD) and not _signs_in(app, account.email, PASSWORD)


def test_tokens_survive_a_password_change_unless_asked(app, account):
    with _browser(app, account.session_cookie) as owner:
        owner.post("/account/password", data={"password": NEW_PASSWORD, "current_password": PASSWORD,
                                              "csrf_token": _csrf(owner.get("/account").text)})
    with TestClient(app, headers=account.headers) as script:
        assert script.get("/v1/files").status_code == 200


def test_an_api_token_cannot_set_the_password(app, account):
    with TestClient(app, headers=account.headers, follow_redirects=False) as script:
        refused = script.post("/account/password", data={"password": NEW_PASSWORD, "current_password": PASSWORD})
        assert refused.status_code == 403 and "signed in with a browser" in refused.text


def test_a_sign_in_link_stops_working_once_its_user_sets_a_password(app, account):
    earlier = _link_for(account)
    with _browser(app, account.session_cookie) as owner:
        owner.post("/account/password", data={"password": NEW_PASSWORD, "current_password": PASSWORD,
                                              "csrf_token": _csrf(owner.get("/account").text)})
    with TestClient(app, follow_redirects=False) as holder:
        refused = holder.get(earlier)
        assert refused.status_code == 400 and "unknown, used or expired" in refused.text


def test_a_link_older_than_the_password_is_void_even_if_kept(app, account):
    """The check is by time, not only by deleting links: a password set by any path voids earlier links."""
    from sqlalchemy import update

    from app.db import new_session
    from app.tables import User, now

    earlier = _link_for(account)
    with new_session() as session:
        session.execute(update(User).where(User.id == account.user_id).values(password_set_at=now() + 1))
        session.commit()
    with TestClient(app, follow_redirects=False) as holder:
        assert holder.get(earlier).status_code == 400


def test_a_new_invitee_sets_a_first_password_without_a_current_one(app, account):
    with _browser(app, account.session_cookie) as admin:
        page = admin.post("/team/invite", data={"email": "dan@example.com",
                                                "csrf_token": _csrf(admin.get("/team").text)}).text
        link = re.search(r"(/login/link/[\w-]+)", page).group(1)
    with TestClient(app, follow_redirects=False) as dan:
        assert dan.get(link).headers["location"] == "/account?welcome=1"
        page = dan.get("/account").text
        assert 'name="current_password"' not in page
        assert dan.post("/account/password", data={"password": NEW_PASSWORD,
                                                   "csrf_token": _csrf(page)}).status_code == 200
        assert 'name="current_password"' in dan.get("/account").text
    assert _signs_in(app, "dan@example.com", NEW_PASSWORD)


def test_an_operator_link_lets_a_forgotten_password_be_reset_once(app, account):
    with TestClient(app, follow_redirects=False) as owner:
        assert owner.get(_link_for(account)).headers["location"] == "/account?reset=1"
        page = owner.get("/account").text
        assert 'name="current_password"' not in page
        assert owner.post("/account/password", data={"password": NEW_PASSWORD,
                                                     "csrf_token": _csrf(page)}).status_code == 200
        # Once used, the session is an ordinary one again.
        again = owner.post("/account/password", data={"password": "yet another passphrase",
                                                      "csrf_token": _csrf(owner.get("/account").text)})
        assert again.status_code == 422 and "enter your current password" in again.text
    assert _signs_in(app, account.email, NEW_PASSWORD)


def test_the_last_admin_cannot_demote_or_remove_themselves(app, account, make_user):
    bob = make_user("bob@example.com", "Alpha", "member")
    with _browser(app, account.session_cookie) as alice:
        csrf = _csrf(alice.get("/team").text)
        for action, data in (("role", {"role": "member"}), ("remove", {})):
            refused = alice.post(f"/team/members/{account.user_id}/{action}", data={**data, "csrf_token": csrf})
            assert refused.status_code == 409 and "last admin of Alpha" in refused.text
        team = alice.get("/team").text
        assert re.search(r'data-user="alice@example.com"><td>alice@example.com</td><td>admin</td>', team)
        # With a second admin, stepping down is fine.
        assert alice.post(f"/team/members/{bob.user_id}/role", data={"role": "admin", "csrf_token": csrf}
                          ).status_code == 303
        assert alice.post(f"/team/members/{account.user_id}/role", data={"role": "member", "csrf_token": csrf}
                          ).status_code == 303
        assert "you are member" in alice.get("/team").text


def test_guessing_the_current_password_is_throttled_like_sign_in(app, account):
    from app.accounts import sign_in_limits

    with _browser(app, account.session_cookie) as thief:
        csrf = _csrf(thief.get("/account").text)
        for _ in range(sign_in_limits.FREE_ATTEMPTS_PER_ACCOUNT):
            assert thief.post("/account/password", data={"password": NEW_PASSWORD, "current_password": "guess guess",
                                                         "csrf_token": csrf}).status_code == 422
        blocked = thief.post("/account/password", data={"password": NEW_PASSWORD, "current_password": PASSWORD,
                                                        "csrf_token": csrf})
        assert blocked.status_code == 429 and "Too many failed sign-ins; try again in 30 s" in blocked.text
    from app.accounts import credentials
    from app.db import new_session
    from app.tables import User

    with new_session() as session:
        assert credentials.password_matches(PASSWORD, session.get(User, account.user_id).password_hash)
