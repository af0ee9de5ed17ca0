"""The artifact store's contract, held by both backends: the local folder and a real S3-compatible server.

Each test runs against `local` (the data dir's artifacts folder) and `s3` (a bucket on moto's S3 server
over HTTP, as MinIO would serve it), through the same `app.storage.artifacts` functions the app and workers use.
"""

from __future__ import annotations

import os

import pytest

from app.settings import get_settings
from app.storage import artifacts

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture(params=["local", "s3"])
def settings(request, tuneboard_env):
    """Settings whose store is the backend under test."""
    if request.param == "s3":
        request.getfixturevalue("s3_bucket")
    return get_settings()


def test_bytes_round_trip_and_overwrite(settings):
    artifacts.save_bytes(settings, "datasets/file-1/train.jsonl", b'{"text": "one"}\n')
    assert artifacts.read_bytes(settings, "datasets/file-1/train.jsonl") == b'{"text": "one"}\n'
    artifacts.save_bytes(settings, "datasets/file-1/train.jsonl", b"replaced")
    assert artifacts.read_bytes(settings, "/datasets//file-1/train.jsonl") == b"replaced"  # one canonical key


def test_a_missing_key_raises_artifact_missing_naming_it(settings):
    with pytest.raises(artifacts.ArtifactMissing, match="datasets/nope.jsonl"):
        artifacts.read_bytes(settings, "datasets/nope.jsonl")
    with pytest.raises(artifacts.ArtifactMissing):
        artifacts.local_file(settings, "datasets/nope.jsonl")
    with pytest.raises(artifacts.ArtifactMissing):
        artifacts.local_dir(settings, "jobs/nope/checkpoint-10")


@pytest.mark.parametrize("key", ["", "/", "../escape", "jobs/../../etc/passwd", "a/./b"])
def test_keys_that_could_escape_are_refused(settings, key):
    with pytest.raises(ValueError, match="invalid storage key"):
        artifacts.save_bytes(settings, key, b"x")


def test_listing_is_by_prefix_folder_and_sizes_are_exact(settings):
    artifacts.save_bytes(settings, "jobs/a/adapter/adapter_config.json", b"{}")
    artifacts.save_bytes(settings, "jobs/a/checkpoints/checkpoint-10/optimizer.pt", b"x" * 1000)
    artifacts.save_bytes(settings, "jobs/ab/adapter/adapter_config.json", b"{}")  # shares the text prefix only
    listed = artifacts.list_objects(settings, "jobs/a")
    assert [(o.key, o.size) for o in listed] == [
        ("jobs/a/adapter/adapter_config.json", 2), ("jobs/a/checkpoints/checkpoint-10/optimizer.pt", 1000)]
    assert artifacts.list_objects(settings, "jobs/zzz") == []


def test_delete_and_delete_prefix_leave_neighbours_alone(settings):
    for key in ("jobs/a/x", "jobs/a/deep/y", "jobs/ab/z", "datasets/f/train.jsonl"):
        artifacts.save_bytes(settings, key, b"1")
    artifacts.delete(settings, "datasets/f/train.jsonl")
    artifacts.delete(settings, "datasets/f/train.jsonl")  # deleting twice is fine
    artifacts.delete_prefix(settings, "jobs/a")
    assert artifacts.list_objects(settings, "jobs/a") == []
    assert [o.key for o in artifacts.list_objects(settings, "jobs/ab")] == ["jobs/ab/z"]
    with pytest.raises(artifacts.ArtifactMissing):
        artifacts.read_bytes(settings, "datasets/f/train.jsonl")


def test_a_published_work_folder_comes_back_whole_as_a_local_folder(settings, tmp_path):
    work = artifacts.work_dir(settings, "jobs/job-1/checkpoints/checkpoint-20")
    (work / "nested").mkdir(parents=True)
    (work / "adapter_model.safetensors").write_bytes(os.urandom(70_000))
    (work / "nested" / "trainer_state.json").write_text('{"global_step": 20}')
    assert artifacts.publish_dir(settings, work) == "jobs/job-1/checkpoints/checkpoint-20"

    artifacts.discard_work(settings, "jobs/job-1")  # what a worker does when its attempt ends
    copy = artifacts.local_dir(settings, "jobs/job-1/checkpoints/checkpoint-20")
    assert (copy / "nested" / "trainer_state.json").read_text() == '{"global_step": 20}'
    assert len((copy / "adapter_model.safetensors").read_bytes()) == 70_000
    assert artifacts.read_bytes(settings, "jobs/job-1/checkpoints/checkpoint-20/nested/trainer_state.json") == \
        b'{"global_step": 20}'


def test_local_file_gives_a_readable_copy(settings):
    artifacts.save_bytes(settings, "datasets/file-2/data.csv", b"prompt,completion\nhi,there\n")
    path = artifacts.local_file(settings, "datasets/file-2/data.csv")
    assert path.read_bytes() == b"prompt,completion\nhi,there\n"
    assert artifacts.local_file(settings, "datasets/file-2/data.csv") == path  # cached, not fetched again


def test_ping_passes_on_a_usable_store(settings):
    artifacts.ping(settings)


def test_s3_ping_names_a_missing_bucket(tuneboard_env, s3_bucket, monkeypatch):
    monkeypatch.setenv("TUNEBOARD_STORAGE_URL", "s3://no-such-bucket-here/artifacts")
    get_settings.cache_clear()
    with pytest.raises(OSError, match="no-such-bucket-here"):
        artifacts.ping(get_settings())


def test_s3_objects_sit_under_the_configured_prefix(tuneboard_env, s3_bucket):
    client, bucket = s3_bucket
    artifacts.save_bytes(get_settings(), "datasets/f/train.jsonl", b"{}")
    keys = [item["Key"] for item in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["artifacts/datasets/f/train.jsonl"]
    assert not (tuneboard_env.data_dir / "artifacts").exists()  # nothing lands on the web machine's disk


def test_a_malformed_storage_url_is_refused_naming_the_setting(tuneboard_env, monkeypatch):
    monkeypatch.setenv("TUNEBOARD_STORAGE_URL", "minio://bucket")
    get_settings.cache_clear()
    with pytest.raises(ValueError, match="storage_url\n.*'minio://bucket' is not of the form s3://BUCKET/PREFIX"):
        artifacts.ping(get_settings())


def test_size_and_chunks_of_a_large_object(settings):
    data = os.urandom(2_500_000)
    artifacts.save_bytes(settings, "jobs/j/adapter/adapter_model.safetensors", data)
    assert artifacts.size(settings, "jobs/j/adapter/adapter_model.safetensors") == len(data)
    chunks = list(artifacts.iter_chunks(settings, "jobs/j/adapter/adapter_model.safetensors", 1024 * 1024))
    assert [len(c) for c in chunks][:2] == [1024 * 1024, 1024 * 1024] and b"".join(chunks) == data
    with pytest.raises(artifacts.ArtifactMissing):
        artifacts.size(settings, "jobs/j/adapter/nothing.bin")
