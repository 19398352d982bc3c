"""The upload engine against the real LocalStore (S3 variants live in test_upload_s3.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from comfyfleet.errors import ConfigError, IntegrityError, RateLimited, SourceUnavailable
from comfyfleet.mirror.upload import MiB, TransferSettings, plan_part_size, upload_stream
from comfyfleet.store.base import MAX_PARTS, MIN_PART_SIZE
from comfyfleet.store.local import LocalStore
from tests.mirror.support import (
    FaultySource,
    RecordingLocalStore,
    RecordingProgress,
    payload,
    sha,
)

FAST = TransferSettings(part_size=5 * MiB, max_parts_in_flight=3, backoff_base=0.01)
KEY = "models/loras/x.safetensors"


@pytest.mark.parametrize(
    ("size", "part_size", "expected"),
    [
        (None, 64 * MiB, 64 * MiB),
        (10, 64 * MiB, 64 * MiB),
        (7 * 1000**3, 64 * MiB, 64 * MiB),  # 105 parts
        (64 * MiB * MAX_PARTS, 64 * MiB, 64 * MiB),  # exactly 10,000 parts
        (64 * MiB * MAX_PARTS + 1, 64 * MiB, 65 * MiB),  # one byte more: bigger parts
        (1000 * 1024**3, 8 * MiB, 103 * MiB),  # 1000 GiB / 10,000 rounded up to MiB
        (100, 1, MIN_PART_SIZE),  # never below S3's minimum
    ],
)
def test_plan_part_size_respects_s3_limits(size: int | None, part_size: int, expected: int) -> None:
    planned = plan_part_size(size, part_size)
    assert planned == expected
    if size:
        assert -(-size // planned) <= MAX_PARTS


def test_part_size_over_limit_is_refused() -> None:
    with pytest.raises(ConfigError, match="S3's 5 GiB limit"):
        plan_part_size(6 * 1024**4 * MAX_PARTS)
    with pytest.raises(ConfigError, match="outside S3's limits"):
        TransferSettings(part_size=1 * MiB)


def test_memory_bound_formula() -> None:
    s = TransferSettings()
    assert s.memory_bound == 5 * 64 * MiB + MiB
    # A 7 GB file keeps 64 MiB parts: the bound does not grow with the file.
    assert s.memory_bound_for(7 * 1000**3) == s.memory_bound < 1024**3


def test_small_file_is_one_put_with_sha256_metadata(tmp_path: Path) -> None:
    data = payload(300_000)
    store = RecordingLocalStore(tmp_path)
    progress = RecordingProgress()
    result = upload_stream(
        store,
        KEY,
        FaultySource(data),
        expected_sha256=sha(data).upper(),
        expected_size=len(data),
        settings=FAST,
        progress=progress,
    )
    assert result.sha256 == sha(data)
    assert store.get_bytes(KEY) == data
    assert store.head(KEY).sha256 == sha(data)
    assert store.parts_put == []  # single put, no multipart
    assert progress.total == len(data)
    assert progress.events == [("start", len(data)), ("done", KEY)]


def test_multipart_upload_streams_parts_and_verifies(tmp_path: Path) -> None:
    data = payload(11 * MiB + 123)
    store = RecordingLocalStore(tmp_path)
    result = upload_stream(store, KEY, FaultySource(data), expected_sha256=sha(data), settings=FAST)
    assert store.get_bytes(KEY) == data
    assert store.head(KEY).sha256 == sha(data)
    assert sorted(store.parts_put) == [1, 2, 3]
    assert result.parts_uploaded == 3 and result.bytes_uploaded == len(data)
    assert store.find_multipart(KEY) == []


def test_exactly_one_part_takes_the_single_put_path(tmp_path: Path) -> None:
    data = payload(5 * MiB)
    store = RecordingLocalStore(tmp_path)
    upload_stream(store, KEY, FaultySource(data), expected_sha256=sha(data), settings=FAST)
    assert store.parts_put == [] and store.get_bytes(KEY) == data


def test_unknown_hash_is_recorded_after_completion(tmp_path: Path) -> None:
    data = payload(11 * MiB)
    store = LocalStore(tmp_path)
    result = upload_stream(store, KEY, FaultySource(data), settings=FAST)
    assert result.sha256 == sha(data)
    assert store.head(KEY).sha256 == sha(data)


def test_cut_connection_resumes_at_offset_with_same_hash(tmp_path: Path) -> None:
    data = payload(11 * MiB)
    source = FaultySource(data, cut_at=[3 * MiB + 17, 9 * MiB + 5])
    store = LocalStore(tmp_path)
    result = upload_stream(
        store, KEY, source, expected_sha256=sha(data), expected_size=len(data), settings=FAST
    )
    assert source.opens == [0, 3 * MiB + 17, 9 * MiB + 5]
    assert source.served == len(data)  # not a byte twice
    assert result.source_reopens == 2
    assert store.get_bytes(KEY) == data


def test_retry_budget_resets_when_bytes_arrive(tmp_path: Path) -> None:
    data = payload(2 * MiB)
    cuts = [i * 100_000 for i in range(1, 20)]
    source = FaultySource(data, cut_at=list(cuts))
    settings = TransferSettings(part_size=5 * MiB, source_attempts=2, backoff_base=0.001)
    result = upload_stream(
        LocalStore(tmp_path), KEY, source, expected_sha256=sha(data), settings=settings
    )
    assert result.source_reopens == len(cuts)


def test_source_that_keeps_failing_gives_up_and_keeps_the_upload(tmp_path: Path) -> None:
    data = payload(11 * MiB)
    source = FaultySource(data, cut_at=[6 * MiB])
    store = LocalStore(tmp_path)

    def factory(offset: int) -> Iterator[bytes]:
        if offset:
            raise SourceUnavailable("503 from test source")
        return source(offset)

    sleeps: list[float] = []
    with pytest.raises(SourceUnavailable):
        upload_stream(
            store,
            KEY,
            factory,
            expected_sha256=sha(data),
            settings=TransferSettings(part_size=5 * MiB, source_attempts=3, backoff_base=0.5),
            sleep=sleeps.append,
        )
    assert sleeps == [0.5, 1.0]  # exponential backoff, bounded attempts
    assert store.exists(KEY) is None
    # Kept for the next run to resume: part 1 is there.
    (upload,) = store.find_multipart(KEY)
    assert [p.number for p in upload.list_parts()] == [1]


def test_rate_limit_waits_retry_after(tmp_path: Path) -> None:
    data = payload(100_000)
    source = FaultySource(data, rate_limit=2, retry_after=7.0)
    sleeps: list[float] = []
    upload_stream(
        LocalStore(tmp_path),
        KEY,
        source,
        expected_sha256=sha(data),
        settings=FAST,
        sleep=sleeps.append,
    )
    assert sleeps == [7.0, 7.0]


def test_retry_after_beyond_limit_is_raised_not_waited(tmp_path: Path) -> None:
    source = FaultySource(payload(1000), rate_limit=1, retry_after=3600)
    settings = TransferSettings(max_retry_after=60)
    with pytest.raises(RateLimited):
        upload_stream(LocalStore(tmp_path), KEY, source, settings=settings, sleep=lambda s: None)


@pytest.mark.parametrize("size", [300_000, 11 * MiB])
def test_corrupted_bytes_abort_and_leave_nothing(tmp_path: Path, size: int) -> None:
    data = payload(size)
    store = RecordingLocalStore(tmp_path)
    source = FaultySource(data, flip_byte_at=size - 10)
    with pytest.raises(IntegrityError) as info:
        upload_stream(store, KEY, source, expected_sha256=sha(data), settings=FAST)
    err = info.value
    assert err.expected_sha256 == sha(data)
    assert err.actual_sha256 == sha(source._bytes(0, size))
    assert sha(data) in str(err) and err.actual_sha256 in str(err)
    assert store.exists(KEY) is None
    assert store.find_multipart(KEY) == []


def test_size_mismatch_aborts(tmp_path: Path) -> None:
    data = payload(11 * MiB)
    store = LocalStore(tmp_path)
    with pytest.raises(IntegrityError, match="size mismatch"):
        upload_stream(store, KEY, FaultySource(data), expected_size=len(data) - 1, settings=FAST)
    with pytest.raises(IntegrityError, match="size mismatch"):
        upload_stream(store, KEY, FaultySource(data), expected_size=len(data) + 1, settings=FAST)
    assert store.exists(KEY) is None and store.find_multipart(KEY) == []


def test_memory_stays_within_parts_in_flight(tmp_path: Path) -> None:
    data = payload(31 * MiB)
    settings = TransferSettings(part_size=5 * MiB, max_parts_in_flight=2, chunk_size=MiB)
    store = RecordingLocalStore(tmp_path, part_delay=0.05)
    source = FaultySource(data, chunk_size=MiB)
    ahead: list[int] = []

    def factory(offset: int) -> Iterator[bytes]:
        for chunk in source(offset):
            # Bytes read but not yet stored must be held in memory somewhere.
            with store.lock:
                ahead.append(source.served - store.bytes_put)
            yield chunk

    upload_stream(store, KEY, factory, expected_sha256=sha(data), settings=settings)
    assert store.max_active == 2
    assert max(ahead) <= settings.memory_bound
    assert store.get_bytes(KEY) == data


def test_leftover_upload_is_resumed_and_its_metadata_corrected(tmp_path: Path) -> None:
    data = payload(11 * MiB)
    store = RecordingLocalStore(tmp_path)
    old = store.create_multipart(KEY, metadata={"sha256": "0" * 64})
    old.put_part(1, data[: 5 * MiB])
    result = upload_stream(store, KEY, FaultySource(data), expected_sha256=sha(data), settings=FAST)
    assert result.resumed_upload_id == old.upload_id
    # LocalStore part ETags are not MD5s: the part cannot be proven equal, so it is re-sent.
    assert result.parts_reused == 0
    assert store.get_bytes(KEY) == data
    assert store.head(KEY).sha256 == sha(data)
    assert store.find_multipart(KEY) == []


def test_other_leftover_uploads_are_cleaned_after_success(tmp_path: Path) -> None:
    data = payload(11 * MiB)
    store = LocalStore(tmp_path)
    first = store.create_multipart(KEY)
    first.put_part(1, data[: 5 * MiB])
    store.create_multipart(KEY)  # newer, empty
    upload_stream(store, KEY, FaultySource(data), expected_sha256=sha(data), settings=FAST)
    assert store.find_multipart(KEY) == []
