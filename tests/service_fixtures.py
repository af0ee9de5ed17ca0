"""Fixtures that give a test a configured Tuneboard: data dir, database, Redis and worker processes.

Loaded as a pytest plugin from conftest.py. A test asks for `tuneboard_env` (run once per database in
TUNEBOARD_TEST_DATABASES, default SQLite and PostgreSQL; end to end tests and modules marked `one_database` on
the first only, see END_TO_END_FIXTURES; a test may pin its own with
`@pytest.mark.parametrize("database_url", [...], indirect=True)`) and for `start_worker` to run real
Celery workers. Tests share one Redis database: each is an install of its own there, under a key prefix
(TUNEBOARD_REDIS_KEY_PREFIX) whose keys it deletes at the end, so test runs and xdist workers on one machine
never see or wipe each other's keys.
"""

from __future__ import annotations

import functools
import itertools
import os
import sys
import uuid
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.conftest import require
from tests.services import (
    DEFAULT_REDIS,
    WorkerProcess,
    create_postgres_database,
    delete_keys,
    free_port,
    postgres_answers,
    redis_answers,
    redis_database_url,
)

# Every test that touches the database runs once per database listed here (CI runs both).
TEST_DATABASES = os.environ.get("TUNEBOARD_TEST_DATABASES", "sqlite,postgresql").split(",")


# End to end tests (a real Celery worker process, or Chromium) cost seconds to minutes each, and what they add is
# the whole path, not the database's part of it: those run on the first database only, unless marked
# `both_databases` because their outcome rests on the database itself (claims, fenced writes, what the reaper
# reads). The database's part (the state machine's conditional updates, queries, migrations, the API over them)
# is tested on every database by the tests that need neither. A module with no database question of its own (the
# estimator's pages, request limits, files on disk, which caller reaches which route) is marked `one_database`.
END_TO_END_FIXTURES = ("start_worker", "browser")


def pytest_generate_tests(metafunc):
    """Run database tests on each of TEST_DATABASES (end to end tests and those marked `one_database` on the first)
    unless the test picks its databases itself."""
    if "database_url" not in metafunc.fixturenames:
        return
    for marker in metafunc.definition.iter_markers("parametrize"):
        if "database_url" in marker.args[0]:
            return
    end_to_end = any(name in metafunc.fixturenames for name in END_TO_END_FIXTURES)
    marked = metafunc.definition.get_closest_marker
    on_each = marked("both_databases") is not None or not (end_to_end or marked("one_database") is not None)
    metafunc.parametrize("database_url", TEST_DATABASES if on_each else TEST_DATABASES[:1], indirect=True)


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory):
    """A real Redis server: the configured one when it answers, else an embedded one started here."""
    configured = os.environ.get("TUNEBOARD_TEST_REDIS_URL", DEFAULT_REDIS)
    if redis_answers(configured):
        yield configured.rstrip("/")
        return
    from app.ops.redis_server import start_embedded_redis

    port = free_port()
    process = start_embedded_redis(tmp_path_factory.mktemp("redis"), port)
    yield f"redis://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def redis_url(redis_server_url) -> str:
    """The test Redis: the database its URL names, else 0, shared by every test (each under its own key prefix)."""
    return redis_database_url(redis_server_url)


