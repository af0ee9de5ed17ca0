"""The adapter a user downloads works away from the worker: trained by a real worker on a hub model (a tiny
one, in a Hugging Face cache as a worker holds it), downloaded over HTTP, unzipped where only the zip's files
and the base model are, it names the hub id (not the worker's folder), is named after the run, carries a
model card with the run's facts, and both the card's code and an explicit `PeftModel.from_pretrained` load it.
"""

from __future__ import annotations

import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from app.accounts.auth import SESSION_COOKIE
from tests.jobs.helpers import chat_records, upload, wait_for_inventory, wait_until_finished

HUB_ID = "tuneboard-tests/tiny-llama"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
RUN_NAME = "Colours v2 / ünïcode"
ZIP_NAME = "Colours-v2-n-code-adapter"  # what is left of RUN_NAME once safe for a file name


def _hub_cache(root: Path, model_dir: Path) -> Path:
    """A Hugging Face hub cache holding model_dir as HUB_ID, laid out as huggingface_hub writes it."""
    repo = root / ("models--" + HUB_ID.replace("/", "--"))
    shutil.copytree(model_dir, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return root


@pytest.fixture
def hub_model(tiny_model_dir, tuneboard_env, tmp_path, monkeypatch) -> str:
    """HUB_ID, cached for the worker and the web app (offline, as in every test), its inventory computed."""
    cache = _hub_cache(tmp_path / "worker-hf-cache", tiny_model_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    tuneboard_env.env["HF_HUB_CACHE"] = str(cache)
    wait_for_inventory(HUB_ID, tuneboard_env.settings)
    return HUB_ID


def _python_block(card: str) -> str:
    match = re.search(r"```python\n(.*?)```", card, re.S)
    assert match, card
    return match.group(1)


CHECK = """
import sys
from peft import PeftModel
from transformers import AutoModelForCausalLM
base_dir, adapter_dir, usage = sys.argv[1:]
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
print("lora params", sum(p.numel() for n, p in model.named_parameters() if "lora_" in n))
exec(open(usage).read())
"""


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the card's queries are plain ORM reads
def test_downloaded_adapter_names_the_hub_base_and_loads_where_only_the_zip_and_base_are(
        tuneboard_env, hub_model, tiny_model_dir, start_worker, live_server, account, tmp_path):
    start_worker()
    with httpx.Client(base_url=live_server.url, headers=account.headers, timeout=30) as http:
        train = upload(http, chat_records(24), name="colours.jsonl")
        job = http.post("/v1/fine_tuning/jobs", json={
            "model": hub_model, "training_file": train["id"], "suffix": RUN_NAME,
            "lora": {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj", "down_proj"]},
            "training": {"max_steps": 12, "batch_size": 4, "learning_rate": 5e-3, "sequence_length": 64,
                         "precision": "fp32", "lr_scheduler": "constant", "validation_split": 25},
        })
        assert job.status_code == 200, job.text
        job = wait_until_finished(http, job.json()["id"])
        assert job["status"] == "succeeded", job["error"]
        download = http.get(f"/v1/fine_tuning/jobs/{job['id']}/adapter")
    with httpx.Client(base_url=live_server.url, cookies={SESSION_COOKIE: account.session_cookie}) as browser:
        page = browser.get(f"/jobs/{job['id']}")
    assert download.status_code == 200
    assert download.headers["content-disposition"] == f'attachment; filename="{ZIP_NAME}.zip"'

    # A clean folder: the zip's files in the folder its card names, and the base as a user's hub cache holds it.
    run = tmp_path / "elsewhere"
    run.mkdir()
    with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
        assert sorted(archive.namelist()) == ["Modelfile", "README.md", "adapter_config.json",
                                              "adapter_model.safetensors"]
        archive.extractall(run / ZIP_NAME)
    user_cache = _hub_cache(run / "hf-cache", tiny_model_dir)
    base_dir = user_cache / ("models--" + HUB_ID.replace("/", "--")) / "snapshots" / COMMIT

    config = json.loads((run / ZIP_NAME / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == HUB_ID  # not the worker's cache folder
    card = (run / ZIP_NAME / "README.md").read_text()
    assert card.startswith("---\nbase_model: tuneboard-tests/tiny-llama\nlibrary_name: peft\n")
    assert f"# {RUN_NAME}" in card and job["id"] in card
    assert "| rank (r) | 8 |" in card and "| alpha | 16 (scale alpha / r = 2) |" in card
    assert "| target modules | down_proj, q_proj, v_proj |" in card
    assert f"| trainable parameters | {job['trainable_params']:,} of" in card
    assert f"Training: `colours.jsonl` (24 examples, `{train['id']}`)" in card
    assert "Validation: 25 % of the training file, held out" in card
    assert "| learning rate | 0.005, constant schedule |" in card and "| steps | 12 of 12" in card
    final = job["final_metrics"]
    assert f"Final train loss: {final['loss']:.4g}" in card
    assert f"Final eval loss: {final['eval_loss']:.4g}" in card
    usage = _python_block(card)
    assert f'base_model = "{HUB_ID}"' in usage and f'adapter_dir = "{ZIP_NAME}"' in usage
    # The job page shows the same code.
    assert page.status_code == 200
    shown = re.search(r'<pre class="code" id="adapter-usage">(.*?)</pre>', page.text, re.S)
    assert shown and html.unescape(shown.group(1)).strip() == usage.strip()

    (tmp_path / "usage.py").write_text(usage)
    (tmp_path / "check.py").write_text(CHECK)
    env = {**os.environ, "HF_HUB_CACHE": str(user_cache), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, str(tmp_path / "check.py"), str(base_dir), ZIP_NAME,
                             str(tmp_path / "usage.py")], cwd=run, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"lora params {job['trainable_params']}" in result.stdout
    assert sorted(p.name for p in run.iterdir()) == [ZIP_NAME, "hf-cache"]
