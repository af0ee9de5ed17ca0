"""Signing in and out in real Chromium: an anonymous visit lands on the sign-in page, a wrong password
is refused beside the form, the right one returns to the page asked for, and signing out ends it."""

from __future__ import annotations

import pytest


@pytest.mark.browser
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sign_in_returns_to_the_page_asked_for_and_sign_out_ends_the_session(browser, live_server, account):
    context = browser.new_context(viewport={"width": 1400, "height": 900}, base_url=live_server.url)
    page = context.new_page()
    page.goto("/jobs")
    assert "/login?next=%2Fjobs" in page.url
    page.fill("input[name=email]", account.email)
    page.fill("input[name=password]", "not the password")
    page.click("button[type=submit]")
    assert "Wrong email or password" in page.locator("#login-error").inner_text()
    page.fill("input[name=password]", "correct horse 1")
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/jobs")
    assert page.locator("#account-link").inner_text() == account.email
    cookie = next(c for c in context.cookies() if c["name"] == "tuneboard_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    page.click("#sign-out")
    page.wait_for_url(f"{live_server.url}/login")
    page.goto("/jobs")
    assert "/login?next=" in page.url
    context.close()


@pytest.mark.browser
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_invitation_is_accepted_and_the_password_changed_on_the_account_page(browser, live_server, account,
                                                                                make_user):
    from app.accounts import invitations
    from app.db import new_session
    from app.tables import Team, User
    from tests.service_fixtures import signed_in_context

    eve = make_user("eve@example.com", "Evil", "admin")
    with new_session() as session:
        invitations.invite(session, session.get(Team, eve.team_id), account.email, "member",
                           invited_by=session.get(User, eve.user_id))
    context = signed_in_context(browser, live_server.url, account, viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.goto("/team")
    assert "You are invited to Evil" in page.locator("#my-invitations").inner_text()
    assert page.locator("#team-switch option", has_text="Evil").count() == 0
    page.click("#my-invitations a")
    invitation = page.locator("#invitations .invitation[data-team=Evil]")
    assert "You are invited to team Evil as member." in invitation.inner_text()
    invitation.get_by_role("button", name="Accept").click()
    assert "You joined Evil" in page.locator("#account-notice").inner_text()
    assert page.locator("#team-switch option", has_text="Evil").count() == 1
    page.fill("#password-form input[name=current_password]", "correct horse 1")
    page.fill("#password-form input[name=password]", "a brand new passphrase")
    page.check("#password-form input[name=revoke_tokens]")
    page.click("#password-form button[type=submit]")
    assert "Password changed; 0 other sessions signed out and every API token revoked." in page.locator(
        "#account-notice").inner_text()
    context.close()
