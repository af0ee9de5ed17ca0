"""An artifact store that fails says so: an upload answers 503 naming the store, a job fails naming it.

Before: a store the server could not write answered an upload with a bare 500, and failed a job with
`internal_error: PermissionError ...`. The faults here are real ones that root cannot write through (the
tests run as root, so a chmod would not stop them): a folder of the store made immutable (`chattr +i`, as
lost permissions or a locked-down volume refuse writes), or, where the filesystem has no such attribute, a
file standing where the folder should be; and for the S3 store, a bucket that is gone.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.jobs.conftest import client, model_dir  # noqa: F401 - fixtures this module uses
from tests.jobs.helpers import chat_records, json_lines, launch, upload, wait_for, wait_until_finished

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # a storage question only
LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
TRAINING = {"batch_size": 4, "learning_rate": 5e-3, "sequence_length": 64, "precision": "fp32", "logging_steps": 1,
            "warmup_ratio": 0.0, "lr_scheduler": "constant"}
# What the message says of each fault, by how it was made.
CAUSES = {"immutable": "operation not permitted", "file": "a file stands where one of its folders should be"}


@contextlib.contextmanager
def unwritable(folder: Path):
    """Make `folder` (and everything in it) refuse writes, even root's; yields how ("immutable" or "file")."""
    folder.mkdir(parents=True, exist_ok=True)
    chattr = shutil.which("chattr")
    if chattr and subprocess.run([chattr, "-R", "+i", str(folder)], capture_output=True).returncode == 0:
        try:
            yield "immutable"
        finally:
            subprocess.run([chattr, "-R", "-i", str(folder)], check=True)
        return
    # No immutable attribute on this filesystem: a file where the folder was refuses every write below it.
    aside = folder.with_name(folder.name + ".aside")
    folder.rename(aside)
    folder.write_text("not a folder")
    try:
        yield "file"
    finally:
        folder.unlink()
        aside.rename(folder)


def _upload(live_server, account, name: str = "train.jsonl") -> httpx.Response:
    return httpx.post(f"{live_server.url}/v1/files", headers=account.headers, timeout=60,
                      files={"file": (name, io.BytesIO(json_lines(chat_records())))}, data={"purpose": "fine-tune"})


@SQLITE_ONLY
def test_an_upload_the_local_store_refuses_answers_503_naming_the_store(live_server, account, tuneboard_env):
    artifacts = tuneboard_env.settings.artifacts_dir
    with unwritable(artifacts / "datasets") as how:
        response = _upload(live_server, account)
    assert response.status_code == 503, response.text  # was a bare 500
    error = response.json()["error"]
    assert error["code"] == "artifact_store_unavailable" and error["param"] == "file"
    assert f"The artifact store (folder {artifacts})" in error["message"], error
    assert CAUSES[how] in error["message"], error
    listed = httpx.get(f"{live_server.url}/v1/files", headers=account.headers, timeout=10).json()
    assert listed["data"] == []  # nothing recorded without its content

    assert _upload(live_server, account).status_code == 200  # the store fixed, the same upload goes through
    assert "Traceback" not in live_server.log_path.read_text(errors="replace")


@SQLITE_ONLY
def test_a_job_whose_store_refuses_its_folder_fails_naming_the_store_before_loading_the_model(
        client, start_worker, model_dir, tuneboard_env):  # noqa: F811 - the imported fixtures
    artifacts = tuneboard_env.settings.artifacts_dir
    file_id = upload(client, chat_records())["id"]
    start_worker()
    with unwritable(artifacts / "jobs") as how:
        job = launch(client, model_dir, file_id, lora=LORA, training={**TRAINING, "max_steps": 10, "save_steps": 5})
        job = wait_until_finished(client, job["id"], timeout=120)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "artifact_store_failed", job["error"]  # was internal_error: PermissionError
    message = job["error"]["message"]
    assert message.startswith(f"The artifact store (folder {artifacts}) failed while preparing the folder"), message
    assert CAUSES[how] in message, message
    assert "PermissionError" not in message and "Errno" not in message
    assert job["progress"]["step"] == 0  # refused before the model was loaded


@SQLITE_ONLY
def test_a_checkpoint_the_store_refuses_mid_run_fails_the_job_naming_the_store(
        client, start_worker, model_dir, tuneboard_env):  # noqa: F811
    artifacts = tuneboard_env.settings.artifacts_dir
    start_worker()
    job = launch(client, model_dir, upload(client, chat_records())["id"], lora=LORA,
                 training={**TRAINING, "max_steps": 200, "save_steps": 20})
    job = wait_for(client, job["id"], lambda j: j["status"] == "running" and j["progress"]["step"] >= 2,
                   what="step 2")
    attempt_folder = artifacts / "jobs" / job["id"] / "attempt-1"
    assert attempt_folder.is_dir()
    with unwritable(attempt_folder) as how:  # the trainer's checkpoint at step 20 cannot be written
        job = wait_until_finished(client, job["id"], timeout=300)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "artifact_store_failed", job["error"]
    message = job["error"]["message"]
    assert message.startswith(f"The artifact store (folder {artifacts}) failed while writing a job's files"), message
    assert CAUSES[how] in message and str(attempt_folder) in message, message


@SQLITE_ONLY
def test_an_upload_to_a_bucket_that_is_gone_answers_503_naming_the_bucket(s3_bucket, live_server, account):
    s3, bucket = s3_bucket
    s3.delete_bucket(Bucket=bucket)
    response = _upload(live_server, account)
    assert response.status_code == 503, response.text
    message = response.json()["error"]["message"]
    assert f"The artifact store (s3://{bucket}/artifacts at " in message, message
    assert "NoSuchBucket" in message, message



@pytest.fixture
def unreachable_s3_store(tuneboard_env, monkeypatch):
    """This test's Tuneboard pointed at an S3 endpoint where nothing listens (a store that is down)."""
    from app.settings import get_settings
    from tests.services import free_port

    values = {"TUNEBOARD_STORAGE_URL": "s3://tuneboard-down/artifacts", "AWS_ACCESS_KEY_ID": "test",
              "TUNEBOARD_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "AWS_SECRET_ACCESS_KEY": "test"}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    tuneboard_env.env.update(values)
    get_settings.cache_clear()
    yield values["TUNEBOARD_S3_ENDPOINT_URL"]
    get_settings.cache_clear()


@SQLITE_ONLY
def test_a_download_from_a_store_that_is_down_answers_503_naming_the_store(unreachable_s3_store, live_server,
                                                                           account):
    """Reads name the store too: a route whose store fails answers 503 with its name, not a bare 500."""
    from app.db import new_session
    from app.tables import DataFile

    with new_session() as session:
        record = DataFile(filename="train.jsonl", bytes=10, format="chat", examples=1, summary={},
                          storage_key="datasets/file-x/train.jsonl", team_id=account.team_id,
                          created_by=account.user_id)
        session.add(record)
        session.commit()
        file_id = record.id
    response = httpx.get(f"{live_server.url}/v1/files/{file_id}/content", headers=account.headers, timeout=120)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "artifact_store_unavailable"
    assert "The artifact store (s3://tuneboard-down/artifacts at " in response.json()["error"]["message"]
