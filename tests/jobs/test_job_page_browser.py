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
    # Guarded: right after the reload the page's deferred script may not have defined it yet.
    page.wait_for_function(f"() => window.tuneboardJob && window.tuneboardJob.steps().length > {len(before)}",
                           timeout=60_000)
    after = page.evaluate(steps)
    assert after == list(range(1, len(after) + 1)), "a gap or a duplicate after the reload"
    assert api.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "running", "reloaded after the run"

    page.wait_for_selector("#job-result", timeout=420_000)  # 600 steps on a loaded 2-core machine
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


@pytest.mark.browser
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_resume_while_the_page_is_open_replaces_the_lost_steps(browser, live_server, tuneboard_env, account):
    """The page has steps 1..44 from the database and 45 from the stream when the worker dies; the job resumes
    from checkpoint 40 and logs 41.. again: the chart must show the new attempt's points, once each."""
    from app import redis_client
    from app.db import new_session
    from app.jobs import lifecycle, streams
    from app.tables import DataFile, Job, Metric

    with new_session() as session:
        data_file = DataFile(filename="t.jsonl", bytes=1, format="chat", examples=1, storage_key="datasets/t",
                             team_id=account.team_id)
        session.add(data_file)
        session.flush()
        job = Job(model="tiny", queue="q", config={}, training_file_id=data_file.id, status="running",
                  team_id=account.team_id, total_steps=60)
        session.add(job)
        session.flush()
        session.add_all(Metric(job_id=job.id, step=s, loss=1.0) for s in range(1, 45))
        session.commit()
        job_id = job.id
    redis = redis_client.get_redis()
    for step in range(1, 46):
        streams.publish(redis, job_id, "metric", {"step": step, "loss": 1.0}, max_len=1000)

    context = signed_in_context(browser, live_server.url, account, viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    streams_opened: list[str] = []
    page.on("request", lambda request: streams_opened.append(request.url) if "/stream" in request.url else None)
    page.goto(f"/jobs/{job_id}")
    page.wait_for_function("() => window.tuneboardJob && window.tuneboardJob.steps().length === 45")
    assert streams_opened[0].endswith("/stream?after_step=44")  # 1..44 came from the database

    streams.publish(redis, job_id, "rewind", {"step": 40}, max_len=1000)
    for step in range(41, 61):
        streams.publish(redis, job_id, "metric", {"step": step, "loss": 0.5}, max_len=1000)
    page.wait_for_function("() => window.tuneboardJob.steps().length === 60")
    assert page.evaluate("() => window.tuneboardJob.steps()") == list(range(1, 61))
    losses = page.evaluate("() => [...window.tuneboardJob.points.values()].map((p) => [p.step, p.loss])")
    assert sorted(losses) == [[s, 1.0] for s in range(1, 41)] + [[s, 0.5] for s in range(41, 61)]
    # Reopened below the rewind, so an automatic reconnect from here would not skip the replaced steps.
    assert "after_step=40&after=" in streams_opened[-1]

    with new_session() as session:
        job = session.get(Job, job_id)
        job.status = "succeeded"
        session.commit()
        lifecycle.publish_status(redis, job)
    page.wait_for_function("() => document.getElementById('job-page').dataset.streamEnded === 'true'")
    assert not problems, problems
    context.close()


@pytest.mark.browser
def test_a_dpo_job_draws_its_reward_curves_beside_the_loss(browser, live_server, account, tmp_path):
    """A DPO run's stored points (TRL's rewards as the worker stores them) draw a rewards chart; a supervised job's
    page has none."""
    from app.db import new_session
    from app.tables import DataFile, Job, Metric

    with new_session() as session:
        data_file = DataFile(filename="pairs.jsonl", bytes=1, format="preference", examples=8,
                             storage_key="datasets/p", team_id=account.team_id)
        session.add(data_file)
        session.flush()
        jobs = {}
        for method in ("dpo", "supervised"):
            job = Job(model="tiny", queue="q", config={"method": {"type": method}}, training_file_id=data_file.id,
                      status="succeeded", team_id=account.team_id, total_steps=20)
            session.add(job)
            session.flush()
            jobs[method] = job.id
        session.add_all(Metric(job_id=jobs["dpo"], step=s, loss=0.69 - 0.02 * s, rewards_chosen=0.02 * s,
                               rewards_rejected=-0.03 * s, reward_margin=0.05 * s, reward_accuracy=min(1, 0.5 + s / 20),
                               eval_reward_margin=0.05 * s if s % 5 == 0 else None) for s in range(1, 21))
        session.commit()

    context = signed_in_context(browser, live_server.url, account, viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(f"/jobs/{jobs['dpo']}")
    page.wait_for_function("() => document.getElementById('reward-chart').dataset.points === '20'")
    labels = page.locator("#reward-chart .u-legend .u-label").all_inner_texts()
    assert labels[-6:] == ["rewards chosen", "rewards rejected", "reward margin", "eval reward margin", "accuracy",
                           "eval accuracy"]
    out = os.environ.get("TUNEBOARD_SCREENSHOT_DIR")
    page.locator(".charts").screenshot(path=f"{out or tmp_path}/job-dpo-rewards.png")
    page.goto(f"/jobs/{jobs['supervised']}")
    assert page.locator("#reward-chart").count() == 0
    assert not problems, problems
    context.close()


@pytest.mark.browser
def test_a_queued_job_page_fits_a_400_px_screen_with_its_actions_in_reach(browser, live_server, account,
                                                                          tuneboard_env):
    """No worker: the job stays queued, its id (one long word) in the title beside the status, Clone and Cancel."""
    api = httpx.Client(base_url=live_server.url, timeout=30, headers=account.headers)
    file_id = api.post("/v1/files", files={"file": ("train.jsonl", json_lines(chat_records(8)))},
                       data={"purpose": "fine-tune"}).json()["id"]
    job = api.post("/v1/fine_tuning/jobs", json={"model": "HuggingFaceTB/SmolLM2-135M-Instruct",
                                                 "training_file": file_id}).json()
    context = signed_in_context(browser, live_server.url, account, viewport={"width": 400, "height": 900})
    page = context.new_page()
    page.goto(f"/jobs/{job['id']}")
    assert page.evaluate("() => document.scrollingElement.scrollWidth") <= 400
    for button in ("#clone-job", "#cancel-job"):
        box = page.locator(button).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 400, (button, box)
    assert "waiting for a worker." in page.locator("#job-phase").inner_text()
    out = os.environ.get("TUNEBOARD_SCREENSHOT_DIR")
    if out:
        page.screenshot(path=f"{out}/job-queued-400px.png", full_page=True)
    context.close()
