"""Jobs run end to end by real Celery worker processes on a real Redis, training a tiny model with PEFT.

Covers: a full run (loss falls, PEFT's count equals the estimate, the adapter loads), cancel, duplicate
delivery (one run), a worker killed with SIGKILL (the job resumes from its checkpoint on another
worker), and a failure explained in plain words.
"""

from __future__ import annotations

import io
import zipfile

import pytest

from app.fleet import queue
from tests.jobs.helpers import (
    all_events,
    assert_resumed_by,
    cancel_and_assert_the_loop_stopped,
    chat_records,
    last_checkpoint_step,
    launch,
    metric_steps,
    upload,
    wait_for,
    wait_until_finished,
)

LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}


def _training(**overrides) -> dict:
    base = {"max_steps": 30, "batch_size": 4, "learning_rate": 5e-3, "sequence_length": 64, "precision": "fp32",
            "logging_steps": 1, "save_steps": 10, "warmup_ratio": 0.0, "lr_scheduler": "constant"}
    return {**base, **overrides}




def test_job_trains_to_the_end_with_falling_loss_and_a_loadable_adapter(client, start_worker, model_dir, tmp_path,
                                                                        tuneboard_env):
    start_worker()
    train = upload(client, chat_records(32))
    job = launch(client, model_dir, train["id"], lora=LORA, suffix="colours",
                 training=_training(eval_steps=10, validation_split=25))
    assert job["status"] == "queued" and job["estimate"]["trainable_params"] > 0

    job = wait_until_finished(client, job["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["trainable_params"] == job["estimate"]["trainable_params"]
    steps = metric_steps(client, job["id"])
    # Step 0: the held-out loss before training (the base model's), then every trained step.
    assert [p["step"] for p in steps] == list(range(0, 31)) and steps[0]["loss"] is None
    losses = [p["loss"] for p in steps[1:]]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses
    assert [p["step"] for p in steps if p["eval_loss"] is not None] == [0, 10, 20, 30]
    checkpoints = client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"]
    assert sorted(c["step_number"] for c in checkpoints) == [10, 20, 30]
    types = [e["data"]["kind"] for e in all_events(client, job["id"])]
    assert types[:2] == ["queued", "started"] and types[-1] == "succeeded"
    assert types.count("evaluation") == 4 and "checkpoint" in types

    # History lives in the database: it survives Redis losing every stream.
    assert tuneboard_env.forget_redis() > 0
    assert [p["step"] for p in metric_steps(client, job["id"])] == list(range(0, 31))

    archive = client.get(f"/v1/fine_tuning/jobs/{job['id']}/adapter")
    assert archive.status_code == 200
    with zipfile.ZipFile(io.BytesIO(archive.content)) as unpacked:
        assert sorted(unpacked.namelist()) == ["Modelfile", "README.md", "adapter_config.json",
                                               "adapter_model.safetensors"]
        unpacked.extractall(tmp_path / "adapter")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), tmp_path / "adapter")
    trainable = sum(p.numel() for n, p in loaded.named_parameters() if "lora_" in n)
    assert trainable == job["trainable_params"]


def test_cancel_stops_a_running_job_within_seconds_and_keeps_its_checkpoint(client, start_worker, model_dir):
    start_worker()
    train = upload(client, chat_records())
    job = launch(client, model_dir, train["id"], lora=LORA, training=_training(max_steps=5000, save_steps=15))
    wait_for(client, job["id"], lambda j: j["progress"]["step"] >= 20, what="step 20")
    # Within seconds: the training loop saw the flag at a step and stopped itself (the worker's own last word),
    # not the hard stop the reaper deals out once the grace period (60 s) has passed.
    job = cancel_and_assert_the_loop_stopped(client, job["id"])
    assert job["progress"]["step"] < 5000
    assert "cancelled" in [e["data"]["kind"] for e in all_events(client, job["id"])]


def test_queued_job_cancelled_before_any_worker_never_runs(client, start_worker, model_dir):
    train = upload(client, chat_records())
    job = launch(client, model_dir, train["id"], lora=LORA, training=_training())
    assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    worker = start_worker()
    # The worker takes the message and finds nothing to claim; the job stays as it was.
    wait_for(client, job["id"], lambda _j: "nothing to claim" in worker.log(), timeout=60, what="the skip")
    job = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert job["status"] == "cancelled" and job["attempts"] == 0


@pytest.mark.both_databases  # the claim is the database's conditional update
def test_duplicate_delivery_starts_one_run(client, start_worker, model_dir, tuneboard_env):
    # A visibility timeout far shorter than the run makes Redis hand the unacked message out again.
    workers = [start_worker(TUNEBOARD_VISIBILITY_TIMEOUT_SECONDS="2") for _ in range(2)]
    train = upload(client, chat_records())
    job = launch(client, model_dir, train["id"], lora=LORA, training=_training(max_steps=150, save_steps=50))
    wait_for(client, job["id"], lambda j: j["status"] == "running", what="running")
    queue.enqueue_training(job["id"], tuneboard_env.queue, 1)  # and a plainly duplicated message too
    job = wait_until_finished(client, job["id"])
    assert job["status"] == "succeeded" and job["attempts"] == 1
    assert [e["data"]["kind"] for e in all_events(client, job["id"])].count("started") == 1
    assert [p["step"] for p in metric_steps(client, job["id"])] == list(range(1, 151))
    assert sum(w.log().count("nothing to claim") for w in workers) >= 1


@pytest.mark.both_databases  # the claim is the database's conditional update
def test_worker_killed_mid_run_resumes_from_its_checkpoint_on_another_worker(client, start_worker, model_dir):
    first = start_worker(name="doomed")
    train = upload(client, chat_records())
    job = launch(client, model_dir, train["id"], lora=LORA, training=_training(max_steps=120, save_steps=20))
    wait_for(client, job["id"], lambda j: j["progress"]["step"] >= 45, what="step 45")
    first.kill()
    last_checkpoint = last_checkpoint_step(client, job["id"])
    start_worker(name="rescuer")
    assert_resumed_by(client, job["id"], "rescuer", last_checkpoint)
    assert [p["step"] for p in metric_steps(client, job["id"])] == list(range(1, 121))


def test_missing_base_model_fails_with_a_plain_reason(client, start_worker, tmp_path):
    start_worker()
    train = upload(client, chat_records(8))
    # A local path that names no model folder is refused at launch (tests/security/test_local_model_roots.py);
    # a hub id is only known to be missing once the worker asks for it (HF_HUB_OFFLINE in the tests).
    refused = client.post("/v1/fine_tuning/jobs", json={"model": str(tmp_path / "no-such-model"),
                                                        "training_file": train["id"]})
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"
    job = launch(client, "tuneboard-tests/no-such-model", train["id"], lora=LORA, training=_training())
    job = wait_until_finished(client, job["id"], timeout=120)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "model_not_found"
    assert "no-such-model" in job["error"]["message"]
