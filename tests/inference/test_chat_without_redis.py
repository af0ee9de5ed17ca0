"""A chat completion while Redis (which carries requests to the inference workers) is down: a 503 that names Redis,
never a 500, on the embedded Redis's port with nothing listening."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.services import free_port


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_chat_completion_with_redis_down_is_a_503_naming_redis(tuneboard_env, account, monkeypatch):
    from app.main import create_app
    from app.settings import get_settings

    monkeypatch.setenv("TUNEBOARD_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    get_settings.cache_clear()
    with TestClient(create_app(), headers=account.headers) as client:
        for stream in (False, True):
            answer = client.post("/v1/chat/completions", json={
                "model": "HuggingFaceTB/SmolLM2-135M-Instruct", "stream": stream,
                "messages": [{"role": "user", "content": "hi"}]})
            assert answer.status_code == 503, answer.text
            error = answer.json()["error"]
            assert error["code"] == "redis_unavailable" and "Redis" in error["message"]
    get_settings.cache_clear()
