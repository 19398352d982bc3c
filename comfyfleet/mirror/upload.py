"""Stream a source into an object store: bounded memory, sha256 on the fly, resumable.

``upload_stream`` reads a source as an iterator of byte chunks, hashes every byte as it
passes, cuts the stream into parts and uploads them from a small pool of threads into a
multipart upload. Nothing is visible under the final key until the whole file has been
read and its size and sha256 match what was expected; on a mismatch the multipart upload
is aborted and :class:`~comfyfleet.errors.IntegrityError` names both values.

Memory
    At most ``max_parts_in_flight`` parts exist at once (queued or uploading, including the
    one being handed off), plus the part still being assembled from chunks::

        peak ≈ (max_parts_in_flight + 1) × part_size + chunk_size

    With the defaults (4 × 64 MiB parts, 1 MiB chunks) that is about 321 MiB per file,
    whatever the file's size: a 7 GB file uses the same memory as a 70 MB one. Mirroring
    ``N`` files at once multiplies it by ``N``.

Resume within a run
    When the source stream breaks (``SourceUnavailable``: a cut connection, a timeout, a
    5xx) the source is re-opened at the current offset (``chunks_factory(offset)``, which
    sends ``Range: bytes=<offset>-``) and the same hasher keeps going. The attempt budget
    (``source_attempts``) resets whenever bytes arrive, as in huggingface_hub's
    ``http_get``; ``RateLimited`` waits the server's ``Retry-After``.

Resume across processes
    An unfinished multipart upload for the key (``store.find_multipart``) is resumed: its
    parts are reused instead of uploaded again. The whole file's sha256 must still be
    computed honestly, and there is no portable way to persist a SHA-256 mid-state
    (``hashlib`` cannot export one) nor to read back the parts of an unfinished S3
    upload. So the source is streamed again from byte 0; bytes of a part that already
    exists are only hashed, never uploaded: each such part is reused only when its size
    equals the planned part size and its ETag equals the MD5 of the bytes just read
    (S3 part ETags are the part's MD5). A part that does not match is uploaded again
    under the same number, which replaces it. The source is read twice for the prefix,
    but the store, usually the slow side (SeaweedFS ingests 150-200 MB/s on two cores),
    receives each byte once. Because the upload's creator may have recorded different
    metadata, the completed object's metadata is checked and corrected afterwards.

    An upload is aborted only when its bytes are known to be wrong (``IntegrityError``);
    after any other failure it is kept so that the next run can resume it. After a
    successful upload, leftover uploads to the same key are aborted.

Progress
    A :class:`ProgressSubscriber` gets ``on_start(key, total)``, ``on_bytes(n)`` for every
    chunk read from the source (negative ``n`` when a retry rewinds) and ``on_done(key)``.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from comfyfleet.errors import (
    Cancelled,
    ConfigError,
    IntegrityError,
    RateLimited,
    SourceUnavailable,
)
from comfyfleet.store.base import (
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    SHA256_METADATA_KEY,
    MultipartUpload,
    ObjectInfo,
    ObjectStore,
    PartInfo,
    check_key,
)

MiB = 1024 * 1024

ChunksFactory = Callable[[int], Iterator[bytes]]
"""``factory(offset)`` streams the source from byte ``offset`` to its end."""

Sleep = Callable[[float], None]


@dataclass(frozen=True)
class TransferSettings:
    """How files move from a source into a store.

    ``part_size`` (default 64 MiB) is raised for big files so that a file never needs
    more than S3's 10,000 parts, and is never below S3's 5 MiB minimum (see
    :func:`plan_part_size`). ``max_parts_in_flight`` (default 4) bounds memory::

        peak ≈ (max_parts_in_flight + 1) × part_size + chunk_size   (per file)

    ``source_attempts`` failed reads in a row (no byte received in between) give up;
    waits grow from ``backoff_base`` seconds, doubling, up to ``backoff_max``; a
    ``Retry-After`` longer than ``max_retry_after`` is not waited for but raised.
    ``file_attempts`` bounds how often :func:`comfyfleet.mirror.driver.mirror_file` starts a file
    over after a transient failure or a corrupted transfer.
    """

    part_size: int = 64 * MiB
    max_parts_in_flight: int = 4
    chunk_size: int = 1 * MiB
    source_attempts: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    max_retry_after: float = 300.0
    file_attempts: int = 3
    resume: bool = True

    def __post_init__(self) -> None:
        if self.part_size < MIN_PART_SIZE or self.part_size > MAX_PART_SIZE:
            raise ConfigError(
                f"part size {self.part_size} bytes is outside S3's limits "
                f"({MIN_PART_SIZE}..{MAX_PART_SIZE})",
                hint="use a part size between 5 MiB and 5 GiB (default 64 MiB)",
            )
        for name in ("max_parts_in_flight", "chunk_size", "source_attempts", "file_attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"transfer setting {name} must be at least 1")

    @property
    def memory_bound(self) -> int:
        """Peak bytes one upload holds in memory with this part size (see class docstring)."""
        return (self.max_parts_in_flight + 1) * self.part_size + self.chunk_size

    def memory_bound_for(self, size: int | None) -> int:
        """Peak bytes for a file of ``size`` (the part size may be raised for big files)."""
        part = plan_part_size(size, self.part_size)
        return (self.max_parts_in_flight + 1) * part + self.chunk_size

    def backoff(self, failures: int) -> float:
        """Wait before retry number ``failures`` (1-based)."""
        return float(min(self.backoff_max, self.backoff_base * 2 ** max(0, failures - 1)))


def plan_part_size(size: int | None, part_size: int = 64 * MiB) -> int:
    """The part size for a file of ``size`` bytes within S3's limits.

    Keeps ``part_size`` unless the file would need more than 10,000 parts, then rounds
    ``size / 10,000`` up to a whole MiB. Unknown sizes keep ``part_size``.
    """
    planned = max(part_size, MIN_PART_SIZE)
    if size is not None and math.ceil(size / planned) > MAX_PARTS:
        planned = math.ceil(size / MAX_PARTS / MiB) * MiB
    if planned > MAX_PART_SIZE:
        raise ConfigError(
            f"a file of {size} bytes needs parts over S3's 5 GiB limit",
            hint="S3 objects are limited to 5 TiB",
        )
    return planned


class ProgressSubscriber:
    """Receives progress for one file; every method may be called from one thread only."""

    def on_start(self, key: str, total: int | None) -> None:
        """The transfer of ``key`` starts; ``total`` is its size when known."""

    def on_bytes(self, n: int) -> None:
        """``n`` more bytes were read from the source (negative: a retry rewound)."""

    def on_done(self, key: str) -> None:
        """The transfer of ``key`` ended (successfully or not)."""


@dataclass(frozen=True)
class UploadResult:
    """What ``upload_stream`` did."""

    key: str
    size: int
    sha256: str
    info: ObjectInfo
    parts_uploaded: int = 0
    parts_reused: int = 0
    bytes_uploaded: int = 0
    source_reopens: int = 0
    resumed_upload_id: str | None = None
    seconds: float = 0.0
    metadata: Mapping[str, str] = field(default_factory=dict)


def read_source(
    chunks_factory: ChunksFactory,
    settings: TransferSettings,
    *,
    start: int = 0,
    sleep: Sleep = time.sleep,
    on_reopen: Callable[[int], None] | None = None,
) -> Iterator[bytes]:
    """Chunks from ``start`` to the end, re-opening the source where it broke.

    Transient source failures are retried from the current offset; the budget of
    ``settings.source_attempts`` consecutive failures resets whenever bytes arrive.
    """
    offset = start
    failures = 0
    while True:
        stream: Iterator[bytes] | None = None
        try:
            stream = chunks_factory(offset)
            for chunk in stream:
                if chunk:
                    failures = 0
                    offset += len(chunk)
                    yield chunk
            return
        except RateLimited as exc:
            failures += 1
            wait = exc.retry_after if exc.retry_after is not None else settings.backoff(failures)
            if failures >= settings.source_attempts or wait > settings.max_retry_after:
                raise
            sleep(wait)
        except SourceUnavailable:
            failures += 1
            if failures >= settings.source_attempts:
                raise
            sleep(settings.backoff(failures))
        finally:
            # Release the connection of an abandoned stream now, not at garbage collection.
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        if on_reopen is not None:
            on_reopen(offset)


def _check_cancel(cancel: threading.Event | None, key: str) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled(
            f"upload of {key!r} interrupted",
            hint="rerun: the unfinished multipart upload is kept and resumed",
        )


def _md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _etag_hex(etag: str) -> str:
    return etag.strip().strip('"').lower()


class _PartUploader:
    """Owns the multipart upload of one file: creates or resumes it, uploads parts from a
    bounded pool, reuses parts that already hold the same bytes."""

    def __init__(
        self,
        store: ObjectStore,
        key: str,
        metadata: Mapping[str, str],
        settings: TransferSettings,
    ) -> None:
        self.store = store
        self.key = key
        self.metadata = dict(metadata)
        self.settings = settings
        self.upload: MultipartUpload | None = None
        self.resumed_upload_id: str | None = None
        self.existing: dict[int, PartInfo] = {}
        self.leftovers: list[MultipartUpload] = []
        self.parts: dict[int, PartInfo] = {}
        self.futures: list[Future[PartInfo]] = []
        self.slots = threading.BoundedSemaphore(settings.max_parts_in_flight)
        self.pool: ThreadPoolExecutor | None = None
        self.parts_uploaded = 0
        self.parts_reused = 0
        self.bytes_uploaded = 0

    @property
    def started(self) -> bool:
        return self.upload is not None

    def start(self) -> None:
        candidates = self.store.find_multipart(self.key) if self.settings.resume else []
        chosen: MultipartUpload | None = None
        for candidate in candidates:
            parts = candidate.list_parts()
            if chosen is None and parts:
                chosen = candidate
                self.existing = {p.number: p for p in parts}
            else:
                self.leftovers.append(candidate)
        if chosen is not None:
            self.upload = chosen
            self.resumed_upload_id = chosen.upload_id
        else:
            self.upload = self.store.create_multipart(self.key, metadata=self.metadata)
        self.pool = ThreadPoolExecutor(
            max_workers=self.settings.max_parts_in_flight,
            thread_name_prefix="comfyfleet-part",
        )

    def acquire_slot(self, cancel: threading.Event | None = None) -> None:
        """Block until a part may be held in memory (the memory bound), or ``cancel``."""
        self.raise_if_failed()
        while not self.slots.acquire(timeout=0.1):
            _check_cancel(cancel, self.key)
            self.raise_if_failed()

    def submit(self, number: int, data: bytes) -> None:
        """Upload part ``number`` (a slot must be held), or reuse a matching existing one."""
        assert self.upload is not None and self.pool is not None
        old = self.existing.get(number)
        if old is not None and old.size == len(data) and _etag_hex(old.etag) == _md5_hex(data):
            self.parts[number] = old
            self.parts_reused += 1
            self.slots.release()
            return
        upload = self.upload

        def work() -> PartInfo:
            try:
                return upload.put_part(number, data)
            finally:
                self.slots.release()

        future = self.pool.submit(work)
        self.futures.append(future)
        self.parts_uploaded += 1
        self.bytes_uploaded += len(data)

    def raise_if_failed(self) -> None:
        """Collect finished parts; re-raise the first failed one."""
        running: list[Future[PartInfo]] = []
        for future in self.futures:
            if future.done():
                info = future.result()
                self.parts[info.number] = info
            else:
                running.append(future)
        self.futures = running

    def wait(self) -> list[PartInfo]:
        for future in self.futures:
            info = future.result()
            self.parts[info.number] = info
        self.futures.clear()
        return [self.parts[n] for n in sorted(self.parts)]

    def shutdown(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def abort(self) -> None:
        self.shutdown()
        if self.upload is not None:
            self.upload.abort()

    def abort_leftovers(self) -> None:
        for leftover in self.leftovers:
            leftover.abort()


def _cancellable_sleep(cancel: threading.Event, key: str) -> Sleep:
    def sleep(seconds: float) -> None:
        cancel.wait(seconds)
        _check_cancel(cancel, key)

    return sleep


class _PartCutter:
    """Cuts the stream into parts of ``part_size`` and hands each full one to the uploader
    (starting the multipart upload with the first). A full part is handed off only once
    more bytes exist, so a file of exactly one part still takes the single-request path."""

    def __init__(
        self, uploader: _PartUploader, part_size: int, cancel: threading.Event | None
    ) -> None:
        self.uploader = uploader
        self.part_size = part_size
        self.cancel = cancel
        self.pending: list[bytes] = []
        self.pending_len = 0
        self.next_part = 1

    def feed(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view.nbytes:
            if self.pending_len == self.part_size:
                self.hand_off()
            take = min(self.part_size - self.pending_len, view.nbytes)
            self.pending.append(chunk if take == len(chunk) else bytes(view[:take]))
            self.pending_len += take
            view = view[take:]

    def hand_off(self) -> None:
        uploader = self.uploader
        if not uploader.started:
            uploader.start()
        uploader.acquire_slot(self.cancel)
        data = b"".join(self.pending)
        self.pending.clear()
        self.pending_len = 0
        uploader.submit(self.next_part, data)
        self.next_part += 1

    def take_all(self) -> bytes:
        data = b"".join(self.pending)
        self.pending.clear()
        self.pending_len = 0
        return data


def _complete_multipart(
    store: ObjectStore,
    key: str,
    cutter: _PartCutter,
    final_meta: Mapping[str, str],
    expected: str | None,
) -> ObjectInfo:
    """Upload the last part, complete the upload and make sure the object's metadata
    records the verified sha256."""
    uploader = cutter.uploader
    if cutter.pending:
        cutter.hand_off()
    parts = uploader.wait()
    uploader.shutdown()
    assert uploader.upload is not None
    info = uploader.upload.complete(parts)
    if uploader.resumed_upload_id is not None or not expected:
        # The upload's creator may have recorded other metadata, and without an
        # expected hash none was set up front: record the verified one now.
        current = store.head(key)
        if any(current.metadata.get(k) != v for k, v in final_meta.items()):
            info = store.set_metadata(key, final_meta)
    uploader.abort_leftovers()
    return info


def upload_stream(
    store: ObjectStore,
    key: str,
    chunks_factory: ChunksFactory,
    *,
    expected_sha256: str | None = None,
    expected_size: int | None = None,
    metadata: Mapping[str, str] | None = None,
    settings: TransferSettings | None = None,
    progress: ProgressSubscriber | None = None,
    sleep: Sleep = time.sleep,
    cancel: threading.Event | None = None,
) -> UploadResult:
    """Stream ``chunks_factory(0)`` into ``key`` of ``store``, verified; see module docstring.

    Raises ``IntegrityError`` (upload aborted) when the size or sha256 differs from the
    expected one, ``SourceUnavailable``/``RateLimited`` when the source keeps failing
    (upload kept for a later resume), ``Cancelled`` within one chunk of ``cancel`` being
    set (upload kept), and any store error as raised by the store.
    """
    if cancel is not None:
        sleep = _cancellable_sleep(cancel, key)
    check_key(key)
    settings = settings or TransferSettings()
    progress = progress or ProgressSubscriber()
    expected = expected_sha256.lower() if expected_sha256 else None
    meta = dict(metadata or {})
    if expected:
        meta[SHA256_METADATA_KEY] = expected
    began = time.monotonic()
    reopens: list[int] = []
    uploader = _PartUploader(store, key, meta, settings)
    cutter = _PartCutter(uploader, plan_part_size(expected_size, settings.part_size), cancel)
    hasher = hashlib.sha256()
    total = 0
    progress.on_start(key, expected_size)
    try:
        for chunk in read_source(chunks_factory, settings, sleep=sleep, on_reopen=reopens.append):
            _check_cancel(cancel, key)
            hasher.update(chunk)
            total += len(chunk)
            progress.on_bytes(len(chunk))
            if expected_size is not None and total > expected_size:
                raise IntegrityError(key, expected_size=expected_size, actual_size=total)
            cutter.feed(chunk)
        actual = hasher.hexdigest()
        if expected_size is not None and total != expected_size:
            raise IntegrityError(key, expected_size=expected_size, actual_size=total)
        if expected and actual != expected:
            raise IntegrityError(key, expected_sha256=expected, actual_sha256=actual)
        final_meta = {**meta, SHA256_METADATA_KEY: actual}
        if not uploader.started:
            data = cutter.take_all()
            info = store.put_bytes(key, data, metadata=final_meta)
            bytes_uploaded, parts_uploaded = len(data), 1
        else:
            info = _complete_multipart(store, key, cutter, final_meta, expected)
            bytes_uploaded, parts_uploaded = uploader.bytes_uploaded, uploader.parts_uploaded
    except IntegrityError:
        uploader.abort()
        raise
    finally:
        uploader.shutdown()
        progress.on_done(key)
    return UploadResult(
        key=key,
        size=total,
        sha256=actual,
        info=info,
        parts_uploaded=parts_uploaded,
        parts_reused=uploader.parts_reused,
        bytes_uploaded=bytes_uploaded,
        source_reopens=len(reopens),
        resumed_upload_id=uploader.resumed_upload_id,
        seconds=time.monotonic() - began,
        metadata=final_meta,
    )
