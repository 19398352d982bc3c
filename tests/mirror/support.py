"""Helpers for the mirror tests: an in-process byte source with faults, recording stores."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from comfyfleet.catalog import ModelFile
from comfyfleet.errors import RateLimited, SourceUnavailable
from comfyfleet.mirror.driver import MirrorResult, failed_result, mirror_file
from comfyfleet.mirror.upload import ProgressSubscriber
from comfyfleet.store.base import MultipartUpload, ObjectStore, PartInfo
from comfyfleet.store.local import LocalStore

MiB = 1024 * 1024


def mirror_model(model: ModelFile, store: ObjectStore, **options: Any) -> MirrorResult:
    """``mirror_file``, with a failure as the ``failed`` row ``mirror_files`` would report
    (the row, not the exception, is what these tests read)."""
    began = time.monotonic()
    try:
        return mirror_file(model, store, **options)
    except Exception as exc:  # noqa: BLE001 - the row is what the test checks
        return failed_result(model, exc, time.monotonic() - began)


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic incompressible-looking bytes."""
    out = bytearray()
    block = hashlib.sha256(f"seed-{seed}".encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:size])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class FaultySource:
    """A chunks factory over ``data``: ``cut_at`` offsets break the stream once each,
    ``fail_opens`` opens raise before any byte, ``rate_limit`` opens answer 429."""

    data: bytes
    chunk_size: int = 256 * 1024
    cut_at: list[int] = field(default_factory=list)
    fail_opens: int = 0
    rate_limit: int = 0
    retry_after: float | None = None
    flip_byte_at: int | None = None
    opens: list[int] = field(default_factory=list)
    served: int = 0
    delay: float = 0.0

    def __call__(self, offset: int) -> Iterator[bytes]:
        self.opens.append(offset)
        return self._stream(offset)

    def _stream(self, offset: int) -> Iterator[bytes]:
        if self.rate_limit:
            self.rate_limit -= 1
            raise RateLimited("429 from test source", retry_after=self.retry_after)
        if self.fail_opens:
            self.fail_opens -= 1
            raise SourceUnavailable("503 from test source")
        pos = offset
        while pos < len(self.data):
            end = min(len(self.data), pos + self.chunk_size)
            cut = next((c for c in self.cut_at if pos < c <= end), None)
            if cut is not None:
                self.cut_at.remove(cut)
                if cut > pos:
                    self.served += cut - pos
                    yield self._bytes(pos, cut)
                raise SourceUnavailable(f"connection cut at byte {cut}")
            self.served += end - pos
            if self.delay:
                time.sleep(self.delay)
            yield self._bytes(pos, end)
            pos = end

    def _bytes(self, start: int, end: int) -> bytes:
        chunk = self.data[start:end]
        if self.flip_byte_at is not None and start <= self.flip_byte_at < end:
            i = self.flip_byte_at - start
            chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
        return chunk


class RecordingProgress(ProgressSubscriber):
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.total = 0

    def on_start(self, key: str, total: int | None) -> None:
        self.events.append(("start", total))

    def on_bytes(self, n: int) -> None:
        self.total += n

    def on_done(self, key: str) -> None:
        self.events.append(("done", key))


class _RecordingUpload:
    def __init__(self, inner: MultipartUpload, store: RecordingLocalStore) -> None:
        self._inner = inner
        self._store = store

    @property
    def key(self) -> str:
        return self._inner.key

    @property
    def upload_id(self) -> str:
        return self._inner.upload_id

    def put_part(self, number: int, data: bytes) -> PartInfo:
        with self._store.lock:
            self._store.active += 1
            self._store.max_active = max(self._store.max_active, self._store.active)
        try:
            if self._store.part_delay:
                time.sleep(self._store.part_delay)
            info = self._inner.put_part(number, data)
        finally:
            with self._store.lock:
                self._store.active -= 1
                self._store.parts_put.append(number)
                self._store.bytes_put += len(data)
        return info

    def list_parts(self) -> list[PartInfo]:
        return self._inner.list_parts()

    def complete(self, parts: list[PartInfo]):  # type: ignore[no-untyped-def]
        return self._inner.complete(parts)

    def abort(self) -> None:
        self._store.aborted += 1
        self._inner.abort()


class RecordingLocalStore(LocalStore):
    """A LocalStore that records part uploads and their concurrency."""

    def __init__(self, root: str | os.PathLike[str], part_delay: float = 0.0) -> None:
        super().__init__(root)
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.parts_put: list[int] = []
        self.bytes_put = 0
        self.aborted = 0
        self.part_delay = part_delay

    def create_multipart(self, key, *, metadata=None):  # type: ignore[no-untyped-def]
        return _RecordingUpload(super().create_multipart(key, metadata=metadata), self)

    def find_multipart(self, key):  # type: ignore[no-untyped-def]
        return [_RecordingUpload(u, self) for u in super().find_multipart(key)]
