"""Idempotency-Key on POST /v1/files and POST /v1/fine_tuning/jobs, sent by the `openai` SDK.

A retried create makes one object; the same key with another body answers 409; a failed request forgets
its key; keys are per team; concurrent first attempts with one key still make one job.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.api.conftest import create_job, sdk_client, upload
from tests.jobs.helpers import chat_records, json_lines


def key(value: str) -> dict:
    return {"extra_headers": {"Idempotency-Key": value}}


def test_a_retried_job_create_makes_one_job(sdk):
    train = upload(sdk)
    first = create_job(sdk, train.id, suffix="once", metadata={"try": "1"}, **key("k1"))
    again = create_job(sdk, train.id, suffix="once", metadata={"try": "1"}, **key("k1"))
    assert again.id == first.id and again.status == "queued"
    assert [j.id for j in sdk.fine_tuning.jobs.list()] == [first.id]
    assert len(list(sdk.fine_tuning.jobs.list_events(first.id))) == 1  # queued once

    # A replay answers the job as it is now, not as it was.
    sdk.fine_tuning.jobs.cancel(first.id)
    assert create_job(sdk, train.id, suffix="once", metadata={"try": "1"}, **key("k1")).status == "cancelled"

    with pytest.raises(openai.ConflictError) as caught:
        create_job(sdk, train.id, suffix="twice", metadata={"try": "1"}, **key("k1"))
    assert (caught.value.code, caught.value.param) == ("idempotency_key_reused", "Idempotency-Key")

    other = create_job(sdk, train.id, suffix="once", metadata={"try": "1"}, **key("k2"))
    without_key = create_job(sdk, train.id, suffix="once", metadata={"try": "1"})
    assert len({first.id, other.id, without_key.id}) == 3


def test_a_failed_create_forgets_its_key(sdk):
    train = upload(sdk)
    with pytest.raises(openai.UnprocessableEntityError):
        create_job(sdk, train.id, extra_body={"lora": {"r": 0}}, **key("fix-me"))
    with pytest.raises(openai.NotFoundError):
        create_job(sdk, "file-missing", **key("fix-me"))
    fixed = create_job(sdk, train.id, extra_body={"lora": {"r": 4}}, **key("fix-me"))
    assert fixed.status == "queued"


def test_a_retried_upload_makes_one_file(sdk):
    data = json_lines(chat_records(6))
    first = sdk.files.create(file=("a.jsonl", io.BytesIO(data)), purpose="fine-tune", **key("up-1"))
    again = sdk.files.create(file=("a.jsonl", io.BytesIO(data)), purpose="fine-tune", **key("up-1"))
    assert again.id == first.id and [f.id for f in sdk.files.list()] == [first.id]
    with pytest.raises(openai.ConflictError) as caught:
        sdk.files.create(file=("a.jsonl", io.BytesIO(data + b"\n")), purpose="fine-tune", **key("up-1"))
    assert caught.value.code == "idempotency_key_reused"

    # Once the file is deleted the key no longer points anywhere: the retry uploads it anew.
    sdk.files.delete(first.id)
    anew = sdk.files.create(file=("a.jsonl", io.BytesIO(data)), purpose="fine-tune", **key("up-1"))
    assert anew.id != first.id and [f.id for f in sdk.files.list()] == [anew.id]


def test_keys_belong_to_a_team(sdk, live_server, make_user):
    other = sdk_client(live_server.url, make_user("carol@example.com", "Beta").token)
    mine = upload(sdk)
    theirs = upload(other)
    mine_job = create_job(sdk, mine.id, **key("shared"))
    their_job = create_job(other, theirs.id, **key("shared"))
    assert mine_job.id != their_job.id
    assert [j.id for j in other.fine_tuning.jobs.list()] == [their_job.id]


def test_concurrent_first_attempts_with_one_key_make_one_job(sdk):
    train = upload(sdk)

    def attempt(_):
        try:
            return create_job(sdk, train.id, **key("race")).id
        except openai.ConflictError as exc:
            assert exc.code == "idempotency_request_in_progress"
            return None

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(attempt, range(6)))
    made = {r for r in results if r is not None}
    assert len(made) == 1
    assert [j.id for j in sdk.fine_tuning.jobs.list()] == list(made)
