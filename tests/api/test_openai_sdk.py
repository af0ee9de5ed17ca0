"""The official `openai` SDK, unchanged, against a live Tuneboard: files, fine-tuning jobs, their events and
checkpoints, cursor pagination as the SDK walks it, filters, and errors raised as the SDK's own exceptions.

Objects are checked twice: as the SDK hands them over, and re-validated strictly with the SDK's pydantic
models (the SDK itself builds them leniently), so a shape that drifts from OpenAI's fails here.
"""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from openai.types import FileObject
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint

from tests.api.conftest import CATALOG_MODEL, create_job, sdk_client, upload
from tests.jobs.helpers import chat_records, json_lines, wait_for_inventory

TERMINAL = {"succeeded", "failed", "cancelled"}


def strict(model, obj):
    """Re-validate an SDK object with full pydantic validation (raises on a wrong shape)."""
    return model.model_validate(obj.to_dict())


# ---- files -----------------------------------------------------------------------------------------------------

def test_files_upload_list_retrieve_content_and_delete(sdk):
    data = json_lines(chat_records(8))
    uploaded = [upload(sdk, chat_records(8), name=f"part{i}.jsonl") for i in range(3)]
    first = strict(FileObject, uploaded[0])
    assert first.id.startswith("file-") and first.object == "file" and first.purpose == "fine-tune"
    assert first.bytes == len(data) and first.filename == "part0.jsonl" and first.status == "processed"
    newest_first = [f.id for f in reversed(uploaded)]

    page = sdk.files.list(limit=2)
    assert [f.id for f in page.data] == newest_first[:2] and page.has_more is True
    assert [f.id for f in sdk.files.list(limit=2)] == newest_first  # the SDK walks every page
    assert [f.id for f in sdk.files.list(limit=1, order="asc")] == newest_first[::-1]
    assert [f.id for f in sdk.files.list(purpose="fine-tune")] == newest_first
    assert list(sdk.files.list(purpose="assistants")) == []

    assert sdk.files.retrieve(first.id).filename == "part0.jsonl"
    assert sdk.files.content(first.id).content == data

    deleted = sdk.files.delete(first.id)
    assert deleted.deleted is True and deleted.id == first.id
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.files.retrieve(first.id)
    assert caught.value.code == "file_not_found" and caught.value.param == "file_id"
    assert [f.id for f in sdk.files.list()] == newest_first[:2]


@pytest.mark.one_database  # the upload's validation: refused before the database
def test_an_invalid_upload_names_the_problem(sdk):
    with pytest.raises(openai.BadRequestError) as caught:
        upload(sdk, [{"messages": [{"role": "user", "content": "hi"}]}, {"nonsense": 1}])
    assert caught.value.param == "file" and caught.value.code == "invalid_file"
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.files.create(file=("x.jsonl", json_lines(chat_records(2))), purpose="assistants")
    assert caught.value.param == "purpose"


def test_a_file_in_use_by_a_job_cannot_be_deleted(sdk):
    train = upload(sdk)
    job = create_job(sdk, train.id)
    with pytest.raises(openai.ConflictError) as caught:
        sdk.files.delete(train.id)
    assert caught.value.code == "file_in_use" and job.id in caught.value.message
    assert sdk.files.retrieve(train.id).id == train.id


# ---- creating jobs ---------------------------------------------------------------------------------------------

