"""Driving jobs through the REST API in tests: upload data, launch, wait, read back."""

from __future__ import annotations

import io
import json
import os
import stat
import time
from pathlib import Path

from fastapi.testclient import TestClient

TERMINAL = {"succeeded", "failed", "cancelled"}

COLOURS = [("sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"), ("blood", "red"),
           ("sun", "yellow"), ("sea", "blue"), ("leaf", "green")]


def chat_records(count: int = 24) -> list[dict]:
    """A small learnable chat dataset: the colour of things, always answered the same way."""
    records = []
    for i in range(count):
        thing, colour = COLOURS[i % len(COLOURS)]
        records.append({"messages": [
            {"role": "system", "content": "Answer briefly and exactly."},
            {"role": "user", "content": f"What is the colour of the {thing}?"},
            {"role": "assistant", "content": f"The {thing} is {colour}."},
        ]})
    return records


def upload(client: TestClient, records: list[dict], name: str = "train.jsonl") -> dict:
    """Upload records as JSONL; returns the file object."""
    response = client.post("/v1/files", files={"file": (name, io.BytesIO(json_lines(records)))},
                           data={"purpose": "fine-tune"})
    assert response.status_code == 200, response.text
    return response.json()


def wait_for_inventory(model: str, settings, timeout: float = 120) -> None:
    """Block until a non-catalog model's inventory is computed (so the launch carries an estimate)."""
    from app.base_models.inventories import InventoryUnavailable, get_inventory

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            get_inventory(model, settings)
            return
        except InventoryUnavailable as exc:
            if not exc.computing:
                raise
            time.sleep(0.5)
    raise TimeoutError(f"no inventory for {model}")


def launch(client: TestClient, model: str, file_id: str, **extra) -> dict:
    """Create a job; returns the job object."""
    body = {"model": model, "training_file": file_id, **extra}
    response = client.post("/v1/fine_tuning/jobs", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for(client: TestClient, job_id: str, predicate, timeout: float = 180, what: str = "condition") -> dict:
    """Poll the job until predicate(job) holds; returns the job."""
    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        if predicate(job):
            return job
        time.sleep(0.3)
    raise TimeoutError(f"{what} not reached in {timeout} s; job is {job}")


def wait_until_finished(client: TestClient, job_id: str, timeout: float = 240) -> dict:
    """Poll until the job reaches a terminal status."""
    return wait_for(client, job_id, lambda j: j["status"] in TERMINAL, timeout, "a terminal status")


def all_events(client: TestClient, job_id: str) -> list[dict]:
    """Every event of the job, oldest first."""
    return list(reversed(client.get(f"/v1/fine_tuning/jobs/{job_id}/events?limit=1000").json()["data"]))


def metric_steps(client: TestClient, job_id: str) -> list[dict]:
    """Every stored metric point, oldest first."""
    return client.get(f"/v1/fine_tuning/jobs/{job_id}/metrics").json()["data"]


def json_lines(records: list[dict]) -> bytes:
    """Records as a JSONL upload body."""
    return "\n".join(json.dumps(r) for r in records).encode()


def stored_job(team_id: str, **fields) -> str:
    """A job row of the team (with its training file) written straight to the database, as a worker would leave it:
    running unless `fields` say otherwise; returns its id."""
    from app.db import new_session
    from app.tables import DataFile, Job

    with new_session() as session:
        data_file = DataFile(filename="t.jsonl", bytes=1, format="chat", examples=1, storage_key="datasets/t",
                             team_id=team_id)
        session.add(data_file)
        session.flush()
        job = Job(training_file_id=data_file.id, team_id=team_id,
                  **{"model": "tiny", "queue": "q", "config": {}, "status": "running", **fields})
        session.add(job)
        session.commit()
        return job.id


def last_checkpoint_step(client: TestClient, job_id: str) -> int:
    """The step of the job's newest recorded checkpoint."""
    return max(c["step_number"] for c in client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"])


def assert_resumed_by(client: TestClient, job_id: str, rescuer: str, checkpoint_step: int, *,
                      timeout: float = 240) -> dict:
    """Wait for the job to end; it succeeded on its second attempt, on `rescuer`, from that checkpoint."""
    job = wait_until_finished(client, job_id, timeout=timeout)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 2 and job["worker"].startswith(f"{rescuer}@"), job
    messages = [e["message"] for e in all_events(client, job_id)]
    assert any("requeued" in m for m in messages), messages
    assert any(f"resuming at step {checkpoint_step}" in m for m in messages), messages
    return job


def cancel_and_assert_the_loop_stopped(client: TestClient, job_id: str) -> dict:
    """Cancel a running job; it ends cancelled by its own training loop (not the reaper's hard stop), with a
    checkpoint kept."""
    assert client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").status_code == 200
    job = wait_until_finished(client, job_id, timeout=120)
    assert job["status"] == "cancelled"
    messages = [e["message"] for e in all_events(client, job_id)]
    assert "Job cancelled; its last checkpoint is kept." in messages, messages
    assert not [m for m in messages if "terminated" in m], messages
    assert client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]
    return job


def stand_in_nvidia_smi(folder: Path, gpus: list[tuple[str, int]]) -> str:
    """A PATH whose `nvidia-smi` answers the worker's query as a host with these GPUs (name, MiB) would."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text("#!/bin/sh\n" + "".join(f"echo '{name}, {mib}'\n" for name, mib in gpus))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return f"{folder}:{os.environ['PATH']}"
