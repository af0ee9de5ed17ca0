"""Supervised, then DPO from its result (the usual recipe): a job launched with one of the team's fine_tuned_model
ids as its model continues that adapter, on its base, with its LoRA settings, and both jobs record it.

The first test is the whole recipe through the `openai` SDK with a real worker: a supervised run, then a DPO run
from its fine_tuned_model, whose held-out margin starts at 0 (the supervised adapter is its own reference) from an
adapter that is not a fresh one. The others are what a launch refuses: another team's adapter, an adapter that does
not exist, and LoRA settings that are not the adapter's.
"""

from __future__ import annotations

import time

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import upload
from tests.api.test_dpo_jobs import preference_records
from tests.jobs.helpers import chat_records, json_lines, wait_for_inventory
from tests.jobs.history_helpers import add_job, stored_file

TERMINAL = {"succeeded", "failed", "cancelled"}
TRAINING = {"sequence_length": 64, "precision": "fp32", "logging_steps": 1, "learning_rate": 5e-3}
LORA = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}


def finished(sdk, job_id: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    job = sdk.fine_tuning.jobs.retrieve(job_id)
    while job.status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.5)
        job = sdk.fine_tuning.jobs.retrieve(job_id)
    return job


def test_dpo_continues_a_finished_supervised_adapter_and_both_jobs_record_it(sdk, start_worker, tiny_model_dir,
                                                                             tuneboard_env, live_server, account):
    wait_for_inventory(str(tiny_model_dir), tuneboard_env.settings)
    start_worker()
    chats = upload(sdk, chat_records(24), name="chats.jsonl")
    supervised = sdk.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=chats.id, suffix="sft",
                                             extra_body={"lora": LORA, "training": {**TRAINING, "max_steps": 8,
                                                                                    "save_steps": 8}})
    supervised = finished(sdk, supervised.id)
    assert supervised.status == "succeeded", supervised.error

    pairs = upload(sdk, preference_records(16), name="pairs.jsonl")
    held_out = upload(sdk, preference_records(4), name="held-out.jsonl")
    dpo = sdk.fine_tuning.jobs.create(model=supervised.fine_tuned_model, training_file=pairs.id,
                                      validation_file=held_out.id, suffix="dpo",
                                      method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}},
                                      extra_body={"training": {**TRAINING, "max_steps": 6, "save_steps": 6,
                                                               "eval_steps": 6, "held_out_samples": 0}})
    created = dpo.to_dict()
    assert created["model"] == str(tiny_model_dir)  # the base; the adapter is what it continues
    assert created["continues"] == {"model": supervised.fine_tuned_model, "job_id": supervised.id}
    dpo = finished(sdk, dpo.id)
    assert dpo.status == "succeeded", dpo.error

    events = [e.message for e in sdk.fine_tuning.jobs.list_events(dpo.id, limit=100).data]
    assert any(f"Continuing the adapter {supervised.fine_tuned_model}" in m for m in events), events
    points = sdk.get(f"/fine_tuning/jobs/{dpo.id}/metrics", cast_to=object)["data"]
    start = next(p for p in points if p["step"] == 0 and p.get("eval_loss") is not None)
    # The policy starts as the supervised adapter and so does the reference: no margin, loss ln 2 exactly.
    assert start["eval_reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert start["eval_loss"] == pytest.approx(0.6931, abs=1e-3)

    with httpx.Client(base_url=live_server.url, headers=account.headers) as http:
        parent_page = http.get(f"/jobs/{supervised.id}").text
        child_page = http.get(f"/jobs/{dpo.id}").text
    assert f'href="/jobs/{dpo.id}" class="continued-by">dpo</a> (DPO)' in parent_page
    assert f'href="/jobs/{supervised.id}" id="continues-job">sft</a>' in child_page


@pytest.fixture
def client(tuneboard_env, account):
    from app.main import create_app

    with TestClient(create_app(), headers=account.headers) as test_client:
        yield test_client


def _pairs(client) -> str:
    response = client.post("/v1/files", files={"file": ("pairs.jsonl", json_lines(preference_records(8)))},
                           data={"purpose": "fine-tune"})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def test_a_launch_continues_only_its_own_teams_adapters_with_their_lora_settings(client, account, make_user):
    model = "HuggingFaceTB/SmolLM2-135M"
    parent = add_job(account, stored_file(account), suffix="sft", model=model, lora={"r": 16, "lora_alpha": 32})
    pairs = _pairs(client)
    body = {"training_file": pairs, "method": {"type": "dpo"}}

    created = client.post("/v1/fine_tuning/jobs", json={**body, "model": f"{model}:ft-sft"})
    assert created.status_code == 200, created.text
    job = created.json()
    assert job["model"] == model and job["continues"] == {"model": f"{model}:ft-sft", "job_id": parent.id}
    assert job["estimate"]["trainable_params"] == parent.estimate["trainable_params"]  # the adapter's own shape

    other = make_user("mallory@example.com", "Beta")
    theirs = add_job(other, stored_file(other), suffix="secret", model=model)
    for name in (f"{model}:ft-secret", f"{model}:ft-{theirs.id}", f"{model}:ft-nothing", f"{model}:ft-sft:ckpt-step-5"):
        refused = client.post("/v1/fine_tuning/jobs", json={**body, "model": name})
        assert refused.status_code == 404, (name, refused.text)
        assert refused.json()["error"]["param"] == "model", refused.text

    different = client.post("/v1/fine_tuning/jobs", json={**body, "model": f"{model}:ft-sft",
                                                           "lora": {"r": 8, "lora_alpha": 32}})
    assert different.status_code == 400, different.text
    error = different.json()["error"]
    assert error["param"] == "lora.r" and "r=16" in error["message"] and "leave lora out" in error["message"]


def test_a_start_from_the_caller_wrote_is_never_what_a_worker_loads(tuneboard_env, account, make_user):
    """Only the launch's own team-scoped lookup sets `start_from`: a config that arrives carrying one (another team's
    storage key, say) launches a fresh adapter."""
    from app.accounts import users
    from app.db import new_session
    from app.estimator.job_config import JobConfig, StartFrom
    from app.jobs.launch import launch

    other = make_user("mallory@example.com", "Beta")
    theirs = add_job(other, stored_file(other), suffix="secret")
    forged = JobConfig(model="HuggingFaceTB/SmolLM2-135M", start_from=StartFrom(
        model="x:ft-secret", job_id=theirs.id, adapter_key=theirs.adapter_key))
    with new_session() as session:
        principal = users.principal_for_token(session, account.token)
        job = launch(session, tuneboard_env.settings, principal, forged, training_file=stored_file(account))
        assert job.config["start_from"] is None and job.parent_job_id is None
