"""A mistyped model id answers within seconds, tells a typo (the hub says 404) from being offline, keeps the
form the user filled in, and suggests catalog models with a similar name.

There is no network here: with HF_HUB_OFFLINE (the tests' setting) every new hub id takes the offline path.
The typo path asks a stand-in hub, a real HTTP server on 127.0.0.1 that answers as huggingface.co does for a
repository that does not exist (404, X-Error-Code: RepoNotFound), reached through HF_ENDPOINT.
"""

from __future__ import annotations

import http.server
import os
import threading
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tests.service_fixtures import signed_in_context
from tests.services import ServerProcess

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
SHOTS = Path(os.environ.get("TUNEBOARD_SCREENSHOTS", "/tmp/shots11"))
ESTIMATE = "/v1/fine_tuning/estimate"


def _tab(browser, live_server, account):
    context = signed_in_context(browser, live_server.url, account, viewport={"width": 1400, "height": 900})
    context.set_default_timeout(20_000)
    page = context.new_page()
    page.problems = []
    page.on("pageerror", lambda error: page.problems.append(f"page error: {error}"))
    return context, page


def _type_model(page, model_id: str) -> float:
    """Type a model id and press Enter; seconds until the page answered."""
    started = time.monotonic()
    page.fill("#model", model_id)
    page.press("#model", "Enter")
    expect(page.locator("#inventory-unavailable")).to_be_visible()
    return time.monotonic() - started


@pytest.mark.browser
def test_a_mistyped_model_id_offline_answers_in_seconds_keeps_the_form_and_suggests_the_catalog_model(
        browser, live_server, account):
    context, page = _tab(browser, live_server, account)
    page.goto("/")
    expect(page.locator("#peft-line")).to_be_visible()
    page.fill("#r", "32")
    page.fill("input[name=suffix]", "my-run")
    page.fill("input[name=max_steps]", "30")
    page.wait_for_timeout(500)
    seconds = _type_model(page, "HuggingFaceTB/SmolLM2-135M-Instrct")
    notice = page.locator("#inventory-unavailable")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "09-model-typo-offline.png"))
    assert seconds < 5, f"took {seconds:.1f} s"
    text = notice.inner_text()
    assert "Offline" in text and "cannot look up" in text and "HuggingFaceTB/SmolLM2-135M-Instrct" in text
    assert "OSError" not in text and "couldn't connect" not in text
    # The form stays as the user filled it.
    for selector in ("#r", "#launch", "#block-diagram", "input[name=suffix]"):
        expect(page.locator(selector)).to_be_visible()
    assert page.input_value("#r") == "32" and page.input_value("input[name=suffix]") == "my-run"
    assert page.input_value("input[name=max_steps]") == "30"
    assert page.input_value("#model") == "HuggingFaceTB/SmolLM2-135M-Instrct"
    # The catalog model with the closest name is one click away.
    suggestion = page.locator('[data-suggest-model="HuggingFaceTB/SmolLM2-135M-Instruct"]')
    expect(suggestion).to_be_visible()
    suggestion.click()
    expect(page.locator("#peft-line")).to_be_visible()
    expect(page.locator("#inventory-unavailable")).to_have_count(0)
    assert page.input_value("#model") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert page.input_value("#r") == "32" and page.input_value("input[name=suffix]") == "my-run"

    _type_model(page, "meta-llama/Llama-3.1-8b-instruct")
    expect(page.locator('[data-suggest-model="meta-llama/Llama-3.1-8B"]')).to_be_visible()
    assert not page.problems, page.problems
    context.close()


def test_the_api_says_offline_at_once_for_an_unknown_hub_id(live_server, account):
    started = time.monotonic()
    response = httpx.post(f"{live_server.url}{ESTIMATE}", json={"model": "HuggingFaceTB/SmolLM2-135M-Instrct"},
                          headers=account.headers, timeout=30)
    assert time.monotonic() - started < 5
    error = response.json()["error"]
    assert response.status_code == 404 and error["code"] == "hub_unreachable", response.text
    assert "Offline" in error["message"] and "HuggingFaceTB/SmolLM2-135M-Instruct" in error["message"]


class _NoSuchRepo(http.server.BaseHTTPRequestHandler):
    """Answers every request as the hub answers for a repository that does not exist."""

    def do_GET(self):  # noqa: N802 - the stdlib's name
        body = b'{"error":"Repository not found"}'
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def hub_that_knows_nothing():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NoSuchRepo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_typo_the_hub_denies_is_refused_as_not_found_with_the_catalog_suggestion(
        tuneboard_env, account, hub_that_knows_nothing, tmp_path):
    env = {**tuneboard_env.env, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub_that_knows_nothing}
    server = ServerProcess(env, tmp_path / "server.log")
    try:
        server.wait_ready()
        started = time.monotonic()
        response = httpx.post(f"{server.url}{ESTIMATE}", json={"model": "meta-llama/Llama-3.1-8b-instruct"},
                              headers=account.headers, timeout=30)
        assert time.monotonic() - started < 5
        error = response.json()["error"]
        assert response.status_code == 404 and error["code"] == "model_not_found", response.text
        assert "No model 'meta-llama/Llama-3.1-8b-instruct' on the Hugging Face hub" in error["message"]
        assert "meta-llama/Llama-3.1-8B" in error["message"] and "Offline" not in error["message"]
        page = httpx.post(f"{server.url}/configure", data={"model": "meta-llama/Llama-3.1-8b-instruct"},
                          headers={**account.headers, "HX-Request": "true"}, timeout=30).text
        assert 'data-suggest-model="meta-llama/Llama-3.1-8B"' in page
    finally:
        server.stop()
