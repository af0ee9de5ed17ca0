"""The first hour in a real Chromium, as a new user meets it: Enter never launches, a refused launch says why
where the user is looking, the job page shows its phase and figures at once, and every page fits a phone.

Screenshots land in $TUNEBOARD_SCREENSHOTS (default /tmp/shots11) for a person to look at.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import parse_qs

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


def _settled(page) -> None:
    """Once the page's fonts are in and two frames were laid out: what a measurement of its width needs."""
    page.evaluate("() => document.fonts.ready.then(() => new Promise(done => "
                  "requestAnimationFrame(() => requestAnimationFrame(done))))")


def _edit_and_wait_for_its_estimate(page, selector: str, value: str, field: str) -> None:
    """Fill a field, then wait until the estimate the edit triggers (debounced) is back and swapped in."""
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/estimate")
                              and parse_qs(r.request.post_data or "").get(field) == [value]):
        page.fill(selector, value)
    expect(page.locator("#config-form")).not_to_have_class(re.compile(r"\bhtmx-request\b"))
    expect(page.locator("#estimate")).not_to_have_class(re.compile(r"\bhtmx-(swapping|settling)\b"))


def _with_demo_data(page) -> None:
    page.goto("/")
    page.click("#use-demo-dataset")
    page.wait_for_selector("#dataset-facts")
    page.wait_for_selector("#plan-steps")


def test_an_edit_while_the_preview_is_prepared_gets_its_estimate_and_the_preview_still_ends(browser, live_server,
                                                                                            account):
    """The preview polls every second while the model's tokenizer loads; the estimate of an edit made meanwhile
    must not be cancelled by a poll (the numbers would stay those of the old value), nor cancel one (the spinner
    would never end). Each estimate is held back 2.5 s here, so that a poll always starts while it is in flight."""
    import time

    context, page = _tab(browser, live_server, account)
    cancelled = []
    page.on("requestfailed", lambda request: cancelled.append(request.url))
    page.goto("/")
    page.route("**/estimate", lambda route: (time.sleep(2.5), route.continue_()))
    page.click("#use-demo-dataset")
    expect(page.locator("#dataset-preview .spinner")).to_have_count(1)  # being prepared: polls are coming
    _edit_and_wait_for_its_estimate(page, "#r", "32", "r")
    expect(page.locator("#dataset-preview .spinner")).to_have_count(0, timeout=90_000)
    expect(page.locator("#preview-tokens")).to_be_visible()
    assert cancelled == [], cancelled
    assert not page.problems, page.problems
    context.close()


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
    page.wait_for_timeout(1500)  # the scenario: a moment in which no launch may start
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
    _edit_and_wait_for_its_estimate(page, "#r", "32", "r")
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


def _box(page, selector: str) -> dict:
    """The element's box once it is laid out, read in one step: the job page swaps its summary in again when the
    live stream first reports, so a box read in two steps could meet the element between removal and insertion."""
    handle = page.wait_for_function(
        """selector => { const element = document.querySelector(selector);
                         const box = element && element.getBoundingClientRect();
                         return box && box.height > 0 ? {top: box.top, bottom: box.bottom} : null; }""", arg=selector)
    return handle.json_value()


