"""The session cookie is `Secure` when the page came over https, also when a trusted proxy terminates TLS and says
so with X-Forwarded-Proto; a peer that is not a configured proxy cannot claim it."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.accounts.auth import SESSION_COOKIE

PASSWORD = "correct horse 1"  # what tests/service_fixtures.make_account gives every user


def _cookie_from(monkeypatch, account, peer: str) -> str:
    from app.main import create_app
    from app.settings import get_settings

    monkeypatch.setenv("TUNEBOARD_TRUSTED_PROXIES", "10.0.0.1")
    get_settings.cache_clear()
    with TestClient(create_app(), follow_redirects=False, client=(peer, 40000)) as browser:
        response = browser.post("/login", data={"email": account.email, "password": PASSWORD},
                                headers={"X-Forwarded-Proto": "https"})
    assert response.status_code == 303
    return response.headers["set-cookie"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_session_cookie_is_secure_behind_a_trusted_https_proxy(monkeypatch, tuneboard_env, account):
    cookie = _cookie_from(monkeypatch, account, "10.0.0.1")
    assert f"{SESSION_COOKIE}=" in cookie and "Secure" in cookie and "HttpOnly" in cookie


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_untrusted_peer_cannot_claim_https(monkeypatch, tuneboard_env, account):
    assert "Secure" not in _cookie_from(monkeypatch, account, "203.0.113.9")
