"""The first hour in a real Chromium, as a new user meets it: Enter never launches, a refused launch says why
where the user is looking, the job page shows its phase and figures at once, and every page fits a phone.

Screenshots land in $TUNEBOARD_SCREENSHOTS (default /tmp/shots11) for a person to look at.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tests.service_fixtures import signed_in_context

pytestmark = [pytest.mark.browser, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]
SHOTS = Path(os.environ.get("TUNEBOARD_SCREENSHOTS", "/tmp/shots11"))


def _tab(browser, live_server, account, width: int = 1400, height: int = 900):
    context = signed_in_context(browser, live_server.url, account, viewport={"width": width, "height": height})
    context.set_default_timeout(20_000)
    page = context.new_page()
    page.problems = []
    page.on("pageerror", lambda error: page.problems.append(f"page error: {error}"))
    return context, page


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def _jobs(live_server, account) -> list[dict]:
    return httpx.get(f"{live_server.url}/v1/fine_tuning/jobs", headers=account.headers).json()["data"]


def _with_demo_data(page) -> None:
    page.goto("/")
    page.click("#use-demo-dataset")
    page.wait_for_selector("#dataset-facts")
    page.wait_for_selector("#plan-steps")


def test_enter_in_any_configuration_field_never_launches(browser, live_server, account):
    context, page = _tab(browser, live_server, account)
    _with_demo_data(page)
    launches = []
    page.on("request", lambda r: launches.append(r.url) if "/launch" in r.url else None)
    page.fill("input[name=suffix]", "enter-test")
    fields = page.locator("#config-form input[type=text]:not([hidden]), #config-form input[type=number]")
    names = fields.evaluate_all("els => els.filter(e => e.offsetParent !== null).map(e => e.name)")
    assert {"suffix", "max_steps", "learning_rate", "r"} <= set(names), names
    for name in names:
        if name == "model":
            continue  # Enter in the model picker chooses the model; it is covered by the picker's tests
        page.locator(f"#config-form input[name={name}]").first.press("Enter")
    page.wait_for_timeout(1500)
    assert launches == [], launches
    assert page.url.rstrip("/") == live_server.url.rstrip("/")
    assert _jobs(live_server, account) == []
    # The explicit click still launches.
    page.click("#launch")
    page.wait_for_url("**/jobs/ftjob-*")
    assert len(_jobs(live_server, account)) == 1
    assert not page.problems, page.problems
    context.close()


def test_failed_launch_shows_its_reason_at_the_button_keeps_the_url_and_every_value(browser, live_server, account):
    context, page = _tab(browser, live_server, account)
    _with_demo_data(page)
    page.fill("input[name=suffix]", "keep-me")
    page.fill("input[name=max_steps]", "7")
    page.fill("input[name=learning_rate]", "-1")
    page.select_option("select[name=lr_scheduler]", "cosine")
    page.fill("#r", "32")
    page.wait_for_timeout(600)
    page.click("#launch")
    problems = page.locator("#launch-problems")
    expect(problems).to_be_visible()
    expect(problems).to_contain_text("learning rate")
    assert page.evaluate("document.activeElement.id") == "launch-problems"
    box = problems.bounding_box()
    assert 0 <= box["y"] and box["y"] + box["height"] <= 900, box  # in the viewport, not 1,300 px below
    _shot(page, "08-failed-launch")
    assert page.url.rstrip("/") == live_server.url.rstrip("/"), "the address bar must stay the configuration page"
    assert page.input_value("input[name=suffix]") == "keep-me"
    assert page.input_value("input[name=max_steps]") == "7"
    assert page.input_value("input[name=learning_rate]") == "-1"
    assert page.input_value("select[name=lr_scheduler]") == "cosine"
    assert page.input_value("#r") == "32"
    assert "demo_chat.jsonl" in page.locator("#training_file option:checked").inner_text()
    assert _jobs(live_server, account) == []
    page.reload()
    expect(page.locator("#config-form")).to_be_visible()
    # The no-script answer's URL (/launch) reloads to the configuration page, never a JSON 405.
    response = page.goto("/launch")
    assert response.ok and page.url.rstrip("/") == live_server.url.rstrip("/")
    assert not page.problems, page.problems
    context.close()
