"""The job page in real Chromium while a real worker trains: points arrive on the chart, a reload
mid-run picks the curve up again with no gap or duplicate, and the finished job offers its adapter."""

from __future__ import annotations

import os

import httpx
import pytest

from tests.jobs.helpers import chat_records, json_lines, wait_for_inventory
from tests.service_fixtures import signed_in_context

STEPS = 600


@pytest.mark.browser
def test_live_curve_survives_a_reload_and_ends_complete(browser, live_server, start_worker, tiny_model_dir,
                                                        tuneboard_env, account):
    wait_for_inventory(str(tiny_model_dir), tuneboard_env.settings)
    start_worker()
    api = httpx.Client(base_url=live_server.url, timeout=30, headers=account.headers)
    file_id = api.post("/v1/files", files={"file": ("train.jsonl", json_lines(chat_records(32)))},
                       data={"purpose": "fine-tune"}).json()["id"]
    job = api.post("/v1/fine_tuning/jobs", json={
        "model": str(tiny_model_dir), "training_file": file_id, "suffix": "live-curve",
        "lora": {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]},
        "training": {"max_steps": STEPS, "batch_size": 4, "learning_rate": 3e-3, "sequence_length": 64,
                     "precision": "fp32", "save_steps": 200, "lr_scheduler": "constant"},
    }).json()

    context = signed_in_context(browser, live_server.url, account, viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(f"/jobs/{job['id']}")
    steps = "() => window.tuneboardJob.steps()"
    page.wait_for_function("() => window.tuneboardJob && window.tuneboardJob.steps().length >= 20", timeout=60_000)
    before = page.evaluate(steps)
    assert before == list(range(1, len(before) + 1))
    assert page.locator("#progress-step").inner_text().endswith(f"/ {STEPS}")

    page.reload()
    page.wait_for_function(f"() => window.tuneboardJob.steps().length > {len(before)}", timeout=60_000)
    after = page.evaluate(steps)
    assert after == list(range(1, len(after) + 1)), "a gap or a duplicate after the reload"
    assert api.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "running", "reloaded after the run"

    page.wait_for_selector("#job-result", timeout=240_000)
    page.wait_for_function(f"() => window.tuneboardJob.steps().length === {STEPS}", timeout=30_000)
    assert page.evaluate(steps) == list(range(1, STEPS + 1))
    assert page.locator("#job-status").inner_text() == "succeeded"
    assert page.locator("#download-adapter").get_attribute("href") == f"/v1/fine_tuning/jobs/{job['id']}/adapter"
    assert int(page.locator("#loss-chart").get_attribute("data-points")) == STEPS
    assert not problems, problems
    shots = os.environ.get("TUNEBOARD_SCREENSHOT_DIR")
    if shots:
        page.screenshot(path=os.path.join(shots, "job.png"), full_page=True)
    context.close()
