"""What a chat completion's `model` names, read from the database on SQLite and PostgreSQL: a base is the catalog's,
a local folder or a base the team trains on (never any hub id); a suffix names the team's newest succeeded job
with it, the job id form names exactly one job, a checkpoint's id names that
checkpoint, and nothing of another team's is found; `/v1/models` lists the team's fine-tuned models once each.
"""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from app.inference import targets
from app.jobs import model_names
from tests.jobs.helpers import stored_job
from tests.service_fixtures import make_account


@pytest.fixture
def client(tuneboard_env, account):
    from app.main import create_app

    with TestClient(create_app(), headers=account.headers) as test_client:
        yield test_client


def _resolve(team_id: str, model: str) -> targets.Target:
    from app.db import new_session
    from app.settings import get_settings

    with new_session() as session:
        return targets.resolve(session, team_id, model, get_settings())


def _finished(team_id: str, suffix: str | None, when: float, **fields) -> str:
    return stored_job(team_id, model="org/base", suffix=suffix, status="succeeded", adapter_key=f"jobs/{when}/a",
                      created_at=when, finished_at=when + 1, **fields)


def test_a_suffix_names_the_newest_succeeded_job_and_the_id_form_names_one(tuneboard_env, account):
    older = _finished(account.team_id, "support", 1000.0)
    newer = _finished(account.team_id, "support", 2000.0)
    stored_job(account.team_id, model="org/base", suffix="support", status="running", created_at=3000.0)
    assert _resolve(account.team_id, "org/base:ft-support").job_id == newer
    assert _resolve(account.team_id, f"org/base:ft-{older}").job_id == older
    target = _resolve(account.team_id, f"org/base:ft-{older}")
    assert target.base_model == "org/base" and target.adapter_key == "jobs/1000.0/a"
    assert _resolve(account.team_id, "org/base").adapter_key is None  # a base model id: the base alone
    assert _resolve(account.team_id, "HuggingFaceTB/SmolLM2-135M-Instruct").base_model.endswith("135M-Instruct")
    with pytest.raises(targets.ModelNotFound) as caught:
        _resolve(account.team_id, "meta-llama/Llama-3.1-405B")  # any hub id: a download a request must not start
    assert "neither in the catalog" in str(caught.value)
    with pytest.raises(targets.ModelNotFound):
        _resolve(account.team_id, "other/base:ft-support")  # the suffix exists, on another base


def test_a_checkpoint_id_names_its_checkpoint_even_of_a_job_that_did_not_succeed(tuneboard_env, account):
    from app.db import new_session
    from app.tables import Checkpoint

    job_id = stored_job(account.team_id, model="org/base", suffix="early", status="cancelled")
    with new_session() as session:
        session.add(Checkpoint(job_id=job_id, step=40, storage_key=f"jobs/{job_id}/attempt-1/checkpoint-40"))
        session.commit()
    target = _resolve(account.team_id, "org/base:ft-early:ckpt-step-40")
    assert target.adapter_key.endswith("checkpoint-40") and target.job_id == job_id
    for unknown in ("org/base:ft-early", "org/base:ft-early:ckpt-step-41", "org/base:ft-early:ckpt-step-x"):
        with pytest.raises(targets.ModelNotFound):
            _resolve(account.team_id, unknown)


def test_another_teams_fine_tuned_models_are_not_found_nor_listed(tuneboard_env, account, client):
    from app.db import new_session

    beta = make_account(new_session, "carol@example.com", "Beta")
    theirs = _finished(beta.team_id, "secret", time.time())
    ours = _finished(account.team_id, "ours", time.time())
    _finished(account.team_id, "ours", time.time() + 5)  # the same suffix again: listed once
    with pytest.raises(targets.ModelNotFound):
        _resolve(account.team_id, f"org/base:ft-{theirs}")
    with pytest.raises(targets.ModelNotFound):
        _resolve(account.team_id, "org/base:ft-secret")
    listed = [model["id"] for model in client.get("/v1/models").json()["data"]]
    assert listed.count("org/base:ft-ours") == 1 and not any("secret" in name for name in listed)
    assert f"org/base:ft-{ours}" not in listed  # named by its suffix, not twice
    answer = client.post("/v1/chat/completions", json={"model": "org/base:ft-secret",
                                                         "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "model_not_found"


def test_a_fine_tuned_model_is_retrieved_as_openai_retrieves_one_and_a_base_id_still_reaches_its_card(
        tuneboard_env, account, client):
    from app.db import new_session

    ours = _finished(account.team_id, "ours", time.time())
    card = client.get("/v1/models/org/base:ft-ours")
    assert card.status_code == 200, card.text
    assert card.json() | {"created": 0} == card.json() | {
        "id": "org/base:ft-ours", "object": "model", "owned_by": "Alpha", "parent": "org/base", "job_id": ours,
        "family": "fine-tuned", "created": 0}
    beta = make_account(new_session, "carol@example.com", "Beta")
    _finished(beta.team_id, "secret", time.time())
    for unknown in ("org/base:ft-secret", "org/base:ft-never", f"org/base:ft-{ours}:ckpt-step-7"):
        answer = client.get(f"/v1/models/{unknown}")
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "model_not_found", unknown
    base = client.get("/v1/models/HuggingFaceTB/SmolLM2-135M-Instruct")
    assert base.status_code == 200 and base.json()["architecture"] == "LlamaForCausalLM"


def test_fine_tuned_names_read_back_to_their_parts():
    assert model_names.parse("org/base:ft-x") == model_names.FineTunedName("org/base", "x", None)
    assert model_names.parse("/models/m:ft-ftjob-1:ckpt-step-30") == model_names.FineTunedName("/models/m",
                                                                                               "ftjob-1", 30)
    for not_fine_tuned in ("org/base", ":ft-x", "org/base:ft-", "org/base:ft-x:ckpt-step-", "a:ft-b:ckpt-step-1e3"):
        assert model_names.parse(not_fine_tuned) is None, not_fine_tuned
