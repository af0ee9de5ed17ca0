"""Queues by GPU class: two real workers serve different queues, jobs land only where they were sent, and
the configuration page offers the live queues with their GPUs and warns when the estimate does not fit.

The workers announce their GPU from `nvidia-smi`; this machine has none, so each worker gets a stand-in
`nvidia-smi` on its PATH that answers the query the way the real one does (name, memory in MiB).
Training itself still runs on the CPU.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from app import redis_client
from app.fleet import worker_registry
from tests.configure.conftest import wait_until
from tests.configure.test_pages import HX, form, messages_beside
from tests.jobs.helpers import (
    chat_records,
    launch,
    stand_in_nvidia_smi,
    upload,
    wait_for_inventory,
    wait_until_finished,
)
from tests.service_fixtures import signed_in_context

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
TRAINING = {"max_steps": 3, "batch_size": 2, "sequence_length": 64, "precision": "fp32", "save_steps": 100}
# Llama-3.1-8B in bf16 at 8192 tokens x 2, checkpointed: about 26 GiB, beyond a 24 GB card, within an 80 GB one.
BIG_RUN = {"model": "meta-llama/Llama-3.1-8B", "sequence_length": "8192", "batch_size": "2",
           "gradient_checkpointing": "on"}


def _gpu_path(tmp_path, name: str, mib: int) -> str:
    return stand_in_nvidia_smi(tmp_path / f"smi-{mib}", [(name, mib)])


@pytest.fixture
def fleet(start_worker, tmp_path):
    """A 24 GB worker on gpu-24g and an 80 GB worker on gpu-80g, both announced."""
    small = start_worker(queues=["gpu-24g"], name="l4", PATH=_gpu_path(tmp_path, "NVIDIA L4", 23034))
    large = start_worker(queues=["gpu-80g"], name="h100", PATH=_gpu_path(tmp_path, "NVIDIA H100 80GB HBM3", 81559))
    wait_until(lambda: {"gpu-24g", "gpu-80g"} <= set(worker_registry.queues_served(
        worker_registry.live_workers(redis_client.get_redis()))), timeout=30)
    return small, large


def test_jobs_run_only_on_the_queue_they_were_sent_to(client, fleet, tiny_model_dir, tuneboard_env):
    wait_for_inventory(str(tiny_model_dir), tuneboard_env.settings)
    train = upload(client, chat_records(8))
    sent = {queue: [launch(client, str(tiny_model_dir), train["id"], lora=LORA, training=TRAINING, queue=queue)["id"]
                    for _ in range(2)] for queue in ("gpu-24g", "gpu-80g")}
    for queue, host in (("gpu-24g", "l4@"), ("gpu-80g", "h100@")):
        for job_id in sent[queue]:
            job = wait_until_finished(client, job_id, timeout=180)
            assert job["status"] == "succeeded", job["error"]
            assert job["worker"].startswith(host), (queue, job["worker"])


def test_the_page_offers_live_queues_with_their_gpus(client, fleet):
    html = client.get("/").text
    assert "gpu-24g — 1 worker: NVIDIA L4 22.5 GiB" in html
    assert "gpu-80g — 1 worker: NVIDIA H100 80GB HBM3 79.6 GiB" in html


def test_a_run_too_big_for_the_queue_gpus_is_warned_beside_the_queue(client, fleet):
    too_small = messages_beside(client.post("/estimate", data=form(**BIG_RUN, queue="gpu-24g"), headers=HX).text,
                                "queue")
    assert "does not fit queue 'gpu-24g': its largest GPU is 22.5 GiB" in too_small
    assert messages_beside(client.post("/estimate", data=form(**BIG_RUN, queue="gpu-80g"), headers=HX).text,
                           "queue").strip() == ""
    small_run = form(queue="gpu-24g")  # SmolLM2-135M fits anywhere
    assert messages_beside(client.post("/estimate", data=small_run, headers=HX).text, "queue").strip() == ""


@pytest.mark.browser
def test_the_queue_warning_follows_the_form_in_the_browser(browser, live_server, account, fleet, tmp_path):
    context = signed_in_context(browser, live_server.url, account, viewport={"width": 1400, "height": 1100})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto("/")
    page.wait_for_selector("#peft-line")
    warning = page.locator("#msg-queue")
    page.select_option("#queue", "gpu-24g")
    # SmolLM2-135M at 8k tokens x 4 without gradient checkpointing (off by default, as the worker runs): 26.8 GiB
    page.fill("input[name=sequence_length]", "8192")
    expect(warning).to_contain_text("does not fit queue 'gpu-24g': its largest GPU is 22.5 GiB")
    page.locator("#launch-card").screenshot(path=str(tmp_path / "queue-warning.png"))
    page.select_option("#queue", "gpu-80g")
    expect(warning).to_have_text("")
    page.fill("input[name=sequence_length]", "16384")  # about 52 GiB: still fits 79.6 GiB
    expect(page.locator("#memory-total")).to_have_text("52.1 GiB")
    expect(warning).to_have_text("")
    assert not problems, problems
    context.close()
