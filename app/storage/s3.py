"""The artifact store in any S3-compatible service (AWS S3, MinIO, Ceph, R2), through boto3.

`s3://BUCKET/PREFIX` names the place; credentials come from boto3's usual chain (AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY, a profile, an instance role). Must not import torch or `workers`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from app.storage.keys import ArtifactMissing, StoredObject, safe_key

_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
# S3's DeleteObjects takes at most this many keys per call.
_DELETE_BATCH = 1000


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of an s3://BUCKET/PREFIX url; ValueError naming the problem otherwise."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"TUNEBOARD_STORAGE_URL {url!r} is not of the form s3://BUCKET/PREFIX")
    return parsed.netloc, parsed.path.strip("/")


class S3Store:
    """Artifacts as objects under one bucket and prefix."""

    def __init__(self, url: str, *, endpoint_url: str | None = None, region: str | None = None):
        self.url = url
        self.bucket, self.prefix = parse_s3_url(url)
        self.endpoint_url = endpoint_url
        self.client = boto3.client(
            "s3", endpoint_url=endpoint_url or None,
            region_name=region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            # Short connect timeouts so /readyz and a worker notice a dead store quickly; uploads of
            # large checkpoints get long reads and boto3's standard retries.
            config=Config(connect_timeout=5, read_timeout=120, retries={"max_attempts": 5, "mode": "standard"}),
        )

    def describe(self) -> str:
        """Where the artifacts live, for logs and /readyz."""
        return self.url + (f" at {self.endpoint_url}" if self.endpoint_url else "")

    def local_path(self, key: str) -> None:
        """Objects in S3 have no local file; callers download them."""
        return None

    def _object_key(self, key: str) -> str:
        key = safe_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _key_of(self, object_key: str) -> str:
        return object_key[len(self.prefix) + 1:] if self.prefix else object_key

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store bytes under a key, replacing what was there (S3 PUTs are atomic)."""
        self.client.put_object(Bucket=self.bucket, Key=self._object_key(key), Body=data)

    def put_file(self, key: str, source: Path) -> None:
        """Upload a local file, in parts when it is large."""
        self.client.upload_file(str(source), self.bucket, self._object_key(key))

    def get_bytes(self, key: str) -> bytes:
        """The content stored under a key; ArtifactMissing when there is none."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as exc:
            raise _missing_or(exc, key) from None
        return response["Body"].read()

    def size(self, key: str) -> int:
        """Bytes stored under a key; ArtifactMissing when there is none."""
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._object_key(key))["ContentLength"]
        except ClientError as exc:
            raise _missing_or(exc, key) from None

    def iter_chunks(self, key: str, chunk_size: int) -> Iterator[bytes]:
        """The content under a key, piece by piece (for downloads larger than memory)."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._object_key(key))["Body"]
        except ClientError as exc:
            raise _missing_or(exc, key) from None
        with body:
            yield from body.iter_chunks(chunk_size)

    def download(self, key: str, destination: Path) -> None:
        """Download an object to a local path; the path appears only once the download is complete."""
        destination.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=destination.parent, prefix=".download-")
        os.close(fd)
        try:
            self.client.download_file(self.bucket, self._object_key(key), tmp)
            os.replace(tmp, destination)
        except ClientError as exc:
            raise _missing_or(exc, key) from None
        finally:
            Path(tmp).unlink(missing_ok=True)

    def list(self, prefix: str) -> list[StoredObject]:
        """Every object under a folder-like prefix, by key."""
        found = []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._object_key(prefix) + "/")
        for page in pages:
            found += [StoredObject(self._key_of(item["Key"]), item["Size"]) for item in page.get("Contents", ())]
        return sorted(found, key=lambda item: item.key)

    def delete(self, key: str) -> None:
        """Remove one object if present (S3 deletes of missing keys succeed)."""
        self.client.delete_object(Bucket=self.bucket, Key=self._object_key(key))

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under a folder-like prefix."""
        keys = [self._object_key(item.key) for item in self.list(prefix)]
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = [{"Key": key} for key in keys[start:start + _DELETE_BATCH]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def ping(self) -> None:
        """Raise unless the bucket exists and these credentials may use it."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            raise OSError(f"bucket {self.bucket!r} is not usable ({code or exc})") from None


def _missing_or(exc: ClientError, key: str) -> Exception:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return ArtifactMissing(key) if code in _NOT_FOUND else exc
