"""Signing in costs the same for an email nobody has as for a real account with a wrong password, so the answer
time does not tell which accounts exist (before: about 86 ms against 639 ms)."""

from __future__ import annotations

import statistics
import time

import pytest
from fastapi.testclient import TestClient

from app.accounts import sign_in_limits

TRIES = 9


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_unknown_email_takes_as_long_as_a_wrong_password(monkeypatch, tuneboard_env, account, make_user):
    from app.main import create_app

    # Timing, not throttling, is under test here: let every attempt through.
    monkeypatch.setattr(sign_in_limits, "FREE_ATTEMPTS_PER_ACCOUNT", 10_000)
    monkeypatch.setattr(sign_in_limits, "FREE_ATTEMPTS_PER_ADDRESS", 10_000)
    invited = make_user("no-password-yet@example.com", "Alpha", "member")
    from sqlalchemy import update

    from app.db import new_session
    from app.tables import User

    with new_session() as session:  # an invitee who has not set a password yet
        session.execute(update(User).where(User.id == invited.user_id).values(password_hash=None))
        session.commit()

    def seconds(client: TestClient, email: str) -> float:
        started = time.perf_counter()
        response = client.post("/login", data={"email": email, "password": "not the password"})
        elapsed = time.perf_counter() - started
        assert response.status_code == 401
        return elapsed

    cases = {"known": account.email, "unknown": "nobody@example.com", "no password": invited.email}
    times = {name: [] for name in cases}
    with TestClient(create_app(), follow_redirects=False) as client:
        for email in cases.values():
            seconds(client, email)  # warm-up: first-use costs (the stand-in hash, caches) are not the point
        # Interleaved, so a burst of load from other processes falls on every case alike.
        for _ in range(TRIES):
            for name, email in cases.items():
                times[name].append(seconds(client, email))
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name in ("unknown", "no password"):
        ratio = medians[name] / medians["known"]
        assert 0.5 < ratio < 2.0, f"{name} email: {medians[name] * 1000:.0f} ms against " \
                                  f"{medians['known'] * 1000:.0f} ms for a known one"
