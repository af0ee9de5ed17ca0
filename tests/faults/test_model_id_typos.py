"""A mistyped model id answers within seconds, tells a typo (the hub says 404) from being offline, keeps the
form the user filled in, and suggests catalog models with a similar name.

"Within seconds" is checked as the path the answer took, not as a stopwatch (which a busy machine fails): the
slow path was a child process importing the ML stack to build an inventory and timing out on the hub (~38 s).
The fast path starts no child (no inventory log in the data dir), and asks the hub at most once, with the
lookup's bounded timeout (offline: not at all, which its message says).

There is no network here: with HF_HUB_OFFLINE (the tests' setting) every new hub id takes the offline path.
The typo path asks a stand-in hub, a real HTTP server on 127.0.0.1 that answers as huggingface.co does for a
repository that does not exist (404, X-Error-Code: RepoNotFound), reached through HF_ENDPOINT.
"""

from __future__ import annotations

import http.server
import os
import re
import threading
from pathlib import Path
from urllib.parse import parse_qs

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


def _type_model(page, model_id: str) -> None:
    """Type a model id and press Enter; returns once the page answered."""
    page.fill("#model", model_id)
    page.press("#model", "Enter")
    expect(page.locator("#inventory-unavailable")).to_be_visible()


def _no_inventory_process_started(data_dir: Path) -> bool:
    """Whether no inventory child ran: each one writes its output to a log beside its result."""
    return not list((data_dir / "inventories").glob("*.log"))


@pytest.mark.browser
def test_a_mistyped_model_id_offline_answers_in_seconds_keeps_the_form_and_suggests_the_catalog_model(
        browser, live_server, account, tuneboard_env):
    context, page = _tab(browser, live_server, account)
    page.goto("/")
    expect(page.locator("#peft-line")).to_be_visible()
    page.fill("#r", "32")
    page.fill("input[name=suffix]", "my-run")
    # The estimate these edits trigger (debounced) is back before the model changes under it.
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/estimate")
                              and parse_qs(r.request.post_data or "").get("max_steps") == ["30"]):
        page.fill("input[name=max_steps]", "30")
    expect(page.locator("#config-form")).not_to_have_class(re.compile(r"\bhtmx-request\b"))
    _type_model(page, "HuggingFaceTB/SmolLM2-135M-Instrct")
    notice = page.locator("#inventory-unavailable")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "09-model-typo-offline.png"))
    text = notice.inner_text()
    assert "Offline" in text and "cannot look up" in text and "HuggingFaceTB/SmolLM2-135M-Instrct" in text
    # The fast path: the hub was not even asked (offline), and no inventory process was started.
    assert "HF_HUB_OFFLINE is set" in text and _no_inventory_process_started(tuneboard_env.data_dir)
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


def test_the_api_says_offline_at_once_for_an_unknown_hub_id(live_server, account, tuneboard_env):
    response = httpx.post(f"{live_server.url}{ESTIMATE}", json={"model": "HuggingFaceTB/SmolLM2-135M-Instrct"},
                          headers=account.headers, timeout=30)
    error = response.json()["error"]
    assert response.status_code == 404 and error["code"] == "hub_unreachable", response.text
    assert "Offline" in error["message"] and "HuggingFaceTB/SmolLM2-135M-Instruct" in error["message"]
    # At once: the hub is not asked when offline, and no inventory process is started.
    assert "HF_HUB_OFFLINE is set" in error["message"] and _no_inventory_process_started(tuneboard_env.data_dir)


class _NoSuchRepo(http.server.BaseHTTPRequestHandler):
    """Answers every request as the hub answers for a repository that does not exist, and counts them."""

    asked: list[str]

    def do_GET(self):  # the stdlib's name
        self.asked.append(f"{self.command} {self.path}")
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
    """The stand-in hub's address, and the requests it was sent."""
    asked: list[str] = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("Hub", (_NoSuchRepo,), {"asked": asked}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", asked
    server.shutdown()


def test_a_typo_the_hub_denies_is_refused_as_not_found_with_the_catalog_suggestion(
        tuneboard_env, account, hub_that_knows_nothing, tmp_path):
    hub, asked = hub_that_knows_nothing
    env = {**tuneboard_env.env, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub}
    server = ServerProcess(env, tmp_path / "server.log")
    try:
        server.wait_ready()
        response = httpx.post(f"{server.url}{ESTIMATE}", json={"model": "meta-llama/Llama-3.1-8b-instruct"},
                              headers=account.headers, timeout=30)
        error = response.json()["error"]
        assert response.status_code == 404 and error["code"] == "model_not_found", response.text
        assert "No model 'meta-llama/Llama-3.1-8b-instruct' on the Hugging Face hub" in error["message"]
        assert "meta-llama/Llama-3.1-8B" in error["message"] and "Offline" not in error["message"]
        page = httpx.post(f"{server.url}/configure", data={"model": "meta-llama/Llama-3.1-8b-instruct"},
                          headers={**account.headers, "HX-Request": "true"}, timeout=30).text
        assert 'data-suggest-model="meta-llama/Llama-3.1-8B"' in page
        # Within seconds: one question to the hub (under the lookup's own time limit), remembered for the page's
        # request too, and no inventory process, whose start was the slow path.
        assert [a for a in asked if "/api/models/" in a] == ["GET /api/models/meta-llama/Llama-3.1-8b-instruct"], asked
        assert _no_inventory_process_started(tuneboard_env.data_dir)
    finally:
        server.stop()