@pytest.fixture
def redis_key_prefix(redis_url):
    """This test's install's Redis key prefix; every key under it is deleted when the test ends (no FLUSHDB: other
    tests and test runs use the same database at the same time)."""
    prefix = f"tbtest-{uuid.uuid4().hex[:8]}:"
    yield prefix
    try:
        delete_keys(redis_url, prefix)
    except (redis.ConnectionError, redis.TimeoutError):
        pass  # a Redis of the test's own that it stopped: nothing of the prefix is left anywhere


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory) -> Path:
    """A SQLite database brought to the newest schema by Alembic once per test process. Each test's database is a
    copy of it: the same schema as its own migration would give, without the half second that costs per test."""
    from app.ops.migrate import upgrade_database

    path = tmp_path_factory.mktemp("schema") / "migrated.db"
    upgrade_database(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def migrated_postgres():
    """A PostgreSQL database migrated once per test process: the template each test's database is created from."""
    from sqlalchemy.engine import make_url

    from app.ops.migrate import upgrade_database

    require(postgres_answers(), "PostgreSQL (TUNEBOARD_TEST_POSTGRES_URL)")
    url, drop = create_postgres_database(prefix="tuneboard_schema")
    upgrade_database(url)  # its engine has no pool: nobody stays connected, as CREATE DATABASE ... TEMPLATE needs
    yield make_url(url).database
    drop()


@pytest.fixture
def database_url(request, tmp_path):
    """SQLite in the test's directory, or (parametrised "postgresql") a PostgreSQL database of its own; both at the
    newest schema, or empty for a test marked `empty_database`."""
    import sqlite3

    kind = getattr(request, "param", "sqlite")
    empty = request.node.get_closest_marker("empty_database") is not None
    if kind == "sqlite":
        path = tmp_path / "tuneboard.db"
        if not empty:
            with closing(sqlite3.connect(request.getfixturevalue("migrated_sqlite"))) as source, \
                    closing(sqlite3.connect(path)) as copy:
                source.backup(copy)
        yield f"sqlite:///{path}"
        return
    require(postgres_answers(), "PostgreSQL (TUNEBOARD_TEST_POSTGRES_URL)")
    url, drop = create_postgres_database(template=None if empty else request.getfixturevalue("migrated_postgres"))
    yield url
    drop()


@dataclass
class TuneboardEnv:
    data_dir: Path
    database_url: str
    redis_url: str
    queue: str
    env: dict[str, str]  # the environment a subprocess (worker, server) needs
    redis_key_prefix: str = ""

    @property
    def settings(self):
        from app.settings import get_settings

        return get_settings()

    def forget_redis(self) -> int:
        """Delete every Redis key of this install (streams, flags, queues, unacked deliveries): what a Redis restart
        without persistence leaves it, while other tests' keys stay. Returns how many went."""
        return delete_keys(self.redis_url, self.redis_key_prefix)


@pytest.fixture
def tuneboard_env(tmp_path, monkeypatch, database_url, redis_url, redis_key_prefix) -> TuneboardEnv:
    """Settings aimed at this test's data dir, database (at the newest schema) and Redis key prefix, with short
    leases."""
    from app.settings import get_settings

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    queue = f"test-{uuid.uuid4().hex[:8]}"
    values = {
        "TUNEBOARD_DATA_DIR": str(data_dir),
        "TUNEBOARD_DATABASE_URL": database_url,
        "TUNEBOARD_REDIS_URL": redis_url,
        "TUNEBOARD_REDIS_KEY_PREFIX": redis_key_prefix,
        "TUNEBOARD_DEFAULT_QUEUE": queue,
        "TUNEBOARD_LEASE_SECONDS": "6",
        "TUNEBOARD_HEARTBEAT_SECONDS": "1",
        "TUNEBOARD_METRICS_FLUSH_SECONDS": "0.5",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield TuneboardEnv(data_dir, database_url, redis_url, queue, {**os.environ, **values}, redis_key_prefix)
    _close_celery_client()
    get_settings.cache_clear()


def _close_celery_client() -> None:
    """Close the Celery client this test's settings made: one per key prefix, and every test has its own, so a
    long run would otherwise keep a broker connection open per test."""
    fleet_queue = sys.modules.get("app.fleet.queue")
    if fleet_queue is not None and fleet_queue._celery_for.cache_info().currsize:
        fleet_queue.get_celery().close()
        fleet_queue._celery_for.cache_clear()


@pytest.fixture
def start_worker(tuneboard_env, tmp_path):
    """Start real Celery worker processes: start_worker(queues=None, name=None, cold=False, **env) -> WorkerProcess.

    Workers are forked from a Python with the ML stack imported (tests.preloaded); cold=True execs a fresh
    `python -m celery`, as a user's machine starts one, for the tests about that start itself."""
    started: list[WorkerProcess] = []
    counter = itertools.count(1)

    def start(queues: list[str] | None = None, name: str | None = None, cold: bool = False,
              **env: str) -> WorkerProcess:
        name = name or f"w{next(counter)}"
        worker = WorkerProcess({**tuneboard_env.env, **env}, queues or [tuneboard_env.queue], name,
                               tmp_path / f"{name}.log", cold=cold)
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def live_server(tuneboard_env, tmp_path):
    """The web app served by uvicorn in a subprocess, on this test's database and Redis."""
    from tests.services import ServerProcess

    server = ServerProcess(tuneboard_env.env, tmp_path / "server.log")
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama with its own tokenizer and chat template, on disk (built once per session)."""
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def browser(chromium_path):
    """Debian's Chromium, headless, driven by Playwright."""
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        require(False, "playwright (Python package)")
    expect.set_options(timeout=15_000)  # a loaded CI machine answers slower than the 5 s default
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Account:
    """A user in a team, with an API token and a browser session, made straight in the database."""

    email: str
    team_name: str
    user_id: str
    team_id: str
    token: str
    session_cookie: str
    csrf_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


ACCOUNT_PASSWORD = "correct horse 1"


@functools.cache
def _account_password_hash() -> str:
    # Hashed once per test process: an Argon2 hash costs a sixth of a second by design, and hundreds of tests make
    # accounts. Any valid hash of the password signs in as a fresh one would.
    from app.accounts import credentials

    return credentials.hash_password(ACCOUNT_PASSWORD)


def make_account(session_factory, email: str, team_name: str, role: str = "admin") -> Account:
    """Create (or reuse) the user, with password ACCOUNT_PASSWORD, and the team, make the user a member with `role`,
    and sign them in."""
    from app.accounts import users
    from app.tables import Team

    with session_factory() as session:
        user = users.find_user(session, email)
        if user is None:
            user = users.create_user(session, email, commit=False)
            user.password_hash, user.password_set_at = _account_password_hash(), users.now()
            session.commit()
        team = session.query(Team).filter_by(name=team_name).one_or_none() or users.create_team(session, team_name)
        users.set_membership(session, user, team, role)
        _, token = users.create_api_token(session, user, team, "tests")
        browser, cookie = users.start_session(session, user, team)
        return Account(email, team_name, user.id, team.id, token, cookie, browser.csrf_token)


@pytest.fixture
def account(tuneboard_env) -> Account:
    """The admin of team "Alpha" in this test's database."""
    from app.db import new_session

    return make_account(new_session, "alice@example.com", "Alpha")


@pytest.fixture
def make_user(tuneboard_env):
    """make_user(email, team_name, role="member") -> Account, in this test's database."""
    from app.db import new_session

    return lambda email, team_name, role="member": make_account(new_session, email, team_name, role)


def watch_problems(tab) -> list[str]:
    """Collect a tab's page errors and console errors into a list (also set as `tab.problems`).

    htmx logs an aborted request as two console errors (htmx:afterRequest, then htmx:sendAbort). It aborts one
    when the page navigates away or an hx-sync="replace" request replaces it: by design, not a fault, so the
    pair is left out. A failed request (htmx:afterRequest, then htmx:sendError) stays in."""
    problems: list[str] = []

    def on_console(message) -> None:
        if message.type != "error":
            return
        if message.text.startswith("htmx:sendAbort"):
            if problems and problems[-1].startswith("htmx:afterRequest"):
                problems.pop()
            return
        problems.append(message.text)

    tab.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    tab.on("console", on_console)
    tab.problems = problems
    return problems


def signed_in_context(browser, base_url: str, account: Account, **options):
    """A Chromium context whose cookie jar holds the account's session."""
    from app.accounts.auth import SESSION_COOKIE

    context = browser.new_context(base_url=base_url, **options)
    context.add_cookies([{"name": SESSION_COOKIE, "value": account.session_cookie, "url": base_url}])
    return context


S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "tuneboard-test", "AWS_SECRET_ACCESS_KEY": "tuneboard-test-secret",
                  "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (moto's, over HTTP) for the whole test session."""
    try:
        import moto.server  # noqa: F401
    except ImportError:
        require(False, "moto[server] (Python package, the S3-compatible test server)")
    from tests.services import S3ServerProcess

    server = S3ServerProcess(tmp_path_factory.mktemp("s3") / "s3.log")
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, tuneboard_env, monkeypatch):
    """Point this test's Tuneboard (and its subprocesses) at a fresh bucket on the S3 server; yields a boto3
    client and the bucket name for looking inside."""
    import boto3

    from app.settings import get_settings

    bucket = f"tuneboard-{uuid.uuid4().hex[:10]}"
    client = boto3.client("s3", endpoint_url=s3_server.url, region_name="us-east-1",
                          aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    client.create_bucket(Bucket=bucket)
    values = {**S3_CREDENTIALS, "TUNEBOARD_STORAGE_URL": f"s3://{bucket}/artifacts",
              "TUNEBOARD_S3_ENDPOINT_URL": s3_server.url}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    tuneboard_env.env.update(values)
    get_settings.cache_clear()
    yield client, bucket
    get_settings.cache_clear()
