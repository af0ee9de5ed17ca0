"""The launch flow on the configuration page: upload data (errors by line), preview it with the model's
tokenizer, see the run's length, and launch a job that opens its page."""

from __future__ import annotations

import html as html_text
import io
import json
import re

import pytest
from sqlalchemy import select

from app.db import new_session
from app.tables import Job
from tests.configure.conftest import wait_until
from tests.configure.test_pages import HX, form, messages_beside
from tests.jobs.helpers import chat_records

# The form's side of a launch; storing jobs runs on both databases in the API and jobs tests.
pytestmark = pytest.mark.one_database


def _jsonl(records) -> bytes:
    return "\n".join(json.dumps(r) for r in records).encode()


def _upload(client, body: bytes, name: str = "train.jsonl", **fields):
    return client.post("/datasets", data=form(**fields), files={"upload": (name, io.BytesIO(body))}, headers=HX)


def _selected_file(html: str) -> str | None:
    match = re.search(r'<select name="training_file".*?<option value="([^"]+)" selected', html, re.S)
    return match.group(1) if match else None


def test_bad_upload_lists_its_problems_by_line_and_selects_nothing(client):
    records = chat_records(4)
    records[2]["messages"][1]["role"] = "robot"
    response = _upload(client, _jsonl(records))
    text = html_text.unescape(response.text)
    assert "line 3: messages[1].role must be one of system, user, assistant" in text
    assert _selected_file(response.text) is None
    assert client.get("/v1/files").json()["data"] == []


def test_good_upload_is_selected_and_summarised(client):
    response = _upload(client, _jsonl(chat_records(12)))
    file_id = _selected_file(response.text)
    assert file_id and file_id.startswith("file-")
    assert "12 examples (chat)" in response.text
    assert 'id="dataset-preview"' in response.text


def test_chosen_file_feeds_the_advice_and_the_run_plan(client):
    file_id = _selected_file(_upload(client, _jsonl(chat_records(40))).text)
    html = client.post("/estimate", data=form(training_file=file_id, batch_size="4", num_epochs="3",
                                              gradient_accumulation_steps="2", validation_split="10"),
                       headers=HX).text
    # 40 examples, 10% held out -> 36; ceil(36 / 4) = 9 batches, ceil(9 / 2) = 5 steps an epoch, 3 epochs.
    assert re.search(r'id="plan-steps">15<', html)
    assert "No validation set" not in html


def test_preview_renders_the_chat_template_and_counts_tokens(client, tiny_model_dir):
    file_id = _selected_file(_upload(client, _jsonl(chat_records(6))).text)
    params = {"model": str(tiny_model_dir), "sequence_length": "16"}
    first = client.get(f"/datasets/{file_id}/preview", params=params)
    assert "Tokenizing" in first.text or 'id="token-facts"' in first.text

    def ready():
        text = client.get(f"/datasets/{file_id}/preview", params=params).text
        return text if 'id="token-facts"' in text else None

    text = html_text.unescape(wait_until(ready, timeout=120))
    assert "<|im_start|>user\nWhat is the colour of the sky?<|im_end|>" in text
    # Only the assistant's answer carries loss.
    assert re.search(r'<mark class="trainable">The sky is blue\.<\|im_end\|>', text)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    lengths = [len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"])
               for r in chat_records(6)]
    assert re.search(rf'id="preview-tokens">{sum(lengths):,}<', text)
    assert re.search(rf'id="preview-over"[^>]*>{sum(1 for n in lengths if n > 16)}', text)


def test_launch_stores_the_job_and_opens_its_page(client):
    file_id = _selected_file(_upload(client, _jsonl(chat_records(20))).text)
    response = client.post("/launch", data=form(training_file=file_id, learning_rate="0.001", max_steps="7",
                                                seed="7", suffix="first-try", loss_on="all"),
                           follow_redirects=False)
    assert response.status_code == 303
    job_id = response.headers["location"].removeprefix("/jobs/")
    with new_session() as session:
        job = session.scalars(select(Job).where(Job.id == job_id)).one()
    assert job.status == "queued" and job.suffix == "first-try"
    assert job.config["training"]["learning_rate"] == 0.001 and job.config["training"]["max_steps"] == 7
    assert job.config["training"]["loss_on"] == "all" and job.config["lora"]["r"] == 16
    assert job.estimate["trainable_params"] == 4_884_480
    page = client.get(f"/jobs/{job_id}")
    assert "first-try" in page.text and 'id="loss-chart"' in page.text
    fragment = client.get(f"/jobs/{job_id}", headers=HX)
    assert "<html" not in fragment.text and 'id="job-status"' in fragment.text


def test_launch_without_a_training_file_says_so_beside_the_field(client):
    response = client.post("/launch", data=form(), follow_redirects=False)
    assert response.status_code == 422
    assert "choose or upload a training file" in messages_beside(response.text, "training_file")


def test_launch_with_a_bad_learning_rate_names_the_field(client):
    file_id = _selected_file(_upload(client, _jsonl(chat_records(8))).text)
    response = client.post("/launch", data=form(training_file=file_id, learning_rate="-1"), follow_redirects=False)
    assert response.status_code == 422
    assert "greater than 0" in messages_beside(response.text, "learning_rate")
