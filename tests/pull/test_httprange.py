"""Presigned ranged reads: against SeaweedFS for real answers, a fault double for the bad ones."""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.errors import ObjectNotFound, StoreAuthError, StoreError, StoreUnavailable
from comfyfleet.pull.httprange import PresignedRangeReader
from comfyfleet.pull.transfer import PullSettings, plan_pull, pull
from comfyfleet.store.base import ObjectStore
from comfyfleet.store.manifest import ManifestEntry
from tests.doubles.faults import Faults, Recorded, Request, Server, serve_bytes

RS = 64 * 1024


def blob(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def entry_for(store: ObjectStore, key: str, data: bytes) -> ManifestEntry:
    store.put_bytes(key, data)
    folder, file = key.split("/", 2)[1:]
    return ManifestEntry(
        id=file.lower(),
        key=key,
        folder=folder,
        file=file,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        source="test",
        mirrored_at=datetime.now(UTC),
    )


# ---------------------------------------------------------------------------- real S3


@pytest.mark.s3
def test_reads_match_get_range(s3_store: ObjectStore) -> None:
    data = blob(3 * RS + 11, 1)
    s3_store.put_bytes("models/vae/a.bin", data)
    reader = PresignedRangeReader.for_store(s3_store, "models/vae/a.bin")
    assert reader is not None
    buf = memoryview(bytearray(2 * RS))
    for start, end in ((0, RS), (RS, 3 * RS), (3 * RS, 3 * RS + 11), (5, 17)):
        n = reader.read_into("models/vae/a.bin", start, end, buf)
        assert (
            bytes(buf[:n]) == data[start:end] == s3_store.get_range("models/vae/a.bin", start, end)
        )
    # past the end: shorter (the caller calls that a size mismatch) or nothing at all
    assert reader.read_into("models/vae/a.bin", 3 * RS, 4 * RS, buf) == 11
    assert reader.read_into("models/vae/a.bin", 4 * RS, 5 * RS, buf) == 0


@pytest.mark.s3
def test_missing_key_and_bad_credentials(s3_store: ObjectStore, s3_server: Any) -> None:
    from comfyfleet.store.s3 import S3Store

    reader = PresignedRangeReader(s3_store)
    buf = memoryview(bytearray(RS))
    with pytest.raises(ObjectNotFound, match="HTTP 404 NoSuchKey") as info:
        reader.read_into("models/vae/missing.bin", 0, RS, buf)
    assert "X-Amz-Signature" not in str(info.value)  # the URL is a credential

    s3_store.put_bytes("models/vae/b.bin", b"x" * 100)
    wrong = S3Store(
        s3_store.bucket,
        s3_store.prefix,  # type: ignore[attr-defined]
        endpoint_url=s3_server.endpoint_url,
        access_key_id=s3_server.access_key,
        secret_access_key="not-the-secret",
        region=s3_server.region,
    )
    with pytest.raises(StoreAuthError, match="HTTP 403") as info:
        PresignedRangeReader(wrong).read_into("models/vae/b.bin", 0, 100, buf)
    assert "not-the-secret" not in str(info.value)


@pytest.mark.s3
def test_refused_presigned_urls_fall_back_to_the_store(
    s3_store: ObjectStore, tmp_path: Path
) -> None:
    class Mangled:
        """An endpoint that rejects presigned URLs (bad signature) but serves the SDK."""

        def __init__(self, inner: ObjectStore) -> None:
            self.inner = inner

        def presign_get(self, key: str, expires_s: int = 3600) -> str | None:
            url = self.inner.presign_get(key, expires_s)
            assert url is not None
            return url.replace("X-Amz-Signature=", "X-Amz-Signature=00")

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    data = blob(4 * RS + 3, 2)
    items = plan_pull(
        [entry_for(s3_store, "models/loras/m.safetensors", data)], tmp_path / "ComfyUI"
    )
    report = pull(items, Mangled(s3_store), settings=PullSettings(range_size=RS))  # type: ignore[arg-type]
    assert report.ok, report.items[0].error
    assert items[0].dest.read_bytes() == data
    assert report.reader == "store.get_range (presigned URL refused)"


# ---------------------------------------------------------------------------- faults


class FaultyEndpoint:
    """A LocalStore whose presigned URLs point at an HTTP double with fault knobs."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.faults = Faults()
        self.log: list[Recorded] = []
        self.server = Server("s3", self._route, self.log, threading.Lock())
        self.hang_up_after_each = False

    def _route(self, req: Request) -> None:
        key = req.path.removeprefix("/bucket/")
        serve_bytes(req, self.inner.get_bytes(key), self.faults)
        if self.hang_up_after_each:
            # Close the kept-alive connection without saying so (no "Connection: close"),
            # as servers do with idle connections.
            req.handler.close_connection = True

    def presign_get(self, key: str, expires_s: int = 3600) -> str | None:
        return f"{self.server.url}/bucket/{key}?X-Amz-Signature=deadbeef&X-Amz-Expires={expires_s}"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def endpoint(local_store: ObjectStore) -> Iterator[FaultyEndpoint]:
    ep = FaultyEndpoint(local_store)
    ep.server.start()
    try:
        yield ep
    finally:
        ep.server.stop()


def pull_one(ep: FaultyEndpoint, tmp_path: Path, data: bytes, workers: int = 2):  # type: ignore[no-untyped-def]
    items = plan_pull(
        [entry_for(ep.inner, "models/checkpoints/c.safetensors", data)], tmp_path / "ComfyUI"
    )
    settings = PullSettings(range_size=RS, max_workers=workers, retry_backoff_s=0.01)
    return items, pull(items, ep, settings=settings)  # type: ignore[arg-type]


def test_keepalive_reuses_connections(endpoint: FaultyEndpoint, tmp_path: Path) -> None:
    data = blob(12 * RS, 3)
    items, report = pull_one(endpoint, tmp_path, data)
    assert report.ok and report.reader == "presigned-http"
    assert items[0].dest.read_bytes() == data
    ranges = sorted(r.headers["range"] for r in endpoint.log)
    assert len(ranges) == 12 and ranges[0] == f"bytes=0-{RS - 1}"


def test_503_and_a_cut_connection_are_retried(endpoint: FaultyEndpoint, tmp_path: Path) -> None:
    data = blob(6 * RS + 5, 4)
    endpoint.faults.fail(503, times=2).cut_after(1000, times=1)
    items, report = pull_one(endpoint, tmp_path, data)
    assert report.ok, report.items[0].error
    assert items[0].dest.read_bytes() == data
    assert endpoint.faults.fired["fail"] == 2 and endpoint.faults.fired["cut_after"] == 1


def test_a_server_ignoring_range_is_refused(endpoint: FaultyEndpoint, tmp_path: Path) -> None:
    endpoint.faults.ignore_range()
    items, report = pull_one(endpoint, tmp_path, blob(3 * RS, 5))
    assert report.items[0].status == "failed"
    assert "ignored the Range header" in (report.items[0].error or "")
    assert isinstance(report.items[0].exception, StoreError)
    assert not items[0].dest.exists()


def test_bytes_corrupted_in_flight_are_caught(endpoint: FaultyEndpoint, tmp_path: Path) -> None:
    data = blob(5 * RS, 6)
    endpoint.faults.corrupt(100, times=1)  # the first request (one worker: range 0) has it
    items, report = pull_one(endpoint, tmp_path, data, workers=1)
    assert report.ok and report.items[0].attempts == 2  # caught by the hash, fetched again
    assert items[0].dest.read_bytes() == data


def test_persistent_503_fails_as_transient(endpoint: FaultyEndpoint, tmp_path: Path) -> None:
    endpoint.faults.fail(503, times=None)
    items, report = pull_one(endpoint, tmp_path, blob(2 * RS, 7))
    assert isinstance(report.items[0].exception, StoreUnavailable)
    assert "HTTP 503" in (report.items[0].error or "")
    assert items[0].part.exists()  # kept: the next run resumes


def test_a_silently_closed_keepalive_connection_is_reopened(endpoint: FaultyEndpoint) -> None:
    data = blob(3 * RS, 8)
    endpoint.inner.put_bytes("models/vae/k.bin", data)
    endpoint.hang_up_after_each = True
    reader = PresignedRangeReader(endpoint)  # type: ignore[arg-type]
    buf = memoryview(bytearray(RS))
    for i in range(3):
        assert reader.read_into("models/vae/k.bin", i * RS, (i + 1) * RS, buf) == RS
        assert bytes(buf) == data[i * RS : (i + 1) * RS]
    assert len(endpoint.log) == 3
