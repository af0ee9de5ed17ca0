"""Launching from the configuration page in real Chromium: pick the demo dataset, see the run's length,
set the knobs, press Launch, land on the job's page with the job queued and its settings stored."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.service_fixtures import signed_in_context


@pytest.mark.browser
def test_demo_dataset_then_launch_opens_the_queued_job(browser, live_server, account):
    context = signed_in_context(browser, live_server.url, account, viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto("/")
    page.click("#use-demo-dataset")
    page.wait_for_selector("#dataset-facts")
    assert "demo_chat.jsonl" in page.locator("#dataset-facts").inner_text()
    # 192 examples, none held out, batch 4 -> 48 steps an epoch; the default is 3 epochs.
    page.wait_for_selector("#plan-steps")
    assert page.locator("#plan-steps").inner_text() == "144"
    page.fill("input[name=max_steps]", "25")
    page.fill("input[name=suffix]", "from-the-page")
    page.wait_for_function("() => document.querySelector('#plan-steps').textContent === '25'")
    page.click("#launch")
    page.wait_for_url(re.compile(r".*/jobs/ftjob-[A-Za-z0-9]+$"))
    assert page.locator("#job-status").inner_text() == "queued"
    assert page.locator(".job-title h1").inner_text() == "from-the-page"
    job_id = page.url.rsplit("/", 1)[-1]
    job = httpx.get(f"{live_server.url}/v1/fine_tuning/jobs/{job_id}", headers=account.headers).json()
    assert job["training"]["max_steps"] == 25 and job["lora"]["r"] == 16
    assert job["estimate"]["trainable_params"] == 4_884_480
    assert not problems, problems
    context.close()
