"""Fixtures the job tests share: the app in-process, signed in with the account's API token, and the tiny
model with its inventory computed (so a launch carries its estimate)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.jobs.helpers import wait_for_inventory


@pytest.fixture
def client(tuneboard_env, account):
    """The app in-process (a fresh instance on this test's settings), calling with the account's API token."""
    from app.main import create_app

    with TestClient(create_app(), headers=account.headers, follow_redirects=False) as test_client:
        yield test_client


@pytest.fixture
def model_dir(tiny_model_dir, tuneboard_env) -> str:
    """The tiny Llama's directory, its module inventory already computed."""
    wait_for_inventory(str(tiny_model_dir), tuneboard_env.settings)
    return str(tiny_model_dir)
