"""A model id that is a local folder: only folders under the configured model roots, never an uploaded file,
and one "unknown model" answer for every other path, whether or not it exists (issue 10, point 6 and the
`~nosuchuser` 500 of point 11)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from app import redis_client
from app.base_models.inventories import worker_stack_installed
from tests.conftest import require

pytestmark = pytest.mark.one_database  # paths on disk: no database question here

ESTIMATE = "/v1/fine_tuning/estimate"
TINY_CONFIG = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 160,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
    "max_position_embeddings": 256, "tie_word_embeddings": False,
}


def model_folder(path: Path, config: dict | None = TINY_CONFIG) -> Path:
    """A folder that looks like a model to whoever reads only its config.json."""
    path.mkdir(parents=True)
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture
def roots(tuneboard_env, tmp_path, monkeypatch) -> Path:
    """One model root, tmp_path/models, for this process and the processes the test starts."""
    from app.settings import get_settings

    root = tmp_path / "models"
    root.mkdir()
    monkeypatch.setenv("TUNEBOARD_MODEL_ROOTS", str(root))
    tuneboard_env.env["TUNEBOARD_MODEL_ROOTS"] = str(root)
    get_settings.cache_clear()
    return root


@pytest.fixture
def client(roots, account):
    from app.main import create_app

    with TestClient(create_app(), headers=account.headers, follow_redirects=False) as test_client:
        yield test_client


@pytest.fixture
def training_file(client) -> str:
    lines = "".join(json.dumps({"text": f"example {i}"}) + "\n" for i in range(4))
    response = client.post("/v1/files", files={"file": ("train.jsonl", io.BytesIO(lines.encode()))},
                           data={"purpose": "fine-tune"})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def answers(client: TestClient, model: str, training_file: str) -> list[tuple[int, dict]]:
    """What the three routes that take a model id say about it: model detail, estimate, job create."""
    detail = client.get(f"/v1/models/{quote(model, safe='')}")
    estimate = client.post(ESTIMATE, json={"model": model})
    job = client.post("/v1/fine_tuning/jobs", json={"model": model, "training_file": training_file})
    return [(r.status_code, r.json()) for r in (detail, estimate, job)]


def assert_unknown(client: TestClient, model: str, training_file: str) -> str:
    """Assert the three routes call `model` unknown; returns their message with the id itself masked."""
    masked = set()
    shown = model if len(model) <= 120 else model[:120] + "…"  # a long path (as under xdist) is cut in the message
    for status, body in answers(client, model, training_file):
        assert status == 404, (model, status, body)
        error = body["error"]
        assert (error["code"], error["param"]) == ("model_not_found", "model"), (model, error)
        assert error["message"].startswith(f"Unknown model {shown!r}: "), (model, error["message"])
        masked.add(error["message"].replace(repr(shown), "MODEL"))
    assert len(masked) == 1, masked
    return masked.pop()


def test_probing_the_servers_folders_gets_one_answer_whatever_exists(client, roots, tmp_path, training_file):
    elsewhere = tmp_path / "elsewhere"
    outside_model = model_folder(elsewhere / "secret-model")
    model_folder(elsewhere / "weights-only", config=None)
    (elsewhere / "a-file").write_text("x")
    (roots / "escape").symlink_to(outside_model)  # a link inside a root to a model outside every root
    probes = [str(outside_model), str(elsewhere / "weights-only"), str(elsewhere / "a-file"),
              str(elsewhere / "no-such-folder"), "/etc", "/", str(roots), str(roots / "escape"),
              f"{roots}/../elsewhere/secret-model", "./models", "../elsewhere", "~", "~root", "~nosuchuser/x"]
    messages = {assert_unknown(client, model, training_file) for model in probes}
    assert messages == {"Unknown model MODEL: give a Hugging Face model id (org/name) or the path of a folder with "
                        "a config.json under a model root the admin configured (TUNEBOARD_MODEL_ROOTS)."}
    # Nothing about the secret model's architecture came back, and no job was stored for any probe.
    assert client.get("/v1/fine_tuning/jobs").json()["data"] == []


def test_tilde_model_id_is_an_unknown_model_not_a_500(client, training_file):
    assert_unknown(client, "~nosuchuser", training_file)


def test_an_uploaded_file_never_becomes_a_model_folder(client, tuneboard_env, monkeypatch, training_file):
    from app.settings import get_settings

    # Even an admin who lists the whole data dir as a root does not make uploads loadable.
    monkeypatch.setenv("TUNEBOARD_MODEL_ROOTS", str(tuneboard_env.data_dir))
    get_settings.cache_clear()
    # A valid dataset (one `text` record) that is also a model config, uploaded under the name config.json.
    record = json.dumps({"text": "hi", **TINY_CONFIG}).encode()
    uploaded = client.post("/v1/files", data={"purpose": "fine-tune"},
                           files={"file": ("config.json", io.BytesIO(record))})
    assert uploaded.status_code == 200, uploaded.text
    folders = [path.parent for path in (tuneboard_env.data_dir / "artifacts").rglob("config.json")]
    assert len(folders) == 1  # the upload's own folder holds a config.json
    assert_unknown(client, str(folders[0]), training_file)
    scratch = model_folder(tuneboard_env.data_dir / "scratch" / "cache" / "planted")
    assert_unknown(client, str(scratch), training_file)


def test_a_model_folder_under_a_root_is_usable(client, roots, training_file):
    require(worker_stack_installed(), "torch, transformers and peft (the worker extra)")
    from tests.configure.conftest import wait_until

    # Any name an admin gives a folder is fine (it never becomes a cache file name as it is).
    folder = str(model_folder(roots / "org" / "tiny \u2215 \uff0e\uff0e model"))
    first = client.post(ESTIMATE, json={"model": folder})
    assert first.status_code == 202 and first.json()["error"]["code"] == "computing"
    settled = wait_until(lambda: (r := client.post(ESTIMATE, json={"model": folder})).status_code != 202 and r)
    assert settled.status_code == 200, settled.text
    assert client.get(f"/v1/models/{folder}").json()["architecture"] == "LlamaForCausalLM"


def test_hub_ids_are_still_hub_ids(client, training_file):
    # Not folders, whatever the web host's working directory holds (this repository has `app/`, `tests/`).
    for model in ("app", "openai-community/gpt2"):
        response = client.post(ESTIMATE, json={"model": model})
        # hub_unreachable: looked up on the hub, which the tests cannot reach (HF_HUB_OFFLINE): a hub id, not a folder.
        assert response.status_code in (200, 202) or response.json()["error"]["code"] == "hub_unreachable"


def test_the_worker_refuses_a_folder_outside_the_roots(roots, tmp_path):
    """A job stored before this rule (or cloned from one) cannot make a worker load an arbitrary folder."""
    from workers.base_models import resolve_source
    from workers.training.contract import TrainingFailure

    outside = model_folder(tmp_path / "elsewhere" / "secret-model")
    (roots / "escape").symlink_to(outside)
    for model in (str(outside), str(roots / "escape"), "~nosuchuser", str(tmp_path / "nothing")):
        with pytest.raises(TrainingFailure) as caught:
            resolve_source(model, tmp_path / "data")
        assert caught.value.code == "model_not_found" and "does not exist on this worker" in caught.value.reason
    inside = model_folder(roots / "tiny")
    assert resolve_source(str(inside), tmp_path / "data")[0] == inside.resolve()


def test_a_stored_job_naming_a_folder_outside_the_roots_fails_on_the_worker(roots, tmp_path, tuneboard_env,
                                                                           account, start_worker, tiny_model_dir):
    """A job stored before the rule (or written straight to the database) still cannot make a real worker load
    an arbitrary folder and copy its weights into a downloadable adapter."""
    from app.db import new_session
    from app.estimator.job_config import JobConfig, TrainingSettings
    from app.jobs import lifecycle
    from app.settings import get_settings
    from app.tables import Job
    from tests.jobs.helpers import upload, wait_until_finished

    outside = tiny_model_dir  # a real model with weights, outside the one root of this test
    start_worker()
    from app.main import create_app

    with TestClient(create_app(), headers=account.headers) as api:
        training_file = upload(api, [{"text": f"example {i}"} for i in range(4)])["id"]
        with new_session() as session:
            config = JobConfig(model=str(outside), training=TrainingSettings(max_steps=2, batch_size=1))
            job = lifecycle.submit(session, redis_client.get_redis(), Job(
                model=str(outside), queue=tuneboard_env.queue, config=config.model_dump(mode="json"),
                team_id=account.team_id, created_by=account.user_id, training_file_id=training_file),
                get_settings())
            job_id = job.id
        finished = wait_until_finished(api, job_id, timeout=120)
    assert finished["status"] == "failed"
    assert finished["error"]["code"] == "model_not_found"
    assert "does not exist on this worker" in finished["error"]["message"]
