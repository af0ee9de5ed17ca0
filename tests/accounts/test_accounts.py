"""Accounts as people use them: the first-run link, passwords with rate-limited sign-in, session cookies
with CSRF protection, API tokens shown once and revocable, invitations, and switching teams."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from app.accounts.auth import SESSION_COOKIE
from app.settings import REPO_ROOT


@pytest.fixture
def app(tuneboard_env):
    from app.main import create_app

    return create_app()


def _csrf(html: str) -> str:
    return re.search(r'<meta name="csrf-token" content="([^"]+)"', html).group(1)


def test_first_run_link_signs_the_admin_in_once_with_a_safe_cookie(app):
    from app.cli.accounts import first_run_link

    link = first_run_link("http://testserver")
    assert link and first_run_link("http://testserver") is None  # only on an install with no user
    with TestClient(app, follow_redirects=False) as browser:
        response = browser.get(link.removeprefix("http://testserver"))
        assert response.status_code == 303 and response.headers["location"] == "/account?welcome=1"
        cookie = response.headers["set-cookie"]
        assert f"{SESSION_COOKIE}=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
        assert "Secure" not in cookie  # plain http here
        assert "admin@localhost" in browser.get("/account").text
    with TestClient(app, follow_redirects=False) as other:
        again = other.get(link.removeprefix("http://testserver"))
        assert again.status_code == 400 and "unknown, used or expired" in again.text


def test_cookie_is_secure_over_https(app, account):
    from app.accounts import users
    from app.db import new_session
    from app.tables import Team

    with new_session() as session:
        link = users.create_sign_in_link(session, users.find_user(session, account.email),
                                            session.get(Team, account.team_id))
    with TestClient(app, base_url="https://testserver", follow_redirects=False) as browser:
        assert "Secure" in browser.get(f"/login/link/{link}").headers["set-cookie"]


def test_password_sign_in_and_rate_limit(app, account):
    with TestClient(app, follow_redirects=False) as browser:
        page = browser.get("/jobs")
        assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Fjobs"
        wrong = browser.post("/login", data={"email": account.email, "password": "nope", "next": "/jobs"})
        assert wrong.status_code == 401 and "Wrong email or password" in wrong.text
        right = browser.post("/login", data={"email": "ALICE@example.com ", "password": "correct horse 1",
                                             "next": "/jobs"})
        assert right.status_code == 303 and right.headers["location"] == "/jobs"
        assert browser.get("/jobs").status_code == 200
        # An open redirect through ?next= is refused.
        assert browser.post("/login", data={"email": account.email, "password": "correct horse 1",
                                            "next": "//evil.example"}).headers["location"] == "/"
    with TestClient(app, follow_redirects=False) as attacker:
        for _ in range(5):
            attacker.post("/login", data={"email": account.email, "password": "guess"})
        blocked = attacker.post("/login", data={"email": account.email, "password": "correct horse 1"})
        assert blocked.status_code == 429 and "Too many failed sign-ins" in blocked.text


def test_browser_writes_need_the_csrf_token(app, account):
    with TestClient(app, follow_redirects=False, cookies={SESSION_COOKIE: account.session_cookie}) as browser:
        refused = browser.post("/account/tokens", data={"name": "x"})
        assert refused.status_code == 403 and "CSRF" in refused.text
        token = _csrf(browser.get("/account").text)
        assert browser.post("/account/tokens", data={"name": "x", "csrf_token": token}).status_code == 200
        assert browser.post("/account/tokens", data={"name": "y"}, headers={"X-CSRF-Token": token}).status_code == 200


def test_token_is_shown_once_used_for_the_api_and_revoked(app, account):
    with TestClient(app, follow_redirects=False, cookies={SESSION_COOKIE: account.session_cookie}) as browser:
        csrf = _csrf(browser.get("/account").text)
        created = browser.post("/account/tokens", data={"name": "ci", "csrf_token": csrf}).text
        plaintext = re.search(r'id="new-token-value">(tb_[^<]+)<', created).group(1)
        listing = browser.get("/account").text
        assert plaintext not in listing and f"tb_…{plaintext[-4:]}" in listing
        with TestClient(app, headers={"Authorization": f"Bearer {plaintext}"}) as script:
            assert script.get("/v1/fine_tuning/jobs").status_code == 200
        assert re.search(r"<td>ci</td>.*?<td>2\d{3}-\d\d-\d\d \d\d:\d\d UTC</td><td>2\d{3}", browser.get(
            "/account").text, re.S), "last use is shown"
        token_id = re.search(r'data-token-id="([^"]+)"><td>ci</td>', browser.get("/account").text).group(1)
        browser.post(f"/account/tokens/{token_id}/revoke", data={"csrf_token": csrf})
        with TestClient(app, headers={"Authorization": f"Bearer {plaintext}"}) as script:
            response = script.get("/v1/fine_tuning/jobs")
            assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


def test_invited_member_joins_the_team_and_cannot_invite(app, account):
    with TestClient(app, follow_redirects=False, cookies={SESSION_COOKIE: account.session_cookie}) as admin:
        csrf = _csrf(admin.get("/team").text)
        invited = admin.post("/team/invite", data={"email": "dan@example.com", "role": "member", "csrf_token": csrf})
        link = re.search(r"(/login/link/[\w-]+)", invited.text).group(1)
    with TestClient(app, follow_redirects=False) as dan:
        assert dan.get(link).status_code == 303
        assert "dan@example.com" in dan.get("/team").text
        csrf = _csrf(dan.get("/team").text)
        refused = dan.post("/team/invite", data={"email": "eve@example.com", "csrf_token": csrf})
        assert refused.status_code == 403 and "Only team admins" in refused.text


def test_switching_team_changes_what_the_browser_sees(app, account, make_user):
    make_user(account.email, "Second team", "member")
    with TestClient(app, follow_redirects=False, cookies={SESSION_COOKIE: account.session_cookie}) as browser:
        page = browser.get("/jobs").text
        assert re.search(r'<option value="(team-[^"]+)" selected>Alpha</option>', page)
        second = re.search(r'<option value="(team-[^"]+)" >Second team</option>', page).group(1)
        browser.post("/session/team", data={"team_id": second, "next": "/jobs", "csrf_token": _csrf(page)})
        assert re.search(r'selected>Second team</option>', browser.get("/jobs").text)


def test_cli_prints_a_working_token_on_a_fresh_install(app, tuneboard_env):
    done = subprocess.run([sys.executable, "-m", "app.cli", "tokens", "create", "--user", "ops@example.com"],
                          cwd=REPO_ROOT, env=tuneboard_env.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert token.startswith("tb_")
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as script:
        assert script.get("/v1/files").status_code == 200
