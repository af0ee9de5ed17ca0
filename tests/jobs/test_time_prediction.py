"""Training time predicted before launch, then compared with the run: through a real worker and real training.

The launch takes the estimate with the run's FLOPs and its time on the queue (the worker's CPU, at the stated
default before any run has finished there). The run reports the padded tokens it computed on; the job page,
the job object and the history then show predicted against actual, and the next estimate on that queue is
calibrated from the finished run.
"""

from __future__ import annotations

import pytest

from app.fleet.throughput import default_rate
from tests.configure.test_pages import HX, form
from tests.jobs.helpers import chat_records, launch, upload, wait_for_inventory, wait_until_finished

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
TRAINING = {"max_steps": 6, "batch_size": 4, "sequence_length": 64, "precision": "fp32", "save_steps": 100,
            "held_out_samples": 0}


def test_a_run_is_predicted_at_launch_compared_after_and_calibrates_its_queue(client, start_worker, tiny_model_dir,
                                                                               tuneboard_env):
    start_worker()
    model = str(tiny_model_dir)
    wait_for_inventory(model, tuneboard_env.settings)
    file_id = upload(client, chat_records(24))["id"]
    job = launch(client, model, file_id, lora=LORA, training=TRAINING)
    time = job["estimate"]["training_time"]
    assert time["steps"] == 6 and time["flops"] > 0
    [on_queue] = time["queues"]
    assert on_queue["queue"] == tuneboard_env.queue and on_queue["device"] == "cpu"
    default_seconds = default_rate("cpu").seconds(time["flops"], time["steps"], time["elementwise_values"])
    assert (on_queue["calibrated_runs"], on_queue["seconds"]) == (0, pytest.approx(default_seconds))

    finished = wait_until_finished(client, job["id"])
    assert finished["status"] == "succeeded", finished["error"]
    prediction = finished["time_prediction"]
    runtime = finished["final_metrics"]["train_runtime"]
    assert prediction["actual_seconds"] == pytest.approx(runtime)
    assert prediction["predicted_seconds"] == pytest.approx(default_seconds)
    assert prediction["error"] == pytest.approx((prediction["predicted_seconds"] - runtime) / runtime)
    # The padded tokens computed on: 6 steps of 4 examples, each batch as long as its longest example.
    computed = finished["final_metrics"]["compute_training_tokens"]
    assert 6 * 4 <= computed <= 6 * 4 * 64 and computed >= finished["trained_tokens"]

    page = " ".join(client.get(f"/jobs/{job['id']}").text.split())
    assert "Training time" in page and "predicted" in page and "took" in page
    history = " ".join(client.get("/jobs").text.split())
    assert "time predictions: median error" in history and "of 1 within 25 %" in history

    # The queue now predicts from its own finished run.
    html = client.post("/estimate", headers=HX, data=form(model=model, r="4", target_modules=["q_proj", "v_proj"],
                                                          dataset_examples="24", max_steps="6", batch_size="4",
                                                          sequence_length="64", precision="fp32")).text
    assert 'id="training-time"' in html and "measured over 1 run" in html
    api = client.post("/v1/fine_tuning/estimate", json={"model": model, "lora": LORA, "training": TRAINING,
                                                        "dataset_examples": 24}).json()
    [calibrated] = api["training_time"]["queues"]
    # One run scales the default to it: the same settings are predicted to take about as long as it took.
    assert calibrated["calibrated_runs"] == 1
    assert calibrated["seconds"] == pytest.approx(runtime, rel=0.3)