def test_create_job_takes_openai_fields_and_tuneboard_extensions(sdk):
    train, validation = upload(sdk), upload(sdk, name="valid.jsonl")
    job = sdk.fine_tuning.jobs.create(
        model=CATALOG_MODEL, training_file=train.id, validation_file=validation.id, suffix="colours", seed=7,
        metadata={"project": "demo", "owner": "alice"},
        method={"type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 0.5}}},
        extra_body={"lora": {"r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"]},
                    "training": {"sequence_length": 256, "warmup_ratio": 0.1}, "queue": "sdk-queue"},
    )
    assert isinstance(job, FineTuningJob)
    job = strict(FineTuningJob, job)
    assert job.id.startswith("ftjob-") and job.object == "fine_tuning.job" and job.status == "queued"
    assert (job.model, job.training_file, job.validation_file) == (CATALOG_MODEL, train.id, validation.id)
    assert job.seed == 7 and job.metadata == {"project": "demo", "owner": "alice"}
    assert job.fine_tuned_model is None and job.finished_at is None and job.error is None
    expected = {"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 0.5}
    assert job.hyperparameters.model_dump() == expected
    assert job.method.type == "supervised" and job.method.supervised.hyperparameters.model_dump() == expected

    extensions = sdk.fine_tuning.jobs.retrieve(job.id).to_dict()
    assert extensions["user_provided_suffix"] == "colours" and extensions["queue"] == "sdk-queue"
    assert extensions["lora"]["r"] == 16 and extensions["lora"]["target_modules"] == ["q_proj", "v_proj"]
    training = extensions["training"]
    assert (training["num_epochs"], training["batch_size"], training["seed"]) == (2, 8, 7)
    assert training["learning_rate"] == pytest.approx(1e-4) and training["sequence_length"] == 256
    assert extensions["estimate"]["trainable_params"] > 0


@pytest.mark.one_database  # the request's validation
def test_legacy_hyperparameters_and_auto_values_are_accepted(sdk):
    train = upload(sdk)
    job = create_job(sdk, train.id, hyperparameters={"n_epochs": "auto", "batch_size": 2})
    assert job.hyperparameters.batch_size == 2 and job.hyperparameters.n_epochs == 3  # 'auto' keeps the default
    assert job.seed == 42 and job.metadata is None


# ---- listing, retrieving, cancelling ---------------------------------------------------------------------------

def test_jobs_list_pages_with_after_and_limit_as_the_sdk_walks_it(sdk):
    train = upload(sdk)
    created = [create_job(sdk, train.id).id for _ in range(5)]
    newest_first = created[::-1]

    page = sdk.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in page.data] == newest_first[:2] and page.has_more is True
    second = sdk.fine_tuning.jobs.list(limit=2, after=page.data[-1].id)
    assert [j.id for j in second.data] == newest_first[2:4] and second.has_more is True
    last = second.get_next_page()
    assert [j.id for j in last.data] == newest_first[4:] and last.has_more is False and not last.has_next_page()
    assert [j.id for j in sdk.fine_tuning.jobs.list(limit=2)] == newest_first
    assert [j.id for j in sdk.fine_tuning.jobs.list(limit=5)] == newest_first
    assert all(isinstance(strict(FineTuningJob, j), FineTuningJob) for j in page.data)

    with pytest.raises(openai.BadRequestError) as caught:
        sdk.fine_tuning.jobs.list(after="ftjob-doesnotexist")
    assert caught.value.param == "after" and caught.value.code == "invalid_cursor"
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        sdk.fine_tuning.jobs.list(limit=0)
    assert caught.value.param == "limit"


def test_jobs_list_filters_by_metadata_and_status(sdk):
    train = upload(sdk)
    tagged = {name: create_job(sdk, train.id, metadata=meta).id for name, meta in {
        "a1": {"batch": "a", "owner": "alice"}, "a2": {"batch": "a", "owner": "bob"},
        "b1": {"batch": "b", "owner": "alice"}, "blank": {"batch": ""}}.items()}
    untagged = create_job(sdk, train.id).id

    def ids(**kwargs) -> set[str]:
        return {j.id for j in sdk.fine_tuning.jobs.list(limit=100, **kwargs)}

    assert ids(metadata={"batch": "a"}) == {tagged["a1"], tagged["a2"]}
    assert ids(metadata={"batch": "a", "owner": "alice"}) == {tagged["a1"]}
    assert ids(metadata={"batch": ""}) == {tagged["blank"]}
    assert ids(metadata={"batch": "zzz"}) == set()
    assert ids(extra_query={"metadata": "null"}) == {untagged}
    assert len(ids()) == 5 and len(ids(metadata={})) == 5

    sdk.fine_tuning.jobs.cancel(tagged["b1"])
    assert ids(extra_query={"status": "cancelled"}) == {tagged["b1"]}
    assert ids(extra_query={"status": "queued"}, metadata={"batch": "a"}) == {tagged["a1"], tagged["a2"]}
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        ids(extra_query={"status": "exploded"})
    assert caught.value.param == "status"


