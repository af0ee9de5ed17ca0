"""The merged model: built on a real worker from a trained job (PEFT's merge_and_unload), stored with its progress
shown, downloaded as a zip, and loaded with `AutoModelForCausalLM.from_pretrained` alone, giving the unmerged
adapter's logits within fp32 tolerance; asked for twice it is built once; the adapter's Ollama Modelfile; what a
job without an adapter, another team, a file name that is not the export's, and a Redis outage get.
"""

from __future__ import annotations

import io
import time
import zipfile

import pytest

from tests.api.conftest import sdk_client
from tests.inference.conftest import trained_tiny_job
from tests.jobs.helpers import stored_job
from tests.service_fixtures import make_account

pytestmark = pytest.mark.one_database  # building and serving export files: no database question here


@pytest.fixture
def sdk(live_server, account):
    client = sdk_client(live_server.url, account.token)
    yield client
    client.close()


def _wait_built(client, job_id: str, seen: list[dict]) -> dict:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        export = client.get(f"/v1/fine_tuning/jobs/{job_id}/exports/merged").json()
        seen.append(export)
        if export["status"] in ("succeeded", "failed"):
            return export
        time.sleep(0.2)
    raise AssertionError(f"the merged export did not finish: {seen[-1]}")


def test_a_merged_model_loads_without_peft_and_gives_the_adapters_logits(sdk, client, start_worker, tiny_model_dir,
                                                                          tuneboard_env, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start_worker()
    job = trained_tiny_job(sdk, tiny_model_dir, tuneboard_env)
    asked = client.post(f"/v1/fine_tuning/jobs/{job.id}/exports", json={"kind": "merged"})
    # An idle worker may have begun it before the answer is written: queued or running, never built yet.
    assert asked.status_code == 202 and asked.json()["status"] in ("queued", "running"), asked.text
    again = client.post(f"/v1/fine_tuning/jobs/{job.id}/exports", json={})
    assert again.json()["id"] == asked.json()["id"]  # one export per job and kind, however often it is asked for

    seen: list[dict] = []
    export = _wait_built(client, job.id, seen)
    assert export["status"] == "succeeded", export["error"]
    progress = [entry["progress"] for entry in seen]
    assert progress == sorted(progress) and progress[-1] == 1.0  # it only ever moves forward
    names = {entry["name"] for entry in export["files"]}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "Modelfile"} <= names, names
    assert export["bytes"] == sum(entry["bytes"] for entry in export["files"])
    assert client.post(f"/v1/fine_tuning/jobs/{job.id}/exports", json={}).status_code == 200  # built: not again
    listed = client.get(f"/v1/fine_tuning/jobs/{job.id}/exports").json()["data"]
    assert [entry["id"] for entry in listed] == [export["id"]]

    download = client.get(export["download_url"])
    assert download.status_code == 200
    folder = "tiny-merged"  # the run's name (its suffix)
    archive = zipfile.ZipFile(io.BytesIO(download.content))
    assert {name.split("/", 1)[0] for name in archive.namelist()} == {folder}
    archive.extractall(tmp_path)
    merged_dir = tmp_path / folder
    assert "FROM ." in (merged_dir / "Modelfile").read_text()
    config = client.get(f"/v1/fine_tuning/jobs/{job.id}/exports/merged/content", params={"file": "config.json"})
    assert config.status_code == 200 and config.content == (merged_dir / "config.json").read_bytes()

    # The merged model alone (no PEFT) against base + adapter as PEFT applies it unmerged.
    adapter_zip = client.get(f"/v1/fine_tuning/jobs/{job.id}/adapter").content
    zipfile.ZipFile(io.BytesIO(adapter_zip)).extractall(tmp_path / "adapter")
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    batch = tokenizer(["The quick brown fox", "jumps over the lazy dog"], return_tensors="pt", padding=True)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                         tmp_path / "adapter").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        got, expected, base_logits = merged(**batch).logits, unmerged(**batch).logits, base(**batch).logits
    assert merged.dtype == torch.float32
    # Merged, W + BA is rounded once per weight instead of per product: equal within fp32's accumulated rounding
    # (logits of magnitude ~3 agree to ~2e-5), a hundred times closer than the adapter's own effect.
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    assert (got - base_logits).abs().max() > 100 * (got - expected).abs().max()  # the adapter is in there

    page = client.get(f"/jobs/{job.id}").text
    assert 'id="download-merged"' in page and "Download merged model (.zip" in page


def test_the_adapter_zip_and_the_api_carry_an_ollama_modelfile(client, account):
    job_id = stored_job(account.team_id, status="succeeded", suffix="support-bot", adapter_key="jobs/x/adapter")
    modelfile = client.get(f"/v1/fine_tuning/jobs/{job_id}/modelfile")
    assert modelfile.status_code == 200
    lines = [line for line in modelfile.text.splitlines() if not line.startswith("#")]
    assert lines == ["FROM ./base", "ADAPTER ./support-bot-adapter"]
    assert "ollama create support-bot -f Modelfile" in modelfile.text
    assert 'id="ollama-modelfile"' in client.get(f"/jobs/{job_id}").text


