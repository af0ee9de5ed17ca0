"""Fixtures for the web tests: an in-process client with its own data dir, a live uvicorn server, Chromium pages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.settings import REPO_ROOT, Settings, get_settings
from tests.service_fixtures import make_account, signed_in_context, watch_problems
from tests.services import delete_keys, free_port, redis_database_url

LIVE_ACCOUNTS: dict = {}
LIVE_REDIS: dict = {}  # base URL -> (Redis URL, key prefix) of that live server's install


def wait_until(check, timeout: float = 120.0, interval: float = 0.3, shown=None):
    """Call `check` until it returns something truthy; fail after `timeout` seconds, with what `shown()` returns."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    pytest.fail(f"still not done after {timeout:.0f}s" + (f": {shown()}" if shown else ""))


@pytest.fixture
def settings(tuneboard_env) -> Settings:
    """Settings with a data directory, database and Redis of this test's own (inventory caches start cold)."""
    return tuneboard_env.settings


@pytest.fixture
def client(settings, account):
    """The web app in-process, using `settings`, signed in with an API token."""
    from app.main import create_app

    app = create_app()
    app.dependency_overrides[get_settings] = lambda: settings
    with TestClient(app, headers=account.headers) as test_client:
        yield test_client


@pytest.fixture
def tiny_llama_dir(tmp_path) -> Path:
    """A local model directory holding only a config.json: a 2-layer Llama with untied embeddings."""
    directory = tmp_path / "tiny-llama"
    directory.mkdir()
    config = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 160,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
        "max_position_embeddings": 256, "tie_word_embeddings": False,
    }
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def live_server(tmp_path_factory, redis_server_url) -> str:
    """`uvicorn app.main:app` in a subprocess on a free port, with a fresh data dir and a Redis key prefix of its
    own on the test Redis (not whatever answers on the embedded Redis's default port); yields its base URL."""
    data_dir = tmp_path_factory.mktemp("server-data")
    port = free_port()
    log_path = data_dir / "uvicorn.log"
    redis_url = redis_database_url(redis_server_url)
    prefix = f"tbtest-{uuid.uuid4().hex[:8]}:"
    env = {**os.environ, "TUNEBOARD_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "TUNEBOARD_REDIS_URL": redis_url,
           "TUNEBOARD_REDIS_KEY_PREFIX": prefix}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _answers(f"{base_url}/healthz"):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"uvicorn did not come up:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.2)
        # The server migrated its database on start; sign a user in there for the browser tests.
        from sqlalchemy.orm import sessionmaker

        from app.db import engine_for

        engine = engine_for(f"sqlite:///{(data_dir / 'tuneboard.db').resolve()}")
        LIVE_ACCOUNTS[base_url] = make_account(sessionmaker(bind=engine, expire_on_commit=False),
                                               "browser@example.com", "Browsers")
        LIVE_REDIS[base_url] = (redis_url, prefix)
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=15)
        delete_keys(redis_url, prefix)


@pytest.fixture
def page(browser, live_server):
    """A fresh 1400px-wide tab on the live server; `page.problems` collects console errors and page errors."""
    context = signed_in_context(browser, live_server, LIVE_ACCOUNTS[live_server],
                                viewport={"width": 1400, "height": 900})
    context.set_default_timeout(15_000)
    tab = context.new_page()
    watch_problems(tab)
    yield tab
    context.close()
