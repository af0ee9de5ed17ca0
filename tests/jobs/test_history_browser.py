"""The team's job history in real Chromium: find a job by searching, compare two runs (one chart with both
loss curves, a diff of only the differing settings), and clone one (the configuration page filled in, the
same estimate, and a launch that stores the same settings).

Set TUNEBOARD_SCREENSHOT_DIR to keep screenshots of the history and compare pages.
"""

from __future__ import annotations

import math
import os
import random
import re

import httpx
import pytest

from tests.jobs.history_helpers import T0, add_job, bulk_jobs, stored_file
from tests.service_fixtures import signed_in_context, watch_problems

HOUR = 3600


def curve(seed: int, steps: int, floor: float, speed: float) -> list[float]:
    """A plausible training loss: fast fall, then a noisy plateau."""
    rng = random.Random(seed)
    return [round(floor + 1.9 * math.exp(-step / speed) + rng.uniform(-0.04, 0.04), 4) for step in range(1, steps + 1)]


@pytest.fixture
def history(account, make_user):
    """A team's history as a few weeks of work leaves it: runs of several people, models, statuses and tags."""
    bob = make_user("bob@example.com", account.team_name)
    chat, support = stored_file(account, "support-chats.jsonl", 64), stored_file(account, "faq-pairs.jsonl", 32)
    bulk_jobs(account.team_id, account.user_id, chat, 60, start=T0 - 90 * 24 * HOUR)  # older pages
    runs = {}
    specs = [
        ("r16-baseline", "HuggingFaceTB/SmolLM2-135M", {"r": 16, "lora_alpha": 16}, {}, "succeeded", account,
         ["baseline"], "First run on the cleaned chats.", curve(1, 120, 0.62, 25)),
        ("r32-lr1e-4", "HuggingFaceTB/SmolLM2-135M", {"r": 32, "lora_alpha": 32}, {"learning_rate": 1e-4},
         "succeeded", bob, ["r-sweep"], "Half the learning rate; slower but smoother.", curve(2, 120, 0.55, 40)),
        ("r64-all-linear", "HuggingFaceTB/SmolLM2-360M", {"r": 64, "lora_alpha": 128, "target_modules": "all-linear"},
         {"num_epochs": 2}, "succeeded", account, ["r-sweep", "360m"], "", curve(3, 90, 0.48, 20)),
        ("qwen-faq", "Qwen/Qwen2.5-0.5B", {"r": 8, "lora_alpha": 16}, {"sequence_length": 512}, "failed", bob,
         ["faq"], "Loss spiked at step 300 and went NaN; try a lower LR.", None),
        ("gpt2-smoke", "openai-community/gpt2", {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"]}, {},
         "cancelled", account, [], "", None),
        ("r16-long-context", "HuggingFaceTB/SmolLM2-135M", {"r": 16, "lora_alpha": 16}, {"sequence_length": 2048},
         "running", bob, ["long-context"], "", None),
        ("next-in-line", "HuggingFaceTB/SmolLM2-360M", {"r": 16, "lora_alpha": 32}, {}, "queued", account, [], "",
         None),
    ]
    for i, (suffix, model, lora, training, status, who, tags, notes, losses) in enumerate(specs):
        runs[suffix] = add_job(who, support if suffix == "qwen-faq" else chat, suffix=suffix, model=model, lora=lora,
                               training=training, status=status, created_at=T0 + i * 7 * HOUR + 1234,
                               runtime=None if status in ("queued", "running") else 600 + 311 * i,
                               loss=losses[-1] if losses else None, eval_loss=losses[-1] + 0.08 if losses else None,
                               losses=losses, eval_every=20, tags=tags, notes=notes, user_id=who.user_id)
    return runs


@pytest.fixture
def page(browser, live_server, account):
    context = signed_in_context(browser, live_server.url, account, viewport={"width": 1440, "height": 1000})
    tab = context.new_page()
    watch_problems(tab)
    yield tab
    context.close()


def shot(page, name: str, full_page: bool = False) -> None:
    directory = os.environ.get("TUNEBOARD_SCREENSHOT_DIR")
    if directory:
        page.screenshot(path=os.path.join(directory, name), full_page=full_page)


def rows(page) -> list[str]:
    return page.eval_on_selector_all("#jobs-table tbody tr", "trs => trs.map(tr => tr.dataset.jobId)")


@pytest.mark.browser
def test_find_a_job_by_search(page, history):
    page.goto("/jobs")
    assert len(rows(page)) == 50 and page.locator("#page-next").count() == 1
    assert page.locator("#history-count").text_content().strip() == "67 jobs"
    shot(page, "history.png")

    page.fill("#filter-q", "spiked")  # words from a job's notes
    page.wait_for_url(re.compile(r".*/jobs\?q=spiked$"))
    page.wait_for_function("() => document.querySelectorAll('#jobs-table tbody tr').length === 1")
    assert rows(page) == [history["qwen-faq"].id]
    assert page.locator("#history-count").text_content().strip() == "1 job matches"
    assert page.locator("#filter-q").input_value() == "spiked"  # only the results were swapped

    page.fill("#filter-q", "r-sweep")  # a tag
    page.wait_for_function("() => document.querySelectorAll('#jobs-table tbody tr').length === 2")
    page.select_option("#filter-status", "succeeded")
    page.select_option("#filter-model", "HuggingFaceTB/SmolLM2-360M")
    page.wait_for_url(re.compile(r".*model=HuggingFaceTB%2FSmolLM2-360M.*"))
    page.wait_for_function("() => document.querySelectorAll('#jobs-table tbody tr').length === 1")
    assert rows(page) == [history["r64-all-linear"].id]

    page.reload()  # the URL is the view: a reload (or a shared link) shows the same
    assert rows(page) == [history["r64-all-linear"].id] and page.locator("#filter-q").input_value() == "r-sweep"
    page.click(f"tr[data-job-id='{history['r64-all-linear'].id}'] .job-name a")
    page.wait_for_url(re.compile(rf".*/jobs/{history['r64-all-linear'].id}$"))
    assert page.locator("#launched-by").inner_text() == "alice@example.com"
    assert not page.problems, page.problems


@pytest.mark.browser
def test_compare_two_runs(page, history):
    a, b = history["r16-baseline"], history["r32-lr1e-4"]
    page.goto("/jobs")
    assert page.locator("#compare-button").is_disabled()
    page.check(f"tr[data-job-id='{a.id}'] input.pick")
    page.fill("#filter-q", "lr1e-4")  # the picks outlive a change of filter
    page.wait_for_function("() => document.querySelectorAll('#jobs-table tbody tr').length === 1")
    page.check(f"tr[data-job-id='{b.id}'] input.pick")
    assert page.locator("#compare-picked .picked").all_text_contents() == ["r16-baseline×", "r32-lr1e-4×"]
    page.click("#compare-button")
    page.wait_for_url(re.compile(rf".*/compare\?jobs={a.id},{b.id}$"))

    page.wait_for_function("() => document.getElementById('compare-chart').dataset.series === '2'")
    series = page.evaluate("window.tuneboardCompare.series()")
    train = [s for s in series if s["kind"] == "train"]
    assert [(s["job"], s["points"]) for s in train] == [(a.id, 120), (b.id, 120)]
    assert [s["points"] for s in series if s["kind"] == "eval"] == [6, 6]
    assert len({s["colour"] for s in train}) == 2
    legend = page.locator(".u-legend .u-series").all_inner_texts()
    assert any("r16-baseline · train" in t for t in legend) and any("r32-lr1e-4 · train" in t for t in legend)
    assert page.locator("#compare-chart canvas").count() == 1

    keys = page.eval_on_selector_all("#diff-table tbody tr", "trs => trs.map(tr => tr.dataset.key)")
    assert keys == ["lora.r", "lora.lora_alpha", "training.learning_rate"]
    assert page.locator("#diff-table tr[data-key='lora.r'] td").all_inner_texts() == ["16", "32"]
    page.evaluate("window.scrollTo(0, 0)")
    shot(page, "compare.png")
    assert not page.problems, page.problems


@pytest.mark.browser
def test_compare_a_dpo_run_with_the_supervised_run_it_followed(page, history, account):
    """The reward margin gets its own chart, drawn for the DPO run only; the loss chart holds both runs."""
    chat = history["r16-baseline"].training_file_id
    margins = [round(2.5 * (1 - math.exp(-step / 15)), 4) for step in range(1, 61)]
    dpo = add_job(account, chat, suffix="dpo-beta0.1", method={"type": "dpo", "dpo": {"beta": 0.1}},
                  losses=[round(0.6931 * math.exp(-step / 30), 4) for step in range(1, 61)], margins=margins,
                  eval_every=20)
    supervised = history["r16-baseline"]
    page.goto(f"/compare?jobs={supervised.id},{dpo.id}")
    page.wait_for_function("() => document.getElementById('margin-chart').dataset.series === '1'")
    margin = page.evaluate("window.tuneboardCompare.series('reward_margin')")
    assert [(s["job"], s["kind"], s["points"]) for s in margin] == [(dpo.id, "train", 60), (dpo.id, "eval", 3)]
    loss = page.evaluate("window.tuneboardCompare.series()")
    assert [(s["job"], s["points"]) for s in loss if s["kind"] == "train"] == [(supervised.id, 120), (dpo.id, 60)]
    assert page.locator("#compare-runs tbody td:nth-child(7)").all_inner_texts() == ["supervised", "DPO"]
    assert page.locator("#margin-chart canvas").count() == 1
    page.locator("#margin-section").scroll_into_view_if_needed()
    shot(page, "compare-dpo.png")
    assert not page.problems, page.problems

    page.goto(f"/compare?jobs={supervised.id},{history['r32-lr1e-4'].id}")  # no DPO run: no margin chart
    page.wait_for_function("() => document.getElementById('compare-chart').dataset.series === '2'")
    assert page.locator("#margin-section").count() == 0


@pytest.mark.browser
def test_clone_a_job(page, history, live_server, account):
    job = history["r32-lr1e-4"]
    page.goto(f"/jobs/{job.id}")
    page.wait_for_function("() => document.getElementById('loss-chart').dataset.points === '120'")
    shot(page, "job-detail.png", full_page=True)
    page.click("#clone-job")
    page.wait_for_url(re.compile(rf".*/\?clone={job.id}$"))
    assert "r32-lr1e-4" in page.locator("#clone-notice").inner_text()
    assert page.input_value("#model") == job.model
    assert (page.input_value("#r"), page.input_value("#lora_alpha")) == ("32", "32")
    assert page.is_checked("#alpha_locked")
    checked = page.eval_on_selector_all("input[name=target_modules]:checked", "els => els.map(e => e.value)")
    assert sorted(checked) == ["q_proj", "v_proj"]
    assert page.input_value("input[name=learning_rate]") == "0.0001"
    assert page.input_value("#training_file") == job.training_file_id
    assert page.input_value("input[name=suffix]") == ""
    assert page.locator("#trainable-params").inner_text() == f"{job.estimate['trainable_params']:,d}"
    page.wait_for_selector("#dataset-facts")
    shot(page, "clone.png")

    page.fill("input[name=suffix]", "r32-again")
    page.click("#launch")
    page.wait_for_url(re.compile(r".*/jobs/ftjob-[A-Za-z0-9]+$"))
    clone_id = page.url.rsplit("/", 1)[-1]
    api = httpx.Client(base_url=live_server.url, headers=account.headers, timeout=30)
    launched = api.get(f"/v1/fine_tuning/jobs/{clone_id}").json()
    original = api.get(f"/v1/fine_tuning/jobs/{job.id}").json()
    assert (launched["lora"], launched["training"]) == (original["lora"], original["training"])
    assert launched["estimate"]["trainable_params"] == job.estimate["trainable_params"]
    assert launched["user_provided_suffix"] == "r32-again"
    assert not page.problems, page.problems