def test_what_cannot_be_exported_says_why(client, account, live_server):
    running = stored_job(account.team_id, status="running")
    refused = client.post(f"/v1/fine_tuning/jobs/{running}/exports", json={"kind": "merged"})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "adapter_not_available"
    assert "status running" in refused.json()["error"]["message"]
    assert client.post(f"/v1/fine_tuning/jobs/{running}/exports", json={"kind": "gguf"}).status_code == 422
    missing = client.get(f"/v1/fine_tuning/jobs/{running}/exports/merged")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "export_not_found"
    assert client.get(f"/v1/fine_tuning/jobs/{running}/modelfile").status_code == 409

    from app.db import new_session

    other = make_account(new_session, "eve@example.com", "Eve's team")
    theirs = stored_job(other.team_id, status="succeeded", adapter_key="jobs/y/adapter")
    for method, path in (("POST", f"/v1/fine_tuning/jobs/{theirs}/exports"),
                         ("GET", f"/v1/fine_tuning/jobs/{theirs}/exports/merged/content"),
                         ("GET", f"/v1/fine_tuning/jobs/{theirs}/modelfile")):
        answer = client.request(method, path, json={} if method == "POST" else None)
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "job_not_found"


def test_a_built_export_serves_only_its_own_files(client, account, tuneboard_env):
    from app.db import new_session
    from app.storage import artifacts
    from app.tables import Export

    job_id = stored_job(account.team_id, status="succeeded", adapter_key="jobs/z/adapter")
    key = f"jobs/{job_id}/exports/merged/build-1"
    artifacts.save_bytes(tuneboard_env.settings, f"{key}/config.json", b"{}")
    artifacts.save_bytes(tuneboard_env.settings, f"jobs/{job_id}/secret.txt", b"not part of the export")
    with new_session() as session:
        session.add(Export(job_id=job_id, team_id=account.team_id, kind="merged", status="succeeded", progress=1.0,
                           stage="Ready.", storage_key=key, files=[{"name": "config.json", "bytes": 2}]))
        session.commit()
    url = f"/v1/fine_tuning/jobs/{job_id}/exports/merged/content"
    assert client.get(url, params={"file": "config.json"}).content == b"{}"
    for name in ("../../secret.txt", "../secret.txt", "/etc/passwd", "config.json/..", "x" * 201):
        answer = client.get(url, params={"file": name})
        assert answer.status_code in (404, 422), name
        assert b"not part of the export" not in answer.content


def test_the_job_pages_button_queues_the_build_and_polls_its_progress(client, account):
    job_id = stored_job(account.team_id, status="succeeded", adapter_key="jobs/w/adapter", queue="nobody-listens")
    page = client.get(f"/jobs/{job_id}").text
    assert 'id="build-merged"' in page and "Build merged model" in page
    block = client.post(f"/jobs/{job_id}/exports/merged", headers={"HX-Request": "true"}).text
    assert '<progress id="merged-progress"' in block and 'hx-trigger="every 1s"' in block
    assert "Waiting for a worker." in block
    assert 'id="merged-progress"' in client.get(f"/jobs/{job_id}").text  # a reload shows it under way too


def test_asking_for_an_export_while_redis_is_down_says_so_and_can_be_asked_again(account, tuneboard_env,
                                                                                  monkeypatch):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import get_settings
    from tests.services import free_port

    job_id = stored_job(account.team_id, status="succeeded", adapter_key="jobs/r/adapter")
    monkeypatch.setenv("TUNEBOARD_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    get_settings.cache_clear()
    with TestClient(create_app(), headers=account.headers) as down:
        refused = down.post(f"/v1/fine_tuning/jobs/{job_id}/exports", json={})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "redis_unavailable"
        export = down.get(f"/v1/fine_tuning/jobs/{job_id}/exports/merged").json()
        assert export["status"] == "failed" and "Redis" in export["error"]["message"]
        block = down.post(f"/jobs/{job_id}/exports/merged", headers={"HX-Request": "true"}).text
        assert "did not answer" in block and 'id="build-merged"' in block  # the reason beside the button
    monkeypatch.setenv("TUNEBOARD_REDIS_URL", tuneboard_env.redis_url)
    get_settings.cache_clear()
    with TestClient(create_app(), headers=account.headers) as back:
        again = back.post(f"/v1/fine_tuning/jobs/{job_id}/exports", json={})
        assert again.status_code == 202 and again.json()["status"] in ("queued", "running"), again.text
        assert again.json()["error"] is None
    get_settings.cache_clear()