def _queued_job(live_server, account, suffix: str) -> str:
    from tests.jobs.helpers import chat_records, json_lines

    upload = httpx.post(f"{live_server.url}/v1/files", headers=account.headers, data={"purpose": "fine-tune"},
                        files={"file": ("train.jsonl", json_lines(chat_records(8)))}).json()
    job = httpx.post(f"{live_server.url}/v1/fine_tuning/jobs", headers=account.headers, json={
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct", "training_file": upload["id"], "suffix": suffix})
    assert job.status_code == 200, job.text
    return job.json()["id"]


def _store(job_id: str, *, status: str, step: int, total_steps: int | None, events=(), metrics=()) -> None:
    """Put a job in the state a worker leaves it in (status, progress, events, metric rows), in the database."""
    from app.db import new_session
    from app.tables import Event, Job, Metric

    with new_session() as session:
        job = session.get(Job, job_id)
        job.status, job.step, job.total_steps = status, step, total_steps
        job.started_at = job.created_at + 1
        session.add_all(Event(job_id=job_id, message=m) for m in events)
        session.add_all(Metric(job_id=job_id, **m) for m in metrics)
        session.commit()


def test_job_page_before_the_first_step_shows_its_phase_at_the_top_and_no_blank_charts(browser, live_server,
                                                                                        account):
    first = _queued_job(live_server, account, "first")
    second = _queued_job(live_server, account, "second")
    context, page = _tab(browser, live_server, account)
    page.goto(f"/jobs/{second}")
    phase = page.locator("#job-phase")
    expect(phase).to_contain_text("Queued at position 2")
    assert _box(page, "#job-phase")["top"] < 300, "the phase belongs at the top"
    expect(page.locator("#chart-empty")).to_be_visible()
    assert _box(page, "#chart-empty")["bottom"] < 900, "the waiting note must be in view"
    expect(page.locator("#loss-chart canvas")).to_have_count(0)
    expect(page.locator("#chart-pair")).to_be_hidden()
    expect(page.locator("#progress-step")).to_have_text("—")
    _shot(page, "12-queued")
    # Running, model loaded: the phase says tokenizing.
    _store(first, status="running", step=0, total_steps=None,
           events=["Started on worker w1 (attempt 1 of 3).", "Loaded SmolLM2 in 2.0 s (float32, cpu)."])
    page.goto(f"/jobs/{first}")
    expect(page.locator("#job-phase")).to_contain_text("Tokenizing")
    # Cancelled before it started: no "ETA done".
    httpx.post(f"{live_server.url}/v1/fine_tuning/jobs/{second}/cancel", headers=account.headers)
    page.goto(f"/jobs/{second}")
    expect(page.locator("#job-status")).to_have_text("cancelled")
    expect(page.locator("#progress-eta")).to_have_text("—")
    expect(page.locator("#job-phase")).to_have_count(0)
    assert not page.problems, page.problems
    context.close()


def test_returning_to_a_running_job_fills_every_figure_from_stored_data_at_once(browser, live_server, account):
    job_id = _queued_job(live_server, account, "mid-run")
    base = 1_700_000_000.0
    metrics = [{"step": s, "loss": 3.0 - 0.1 * s, "learning_rate": 2e-4 * (1 - s / 20), "grad_norm": 1.5,
                "tokens_per_second": 1234.0 + s, "epoch": s / 20, "created_at": base + 2 * s} for s in range(1, 6)]
    _store(job_id, status="running", step=5, total_steps=20, metrics=metrics)
    context, page = _tab(browser, live_server, account)
    page.goto(f"/jobs/{job_id}")
    # Rendered with the page, before any new step: 2 s a step, 15 steps to go.
    expect(page.locator("#progress-loss")).to_have_text("2.5000")
    expect(page.locator("#progress-tps")).to_have_text("1,239")
    expect(page.locator("#progress-eta")).to_have_text("30s")
    expect(page.locator("#progress-step")).to_have_text("5 / 20")
    expect(page.locator("#job-phase")).to_have_count(0)
    page.wait_for_function("() => window.tuneboardJob && window.tuneboardJob.steps().length === 5")
    expect(page.locator("#loss-chart canvas")).to_have_count(1)
    _shot(page, "12-mid-run")
    _assert_readable_charts(page)
    assert not page.problems, page.problems
    context.close()


PHONE = 400


def _overflow(page) -> int:
    return page.evaluate("document.scrollingElement.scrollWidth")


# The elements that stick out past the viewport's right edge, for the failure message.
_OFFENDERS = """() => [...document.querySelectorAll("body *")].filter((el) => {
  const box = el.getBoundingClientRect();
  return box.width > 0 && box.right > document.documentElement.clientWidth + 0.5;
}).slice(0, 8).map((el) =>
  `${el.tagName.toLowerCase()}#${el.id}.${el.className} right=${Math.round(el.getBoundingClientRect().right)}`)"""


def test_every_page_fits_a_400px_phone(browser, live_server, account):
    first = _queued_job(live_server, account, "phone-one")
    second = _queued_job(live_server, account, "phone-two")
    context, page = _tab(browser, live_server, account, width=PHONE, height=800)
    widths = {}
    for path, ready in [("/", "#peft-line"), ("/jobs", "#history-results"), (f"/jobs/{first}", "#job-status"),
                        (f"/compare?ids={first},{second}", "main"), ("/account", "main"), ("/team", "main"),
                        ("/docs", "#swagger-ui .information-container")]:
        page.goto(path)
        page.wait_for_selector(ready)
        _settled(page)
        width = _overflow(page)
        widths[path] = width if width <= PHONE else (width, page.evaluate(_OFFENDERS))
        _shot(page, "14-phone" + path.split("?")[0].replace("/", "-").rstrip("-"))
    assert all(width == PHONE for width in widths.values()), widths
    # The top bar keeps Team, the account and Sign out on screen.
    page.goto("/")
    for selector in ("a[href='/team']", "#account-link", "#sign-out"):
        box = page.locator(selector).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE, (selector, box)
    # The account and team pages: padded, their inputs styled like the rest of the app.
    page.goto("/account")
    main = page.locator("main").bounding_box()
    padding = page.evaluate("parseFloat(getComputedStyle(document.querySelector('main')).paddingLeft)")
    assert main["x"] >= 12 or padding >= 12
    border = page.locator("input[name=current_password]").evaluate("e => getComputedStyle(e).borderTopColor")
    assert border == "rgb(207, 212, 220)", border
    page.goto("/team")
    assert page.locator("input[type=email]").evaluate("e => getComputedStyle(e).borderTopColor") == "rgb(207, 212, 220)"
    # /docs leads back to the app, and offers Authorize for an API token.
    page.goto("/docs")
    expect(page.locator("#back-to-app")).to_have_attribute("href", "/")
    expect(page.locator(".btn.authorize")).to_be_visible()
    context.close()
    context, signed_out = browser.new_context(base_url=live_server.url, viewport={"width": PHONE, "height": 800}), None
    signed_out = context.new_page()
    signed_out.goto("/login")
    assert _overflow(signed_out) <= PHONE
    context.close()


# What uPlot drew on its canvases (ticks, axis widths), read from the plots the page exposes for tests.
_AXES = """() => window.tuneboardJob.plots().map((plot) => plot.axes.map((axis) => {
  const context = document.createElement("canvas").getContext("2d");
  context.font = Array.isArray(axis.font) ? axis.font[0] : axis.font;
  const values = (axis._values || []).filter((v) => v !== null && v !== "");
  return { values, size: axis._size, widest: Math.max(0, ...values.map((v) => context.measureText(v).width)) };
}))"""


def _assert_readable_charts(page) -> None:
    """Whole-step ticks, learning-rate labels that fit their axis, legends without "--"."""
    loss_axes, lr_axes = page.evaluate(_AXES)
    for axes in (loss_axes, lr_axes):
        assert axes[0]["values"] and all(float(v).is_integer() for v in axes[0]["values"]), axes[0]
    lr_axis = lr_axes[1]
    assert any("e-4" in v for v in lr_axis["values"]), lr_axis
    # uPlot draws a label after the tick (10 px) and a gap (5 px): the rest of the axis must hold it.
    assert lr_axis["size"] >= lr_axis["widest"] + 15, f"learning-rate labels clipped: {lr_axis}"
    legends = page.locator(".u-legend").all_inner_texts()
    assert legends and not any("--" in text for text in legends), legends
