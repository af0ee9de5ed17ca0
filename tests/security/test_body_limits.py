"""JSON and form request bodies have a size limit (TUNEBOARD_MAX_JSON_BODY_BYTES), enforced while they arrive.

Over real HTTP against uvicorn: a body that declares its length, and a chunked one that declares nothing, are
both refused with a 413 in the error envelope naming the limit; a multipart upload larger than that limit is
not (uploads have their own limit and are streamed to the store).
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.jobs.helpers import chat_records, json_lines

pytestmark = pytest.mark.one_database  # request sizes: refused before the database

LIMIT = 4096
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture
def small_json_limit(tuneboard_env, monkeypatch):
    """A 4 KiB JSON body limit for the server this test starts."""
    from app.settings import get_settings

    monkeypatch.setenv("TUNEBOARD_MAX_JSON_BODY_BYTES", str(LIMIT))
    tuneboard_env.env["TUNEBOARD_MAX_JSON_BODY_BYTES"] = str(LIMIT)
    get_settings.cache_clear()


def estimate_body(padding: int) -> bytes:
    """A valid estimate request, made `padding` bytes longer by whitespace the JSON parser skips."""
    body = json.dumps({"model": MODEL, "lora": {"r": 8, "target_modules": ["q_proj"]}})
    return body[:-1].encode() + b" " * padding + b"}"


def assert_too_large(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "request_too_large"
    assert f"{LIMIT} bytes" in error["message"] and "TUNEBOARD_MAX_JSON_BODY_BYTES" in error["message"]


def test_json_body_over_the_limit_is_refused_with_a_413_naming_it(small_json_limit, live_server, account):
    with httpx.Client(base_url=live_server.url, headers=account.headers, timeout=30) as client:
        fits = client.post("/v1/fine_tuning/estimate", content=estimate_body(LIMIT // 2),
                           headers={"content-type": "application/json"})
        assert fits.status_code == 200, fits.text
        assert_too_large(client.post("/v1/fine_tuning/estimate", content=estimate_body(LIMIT * 4),
                                     headers={"content-type": "application/json"}))
        # The server still answers afterwards.
        assert client.get("/v1/models").status_code == 200


def test_chunked_json_body_without_a_length_is_counted_as_it_arrives(small_json_limit, live_server, account):
    sent = []

    def chunks():
        # 64 KiB in 1 KiB chunks: far past the limit, and no Content-Length to trust or to lie with.
        for _ in range(64):
            sent.append(1024)
            yield b" " * 1024

    with httpx.Client(base_url=live_server.url, headers=account.headers, timeout=30) as client:
        response = client.post("/v1/fine_tuning/estimate", content=chunks(),
                               headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_too_large(response)


def test_a_large_form_post_to_a_page_is_refused_too(small_json_limit, live_server, account):
    cookies = {"tuneboard_session": account.session_cookie}
    with httpx.Client(base_url=live_server.url, cookies=cookies, timeout=30) as client:
        response = client.post("/estimate", data={"csrf_token": account.csrf_token, "model": MODEL,
                                                  "suffix": "x" * (LIMIT * 2)})
    assert_too_large(response)


def test_multipart_upload_larger_than_the_json_limit_is_not_limited_by_it(small_json_limit, live_server, account):
    data = json_lines(chat_records(200))
    assert len(data) > LIMIT * 4
    with httpx.Client(base_url=live_server.url, headers=account.headers, timeout=60) as client:
        response = client.post("/v1/files", data={"purpose": "fine-tune"},
                               files={"file": ("train.jsonl", data, "application/jsonl")})
    assert response.status_code == 200, response.text
    assert response.json()["bytes"] == len(data)
