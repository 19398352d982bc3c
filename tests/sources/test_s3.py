"""s3:// source against a real SeaweedFS (boto3, env credentials, AWS_ENDPOINT_URL)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest

from comfyfleet.catalog import ModelFile
from comfyfleet.errors import SourceAuthError, SourceNotFound, SourceProtocolError
from comfyfleet.sources import Tokens, open_stream, resolve
from comfyfleet.store.base import SHA256_METADATA_KEY

pytestmark = pytest.mark.s3

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def s3_env(s3_server: Any, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str]:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    client = s3_server.client()
    client.put_object(
        Bucket=s3_bucket,
        Key="models/vae/a.safetensors",
        Body=DATA,
        Metadata={SHA256_METADATA_KEY: SHA},
    )
    client.put_object(Bucket=s3_bucket, Key="plain.bin", Body=b"no metadata here")
    return client, s3_bucket


def s3_model(url: str) -> ModelFile:
    return ModelFile(id="s", folder="vae", file="a.safetensors", source={"type": "s3", "url": url})


def test_resolve_reads_size_etag_and_sha256_metadata(s3_env: tuple[Any, str]) -> None:
    _, bucket = s3_env
    plan = resolve(s3_model(f"s3://{bucket}/models/vae/a.safetensors"), Tokens())
    assert (plan.size, plan.sha256, plan.file_name) == (len(DATA), SHA, "a.safetensors")
    assert plan.revision and plan.source == f"s3://{bucket}/models/vae/a.safetensors"
    with open_stream(plan, 1000, chunk_size=65536) as stream:
        assert b"".join(stream) == DATA[1000:]
        assert stream.total_size == len(DATA)
    with open_stream(plan, len(DATA)) as stream:
        assert b"".join(stream) == b""
    other = resolve(s3_model(f"s3://{bucket}/plain.bin"), Tokens())
    assert other.sha256 is None and other.size == 16


def test_missing_object_and_bucket(s3_env: tuple[Any, str]) -> None:
    _, bucket = s3_env
    with pytest.raises(SourceNotFound, match="no such object"):
        resolve(s3_model(f"s3://{bucket}/nope.bin"), Tokens())
    with pytest.raises(SourceNotFound):
        resolve(s3_model("s3://no-such-bucket-xyz/a.bin"), Tokens())


def test_bad_credentials(s3_env: tuple[Any, str], monkeypatch: pytest.MonkeyPatch) -> None:
    _, bucket = s3_env
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    with pytest.raises(SourceAuthError, match="AWS_ACCESS_KEY_ID") as info:
        resolve(s3_model(f"s3://{bucket}/models/vae/a.safetensors"), Tokens())
    assert "wrong-secret-value" not in str(info.value)


def test_object_replaced_between_resolve_and_resume(s3_env: tuple[Any, str]) -> None:
    client, bucket = s3_env
    plan = resolve(s3_model(f"s3://{bucket}/models/vae/a.safetensors"), Tokens())
    client.put_object(Bucket=bucket, Key="models/vae/a.safetensors", Body=b"x" * len(DATA))
    with pytest.raises(SourceProtocolError, match="changed since it was resolved"):
        open_stream(plan, 10)
