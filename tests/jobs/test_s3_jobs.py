"""Jobs whose artifacts live in an S3-compatible store, run by workers that share nothing on disk.

Each worker gets a data dir of its own, as a worker on another host would, so whatever a worker or the
web app reads (dataset, checkpoint, adapter) can only have come through the store: moto's S3 server
over HTTP, standing in for MinIO. PostgreSQL, as a fleet runs it.
"""

from __future__ import annotations

import io
import zipfile

import pytest

from tests.jobs.helpers import (
    all_events,
    chat_records,
    launch,
    metric_steps,
    upload,
    wait_for,
    wait_until_finished,
)

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
TRAINING = {"batch_size": 4, "learning_rate": 5e-3, "sequence_length": 64, "precision": "fp32", "logging_steps": 1,
            "warmup_ratio": 0.0, "lr_scheduler": "constant"}




@pytest.fixture(autouse=True)
def _artifacts_in_s3(s3_bucket):
    """Every test here stores its artifacts in the S3 bucket, from before the app starts."""
    return s3_bucket


def _keys(s3_bucket, prefix: str) -> list[str]:
    client, bucket = s3_bucket
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"artifacts/{prefix}")
    return [item["Key"].removeprefix("artifacts/") for page in pages for item in page.get("Contents", ())]


def test_dataset_checkpoints_and_adapter_go_through_the_store(client, s3_bucket, start_worker, model_dir, tmp_path,
                                                              tuneboard_env):
    worker_dir = tmp_path / "worker-host"
    start_worker(TUNEBOARD_DATA_DIR=str(worker_dir))
    train = upload(client, chat_records(16))
    assert _keys(s3_bucket, f"datasets/{train['id']}/") == [f"datasets/{train['id']}/train.jsonl"]
    assert client.get(f"/v1/files/{train['id']}/content").content.startswith(b'{"messages"')

    job = launch(client, model_dir, train["id"], lora=LORA, training={**TRAINING, "max_steps": 20, "save_steps": 10})
    job = wait_until_finished(client, job["id"], timeout=240)
    assert job["status"] == "succeeded", job["error"]

    stored = _keys(s3_bucket, f"jobs/{job['id']}/")
    assert f"jobs/{job['id']}/attempt-1/adapter/adapter_model.safetensors" in stored
    assert f"jobs/{job['id']}/attempt-1/checkpoints/checkpoint-10/trainer_state.json" in stored
    checkpoints = client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"]
    assert sorted(c["step_number"] for c in checkpoints) == [10, 20]

    archive = zipfile.ZipFile(io.BytesIO(client.get(f"/v1/fine_tuning/jobs/{job['id']}/adapter").content))
    s3, bucket = s3_bucket
    in_store = s3.get_object(Bucket=bucket,
                             Key=f"artifacts/jobs/{job['id']}/attempt-1/adapter/adapter_model.safetensors")
    assert archive.read("adapter_model.safetensors") == in_store["Body"].read()
    single = client.get(f"/v1/fine_tuning/jobs/{job['id']}/adapter", params={"file": "adapter_config.json"})
    assert single.status_code == 200 and single.json()["r"] == 8

    # Nothing was written to the web machine's artifacts folder, and the worker dropped its working copy.
    assert not (tuneboard_env.data_dir / "artifacts").exists()
    assert not (worker_dir / "scratch" / "work" / "jobs" / job["id"]).exists()


def test_a_job_resumes_on_a_second_worker_from_the_checkpoint_the_first_stored(client, s3_bucket, start_worker,
                                                                               model_dir, tmp_path):
    first = start_worker(name="doomed", TUNEBOARD_DATA_DIR=str(tmp_path / "host-a"))
    train = upload(client, chat_records())
    job = launch(client, model_dir, train["id"], lora=LORA, training={**TRAINING, "max_steps": 160, "save_steps": 20})
    wait_for(client, job["id"], lambda j: j["progress"]["step"] >= 45, what="step 45")
    first.kill()
    last_checkpoint = max(c["step_number"] for c in
                          client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"])
    assert (f"jobs/{job['id']}/attempt-1/checkpoints/checkpoint-{last_checkpoint}/trainer_state.json"
            in _keys(s3_bucket, "jobs/"))

    second_dir = tmp_path / "host-b"
    rescuer = start_worker(name="rescuer", TUNEBOARD_DATA_DIR=str(second_dir))
    job = wait_until_finished(client, job["id"], timeout=240)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 2 and job["worker"].startswith("rescuer@")
    messages = [e["message"] for e in all_events(client, job["id"])]
    assert any(f"resuming at step {last_checkpoint}" in m for m in messages), messages
    assert [p["step"] for p in metric_steps(client, job["id"])] == list(range(1, 161))
    # The second host had never seen the checkpoint: it fetched it from the store, and dropped its copies after.
    bucket = s3_bucket[1]
    assert (f"resuming from jobs/{job['id']}/attempt-1/checkpoints/checkpoint-{last_checkpoint}, fetched from "
            f"s3://{bucket}/artifacts") in rescuer.log()
    assert not (second_dir / "scratch" / "cache" / "jobs" / job["id"]).exists()
    assert not (second_dir / "scratch" / "work" / "jobs" / job["id"]).exists()