def test_retrieve_cancel_and_events_newest_first(sdk):
    train = upload(sdk)
    job = create_job(sdk, train.id)
    assert sdk.fine_tuning.jobs.retrieve(job.id).id == job.id

    cancelled = sdk.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert sdk.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.fine_tuning.jobs.cancel(job.id)
    assert caught.value.code == "job_finished"

    events = list(sdk.fine_tuning.jobs.list_events(job.id, limit=1))  # one page per event
    assert [e.data["kind"] for e in events] == ["cancelled", "queued"]
    assert all(isinstance(e, FineTuningJobEvent) and e.object == "fine_tuning.job.event" for e in events)
    assert events[0].created_at >= events[1].created_at
    page = sdk.fine_tuning.jobs.list_events(job.id, limit=1)
    assert page.has_more is True and [e.id for e in page.get_next_page().data] == [events[1].id]
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.fine_tuning.jobs.list_events(job.id, after="not-an-event")
    assert caught.value.param == "after"


# ---- errors ----------------------------------------------------------------------------------------------------

@pytest.mark.one_database  # the error envelope (another team's lists are checked on both databases by the list tests)
def test_errors_arrive_as_the_sdks_exceptions_with_code_and_param(sdk, live_server, make_user):
    train = upload(sdk)
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk_client(live_server.url, "tb_not_a_real_token").files.list()
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"

    with pytest.raises(openai.NotFoundError) as caught:
        sdk.fine_tuning.jobs.retrieve("ftjob-nope")
    assert (caught.value.code, caught.value.param) == ("job_not_found", "fine_tuning_job_id")
    body = caught.value.body
    assert {**body, "message": None} == {"message": None, "type": "invalid_request_error",
                                         "param": "fine_tuning_job_id", "code": "job_not_found"}
    assert "ftjob-nope" in body["message"]
    with pytest.raises(openai.NotFoundError) as caught:
        create_job(sdk, "file-nope")
    assert caught.value.param == "training_file"

    bad_epochs = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}}
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        create_job(sdk, train.id, method=bad_epochs)
    assert caught.value.param == "method.supervised.hyperparameters.n_epochs"
    assert "n_epochs" in caught.value.message
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        create_job(sdk, train.id, extra_body={"lora": {"r": 0}})
    assert caught.value.param == "lora.r" and caught.value.code == "invalid_value"
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        create_job(sdk, train.id, extra_body={"training": {"max_steps": 0}})
    assert caught.value.param == "training.max_steps"

    # Another team's job is reported exactly like one that does not exist.
    job = create_job(sdk, train.id)
    other = sdk_client(live_server.url, make_user("carol@example.com", "Beta").token)
    for call in (lambda: other.fine_tuning.jobs.retrieve(job.id), lambda: other.fine_tuning.jobs.cancel(job.id),
                 lambda: other.fine_tuning.jobs.list_events(job.id), lambda: other.files.content(train.id),
                 lambda: other.fine_tuning.jobs.checkpoints.list(job.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert list(other.fine_tuning.jobs.list()) == [] and list(other.files.list()) == []


@pytest.mark.one_database  # the error envelope
def test_every_api_error_uses_the_envelope(live_server, account):
    def error(response, status: int) -> dict:
        assert response.status_code == status, response.text
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
        return body["error"]

    with httpx.Client(base_url=live_server.url, headers=account.headers) as http:
        assert error(http.get("/v1/no/such/thing"), 404)["code"] == "not_found"
        not_allowed = http.put("/v1/files")
        assert error(not_allowed, 405)["code"] == "method_not_allowed" and "POST" in not_allowed.headers["allow"]
        assert error(http.post("/v1/fine_tuning/jobs", content=b"{not json",
                               headers={"content-type": "application/json"}), 422)["code"] == "invalid_value"
        assert error(http.get("/v1/fine_tuning/jobs", params={"limit": "many"}), 422)["param"] == "limit"
        assert error(http.get("/v1/fine_tuning/jobs/x/metrics", params={"max_points": 1}), 422)["param"] == \
            "max_points"
        long_key = {"Idempotency-Key": "k" * 300}
        assert error(http.post("/v1/fine_tuning/jobs", json={}, headers=long_key), 422)["param"] == "Idempotency-Key"
    assert error(httpx.get(live_server.url + "/v1/files"), 401)["code"] == "invalid_api_key"


@pytest.mark.one_database  # the schema document
def test_openapi_schema_documents_the_extensions(live_server, account):
    schema = httpx.get(live_server.url + "/openapi.json", headers=account.headers).json()
    paths = schema["paths"]
    for path in ("/v1/fine_tuning/estimate", "/v1/fine_tuning/jobs/{job_id}/metrics",
                 "/v1/fine_tuning/jobs/{job_id}/stream", "/v1/fine_tuning/jobs/{job_id}/adapter"):
        assert path in paths, path

    def params(path: str, method: str = "get") -> dict[str, dict]:
        return {p["name"]: p for p in paths[path][method]["parameters"]}

    assert "max_points" in params("/v1/fine_tuning/jobs/{job_id}/metrics")
    assert params("/v1/fine_tuning/jobs/{job_id}/metrics")["max_points"]["description"]
    listing = params("/v1/fine_tuning/jobs")
    assert listing["metadata"]["style"] == "deepObject" and listing["status"]["description"]
    for path in ("/v1/fine_tuning/jobs", "/v1/files"):
        assert "409" in paths[path]["post"]["responses"]
        assert params(path, "post")["Idempotency-Key"]["description"]


# ---- a real run: checkpoints -----------------------------------------------------------------------------------

def test_checkpoints_of_a_real_run(sdk, start_worker, tiny_model_dir, tuneboard_env):
    wait_for_inventory(str(tiny_model_dir), tuneboard_env.settings)  # so the launch carries the estimate
    start_worker()
    train = upload(sdk, chat_records(16))
    job = sdk.fine_tuning.jobs.create(
        model=str(tiny_model_dir), training_file=train.id, suffix="tiny",
        extra_body={"lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]},
                    "training": {"max_steps": 6, "save_steps": 3, "batch_size": 4, "sequence_length": 64,
                                 "precision": "fp32", "logging_steps": 1, "learning_rate": 5e-3}},
    )
    deadline = time.monotonic() + 240
    while job.status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.5)
        job = sdk.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"{tiny_model_dir}:ft-tiny" and job.finished_at >= job.created_at

    checkpoints = list(sdk.fine_tuning.jobs.checkpoints.list(job.id, limit=1))  # walks page by page
    assert [c.step_number for c in checkpoints] == [6, 3]
    newest = strict(FineTuningJobCheckpoint, checkpoints[0])
    assert newest.object == "fine_tuning.job.checkpoint" and newest.fine_tuning_job_id == job.id
    assert newest.fine_tuned_model_checkpoint.endswith(":ckpt-step-6")
    assert newest.metrics.step == 6 and newest.metrics.train_loss > 0
    assert sdk.fine_tuning.jobs.checkpoints.list(job.id).has_more is False

    events = [e.data["kind"] for e in sdk.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert events[0] == "succeeded" and events[-1] == "queued"
