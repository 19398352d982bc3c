"""The upload engine against S3Store on a real SeaweedFS."""

from __future__ import annotations

from typing import Any

import pytest

from comfyfleet.errors import IntegrityError
from comfyfleet.mirror.upload import MiB, TransferSettings, upload_stream
from comfyfleet.store.s3 import S3Store
from tests.mirror.support import FaultySource, payload, sha

pytestmark = pytest.mark.s3

FAST = TransferSettings(part_size=5 * MiB, max_parts_in_flight=3, backoff_base=0.01)
KEY = "models/checkpoints/big.safetensors"


def raw_uploads(store: S3Store) -> list[Any]:
    """Unfinished multipart uploads in the bucket, straight from the S3 API."""
    resp = store.client.list_multipart_uploads(Bucket=store.bucket)
    return list(resp.get("Uploads", []))


def test_multipart_with_cut_connection_lands_verified(s3_store: S3Store) -> None:
    data = payload(11 * MiB + 7)
    source = FaultySource(data, cut_at=[4 * MiB + 1, 10 * MiB + 3])
    result = upload_stream(
        s3_store, KEY, source, expected_sha256=sha(data), expected_size=len(data), settings=FAST
    )
    assert result.parts_uploaded == 3 and result.source_reopens == 2
    assert source.served == len(data)
    info = s3_store.head(KEY)
    assert info.size == len(data) and info.sha256 == sha(data)
    assert info.etag.endswith("-3")  # a real multipart object
    assert s3_store.get_bytes(KEY) == data
    assert raw_uploads(s3_store) == []


def test_corrupted_multipart_is_aborted(s3_store: S3Store) -> None:
    data = payload(11 * MiB)
    with pytest.raises(IntegrityError):
        upload_stream(
            s3_store,
            KEY,
            FaultySource(data, flip_byte_at=2 * MiB),
            expected_sha256=sha(data),
            settings=FAST,
        )
    assert s3_store.exists(KEY) is None
    assert raw_uploads(s3_store) == []


def test_cross_process_resume_reuses_uploaded_parts(s3_store: S3Store) -> None:
    data = payload(16 * MiB + 11)
    # A previous process uploaded parts 1 and 3 (parallel uploads finish out of order),
    # then died; it had recorded a wrong sha256 in the upload's metadata.
    old = s3_store.create_multipart(KEY, metadata={"sha256": "f" * 64})
    old.put_part(1, data[: 5 * MiB])
    old.put_part(3, data[10 * MiB : 15 * MiB])
    result = upload_stream(
        s3_store, KEY, FaultySource(data), expected_sha256=sha(data), settings=FAST
    )
    assert result.resumed_upload_id == old.upload_id
    assert result.parts_reused == 2
    assert result.parts_uploaded == 2  # parts 2 and 4 only
    assert result.bytes_uploaded == len(data) - 10 * MiB
    info = s3_store.head(KEY)
    assert info.sha256 == sha(data)  # the stale metadata was corrected
    assert s3_store.get_bytes(KEY) == data
    assert raw_uploads(s3_store) == []


def test_resume_replaces_a_part_whose_bytes_differ(s3_store: S3Store) -> None:
    data = payload(11 * MiB)
    other = payload(5 * MiB, seed=9)
    old = s3_store.create_multipart(KEY)
    old.put_part(1, other)  # same size, other bytes: must not be reused
    old.put_part(2, data[5 * MiB : 10 * MiB])
    result = upload_stream(
        s3_store, KEY, FaultySource(data), expected_sha256=sha(data), settings=FAST
    )
    assert result.parts_reused == 1 and result.parts_uploaded == 2
    assert s3_store.get_bytes(KEY) == data
