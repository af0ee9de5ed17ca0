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
