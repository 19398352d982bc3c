"""The mirror driver: catalog models from their sources into an object store, verified.

``mirror_models(options)`` is the one driver ``comfyfleet mirror`` and the
``mirror-models`` flow both call (:class:`~comfyfleet.mirror.options.MirrorOptions` holds
every default). It selects the files, runs them through :func:`mirror_files` (on its own
threads, or through the caller's ``submit`` hook: the flow's task runner) and writes the
manifest once, atomically, with every mirrored and skipped file.

``mirror_file`` handles one file:

1. **Skip** when the store already holds the key with the expected sha256 (from the
   object's metadata, or from the manifest for the same bytes) and the expected size. An
   object whose size or ETag differs from its manifest entry was replaced behind the
   mirror's back and is mirrored again, whatever its metadata says. With a pinned catalog
   entry (sha256 and size known) the decision needs no network at all; otherwise the
   source is asked for its metadata first (never for the bytes).
2. **Resolve** the source (falling back to the entry's ``alternates``) to a download plan.
   The catalog's sha256 wins: if the source reports another one, the upstream file changed
   and the mirror refuses before downloading (``IntegrityError``, "upstream changed").
3. **Stream** the bytes into the store with :func:`comfyfleet.mirror.upload.upload_stream`:
   bounded memory, sha256 checked before the upload completes, Range resume inside a run,
   multipart resume across runs.

Retries follow the rule in ``comfyfleet.errors``: the upload reopens a broken source
stream where it stopped (``source_attempts``); a transient failure of the whole file
starts it again up to ``settings.file_attempts`` times (3 from the CLI; 1 from a flow,
whose task owns whole-file retries); a corrupted transfer is retried once. Auth,
not-found and region errors are not retried; their messages say what to do.

Ctrl-C (or a cancelled run) sets a ``cancel`` event that every file checks between
chunks: files stop within a chunk, unfinished multipart uploads are kept for the next run
to resume, and the manifest records exactly the files that landed.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from comfyfleet.catalog import ModelFile
from comfyfleet.errors import (
    Cancelled,
    ComfyfleetError,
    IntegrityError,
    RateLimited,
    SourceAuthError,
    SourceError,
    SourceNotFound,
    TransientError,
    UpstreamChanged,
)
from comfyfleet.mirror.options import (
    DEFAULT_PARALLEL,
    MirrorOptions,
    TokenSource,
    needs_token,
    select_models,
)
from comfyfleet.mirror.upload import ProgressSubscriber, TransferSettings, upload_stream
from comfyfleet.sources import DownloadPlan, Tokens, open_stream, resolve
from comfyfleet.store.base import ObjectInfo, ObjectStore
from comfyfleet.store.manifest import (
    ManifestEntry,
    entry_matches,
    read_manifest,
    update_manifest,
)
from comfyfleet.units import format_bytes

if TYPE_CHECKING:
    import httpx

Status = Literal["mirrored", "skipped", "failed"]
Sleep = Callable[[float], None]

# CivitAI asks clients to download one file at a time (sources-api.md B6).
_SERIAL_SOURCES = {"civitai": threading.BoundedSemaphore(1)}


@dataclass(frozen=True)
class MirrorResult:
    """What happened to one file; ``bytes`` is the file's size (skipped files included)."""

    id: str
    key: str
    bytes: int
    seconds: float
    sha256: str | None
    status: Status
    error: str | None
    source: str
    revision: str | None
    bytes_downloaded: int = 0
    bytes_uploaded: int = 0
    parts_reused: int = 0
    attempts: int = 0
    transient: bool = False
    entry: ManifestEntry | None = field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    @property
    def mb_per_s(self) -> float | None:
        """Throughput of a mirrored file in MB/s (10^6 bytes), None for skips and failures."""
        if self.status != "mirrored" or self.seconds <= 0:
            return None
        return self.bytes / self.seconds / 1e6

    def row(self) -> dict[str, Any]:
        """A flat row for tables, JSON and artifacts."""
        speed = self.mb_per_s
        return {
            "id": self.id,
            "file": self.key,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "mb_per_s": round(speed, 1) if speed is not None else None,
            "sha256": self.sha256,
            "status": self.status,
            "error": self.error,
            "source": self.source,
            "revision": self.revision,
        }


@dataclass(frozen=True)
class MirrorRun:
    """Every file's result plus whether the manifest was written."""

    results: list[MirrorResult]
    manifest_written: bool
    seconds: float
    store_uri: str = ""

    @property
    def failed(self) -> list[MirrorResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed


class _Counting(ProgressSubscriber):
    """Passes progress on and counts bytes, so a restart can rewind what it reported."""

    def __init__(self, inner: ProgressSubscriber | None) -> None:
        self.inner = inner or ProgressSubscriber()
        self.count = 0
        self.started = False

    def on_start(self, key: str, total: int | None) -> None:
        if not self.started:
            self.started = True
            self.inner.on_start(key, total)

    def on_bytes(self, n: int) -> None:
        self.count += n
        self.inner.on_bytes(n)

    def rewind(self) -> None:
        if self.count:
            self.inner.on_bytes(-self.count)
            self.count = 0

    def on_done(self, key: str) -> None:
        """Reported once by :func:`mirror_file`, not per attempt."""


def _ascii(value: str) -> str:
    # S3 user metadata must be printable ASCII.
    return quote(value, safe=":/@?=&+,;~!$'()*[]#")


def _recorded_sha(info: ObjectInfo, entry: ManifestEntry | None) -> str | None:
    """The sha256 the store vouches for, or None when the object's bytes are not known.

    The object's metadata is believed unless the manifest describes other bytes under the
    key (another size or ETag): an object overwritten in place keeps its old ``sha256``
    metadata, so only the manifest's size and ETag reveal the change. Without metadata, a
    manifest entry for these very bytes (same size and ETag) vouches instead.
    """
    if entry is not None and not entry_matches(entry, info):
        return None
    if info.sha256:
        return info.sha256
    if entry is not None:
        return entry.sha256.lower() if entry.sha256 else None
    return None


def _entry(
    model: ModelFile,
    *,
    info: ObjectInfo,
    sha256: str,
    source: str,
    revision: str | None,
    mirrored_at: datetime,
) -> ManifestEntry:
    return ManifestEntry(
        id=model.id,
        key=model.key,
        folder=model.folder,
        file=model.file,
        size=info.size,
        sha256=sha256,
        source=source,
        revision=revision,
        mirrored_at=mirrored_at,
        etag=info.etag,
    )


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _resolve_any(model: ModelFile, tokens: Tokens, http: httpx.Client | None) -> DownloadPlan:
    """Resolve the model's source, else the first of its alternates that answers.

    Only "not there" and "not allowed" move on to an alternate (the same bytes elsewhere);
    transient errors are retried by the caller. The first source's error is raised when
    every one fails, since that is the source the user named.
    """
    first_error: SourceError | None = None
    for index, source in enumerate([model.source, *model.alternates]):
        candidate = model if index == 0 else model.model_copy(update={"source": source})
        try:
            return resolve(candidate, tokens, http=http)
        except (SourceNotFound, SourceAuthError) as exc:
            if first_error is None:
                first_error = exc
    assert first_error is not None
    raise first_error


def _skip_result(
    model: ModelFile,
    info: ObjectInfo,
    sha256: str,
    entry: ManifestEntry | None,
    began: float,
    source: str,
    revision: str | None,
) -> MirrorResult:
    if entry is None or entry.sha256 != sha256 or entry.size != info.size:
        entry = _entry(
            model, info=info, sha256=sha256, source=source, revision=revision, mirrored_at=_now()
        )
    return MirrorResult(
        id=model.id,
        key=model.key,
        bytes=info.size,
        seconds=time.monotonic() - began,
        sha256=sha256,
        status="skipped",
        error=None,
        source=entry.source or source,
        revision=entry.revision or revision,
        entry=entry,
    )


def mirror_file(
    model: ModelFile,
    store: ObjectStore,
    *,
    tokens: Tokens,
    settings: TransferSettings | None = None,
    force: bool = False,
    http: httpx.Client | None = None,
    progress: ProgressSubscriber | None = None,
    manifest: Mapping[str, ManifestEntry] | None = None,
    sleep: Sleep = time.sleep,
    cancel: threading.Event | None = None,
) -> MirrorResult:
    """Mirror one file (see module docstring); raises the ``ComfyfleetError`` that stopped it.

    ``manifest`` maps keys to the store's manifest entries (read once by the caller);
    when None it is read here. Setting ``cancel`` stops the file within one chunk
    (``Cancelled``); an unfinished multipart upload is kept for the next run to resume.
    """
    settings = settings or TransferSettings()
    began = time.monotonic()
    if manifest is None:
        manifest = read_manifest(store).by_key()
    entry = manifest.get(model.key)
    catalog_source = model.source.describe()  # describe() never shows credentials
    counting = _Counting(progress)
    job = _FileJob(model, store, tokens, settings, force, http, counting, began, cancel)
    try:
        return _mirror_file(job, entry, sleep, catalog_source)
    finally:
        if counting.started:
            counting.inner.on_done(model.key)


@dataclass(frozen=True)
class _FileJob:
    """What every step of one file's mirror needs (kept together, passed once)."""

    model: ModelFile
    store: ObjectStore
    tokens: Tokens
    settings: TransferSettings
    force: bool
    http: httpx.Client | None
    counting: _Counting
    began: float
    cancel: threading.Event | None

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(
                f"{self.model.id}: interrupted before it finished",
                hint="rerun the same command: finished files are skipped and the unfinished "
                "upload resumes",
            )

    def wait(self, seconds: float, sleep: Sleep) -> None:
        """A retry's backoff, cut short by ``cancel``."""
        if self.cancel is None:
            sleep(seconds)
        else:
            self.cancel.wait(seconds)
        self.check_cancel()


def _skip_unchanged(
    job: _FileJob, info: ObjectInfo | None, entry: ManifestEntry | None, plan: DownloadPlan
) -> MirrorResult | None:
    """A skip result when the store already holds what ``plan`` describes, else None."""
    model = job.model
    if job.force or info is None:
        return None
    expected_sha = _expected_sha(model, plan)
    expected_size = _expected_size(model, plan)
    recorded = _recorded_sha(info, entry)
    same_size = expected_size is None or expected_size == info.size
    if expected_sha and recorded == expected_sha and same_size:
        return _skip_result(model, info, expected_sha, entry, job.began, plan.source, plan.revision)
    if (
        not expected_sha
        and recorded
        and same_size
        and entry is not None
        and entry.source == plan.source
        and plan.revision is not None
        and entry.revision == plan.revision
    ):
        # No hash known upstream: the same source and revision as last time.
        return _skip_result(model, info, recorded, entry, job.began, plan.source, plan.revision)
    return None


def _mirror_file(
    job: _FileJob,
    entry: ManifestEntry | None,
    sleep: Sleep,
    catalog_source: str,
) -> MirrorResult:
    model, store, settings, counting = job.model, job.store, job.settings, job.counting
    pinned_sha = model.sha256
    info = store.exists(model.key)
    if not job.force and info is not None and pinned_sha:
        recorded = _recorded_sha(info, entry)
        if recorded == pinned_sha and (model.size is None or model.size == info.size):
            # Pinned and present: decided without touching the network.
            return _skip_result(model, info, pinned_sha, entry, job.began, catalog_source, None)

    failures = 0
    integrity_failures = 0
    while True:
        job.check_cancel()
        try:
            plan = _resolve_any(model, job.tokens, job.http)
            skipped = _skip_unchanged(job, info, entry, plan)
            if skipped is not None:
                return skipped
            expected_size = _expected_size(model, plan)
            counting.on_start(model.key, expected_size)
            return _transfer(
                job,
                plan,
                _expected_sha(model, plan),
                expected_size,
                attempts=failures + integrity_failures + 1,
            )
        except UpstreamChanged:
            raise
        except IntegrityError:
            integrity_failures += 1
            counting.rewind()
            if integrity_failures > 1:
                raise
        except TransientError as exc:
            failures += 1
            counting.rewind()
            if failures >= settings.file_attempts:
                raise
            wait = settings.backoff(failures)
            if isinstance(exc, RateLimited) and exc.retry_after is not None:
                if exc.retry_after > settings.max_retry_after:
                    raise
                wait = max(wait, exc.retry_after)
            job.wait(wait, sleep)
        # The object may have appeared meanwhile (another run); re-check before retrying.
        info = store.exists(model.key)


def _upstream_changed(model: ModelFile, plan: DownloadPlan, **sizes: int | None) -> UpstreamChanged:
    return UpstreamChanged(
        f"{model.id} ({plan.source})",
        expected_sha256=model.sha256,
        actual_sha256=plan.sha256.lower() if plan.sha256 else None,
        hint="upstream changed: the source now reports other bytes than the catalog pins; "
        "nothing was downloaded. Check the new file and update sha256/size (and the "
        "revision) in the catalog, or pin the old revision",
        **sizes,
    )


def _expected_sha(model: ModelFile, plan: DownloadPlan) -> str | None:
    source_sha = plan.sha256.lower() if plan.sha256 else None
    if model.sha256 and source_sha and source_sha != model.sha256:
        raise _upstream_changed(model, plan)
    return model.sha256 or source_sha


def _expected_size(model: ModelFile, plan: DownloadPlan) -> int | None:
    if model.size is not None and plan.size is not None and plan.size != model.size:
        raise _upstream_changed(model, plan, expected_size=model.size, actual_size=plan.size)
    return model.size if model.size is not None else plan.size


def _transfer(
    job: _FileJob,
    plan: DownloadPlan,
    expected_sha: str | None,
    expected_size: int | None,
    *,
    attempts: int,
) -> MirrorResult:
    model, settings, http = job.model, job.settings, job.http
    metadata = {"comfyfleet-id": model.id, "source": _ascii(plan.source)}
    if plan.revision:
        metadata["revision"] = _ascii(plan.revision)

    def chunks(offset: int) -> Iterator[bytes]:
        return open_stream(plan, offset, http=http, chunk_size=settings.chunk_size)

    slot = _SERIAL_SOURCES.get(plan.kind)
    if slot is not None:
        _acquire(slot, job)
    try:
        result = upload_stream(
            job.store,
            model.key,
            chunks,
            expected_sha256=expected_sha,
            expected_size=expected_size,
            metadata=metadata,
            settings=settings,
            progress=job.counting,
            cancel=job.cancel,
        )
    finally:
        if slot is not None:
            slot.release()
    entry = _entry(
        model,
        info=result.info,
        sha256=result.sha256,
        source=plan.source,
        revision=plan.revision,
        mirrored_at=_now(),
    )
    return MirrorResult(
        id=model.id,
        key=model.key,
        bytes=result.size,
        seconds=time.monotonic() - job.began,
        sha256=result.sha256,
        status="mirrored",
        error=None,
        source=plan.source,
        revision=plan.revision,
        bytes_downloaded=job.counting.count,
        bytes_uploaded=result.bytes_uploaded,
        parts_reused=result.parts_reused,
        attempts=attempts,
        entry=entry,
    )


def _acquire(slot: threading.BoundedSemaphore, job: _FileJob) -> None:
    """Take a serial source's slot, giving up when the run is cancelled."""
    while not slot.acquire(timeout=0.1):
        job.check_cancel()


def describe_error(exc: BaseException) -> str:
    """One line naming the error, for tables and artifacts (never a token)."""
    if isinstance(exc, ComfyfleetError):
        return f"{type(exc).__name__}: {exc.one_line()}"
    return f"{type(exc).__name__}: {exc}"


def failed_result(model: ModelFile, exc: BaseException, seconds: float) -> MirrorResult:
    """The result row of a file that could not be mirrored."""
    return MirrorResult(
        id=model.id,
        key=model.key,
        bytes=model.size or 0,
        seconds=seconds,
        sha256=model.sha256,
        status="failed",
        error=describe_error(exc),
        source=model.source.describe(),
        revision=None,
        transient=isinstance(exc, TransientError),
    )


def manifest_entries(results: Sequence[MirrorResult]) -> list[ManifestEntry]:
    """The entries of every mirrored or skipped file, for one manifest update."""
    return [r.entry for r in results if r.entry is not None and r.status != "failed"]


Wait = Callable[[], MirrorResult]
Submit = Callable[[ModelFile, Callable[[], MirrorResult]], Wait]
"""``submit(model, work)`` runs ``work`` (one file; raises its error) somewhere, e.g. as a
Prefect task with retries, and returns a function that waits for the result (raising what
``work`` raised). Without one, :func:`mirror_files` runs files on its own thread pool."""


class _TokenCache:
    """Tokens for each file: a token source is called once, and only for a file whose
    source may need a token, so a missing tokens block cannot fail URL or s3 files."""

    def __init__(self, tokens: Tokens | TokenSource) -> None:
        self._source = tokens
        self._lock = threading.Lock()
        self._value: Tokens | None = None
        self._error: Exception | None = None

    def for_model(self, model: ModelFile) -> Tokens:
        if isinstance(self._source, Tokens):
            return self._source
        if not needs_token(model):
            return Tokens()
        with self._lock:
            if self._value is None and self._error is None:
                try:
                    self._value = self._source()
                except Exception as exc:  # noqa: BLE001 - the files that need it fail with it
                    self._error = exc
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


def _settled(model: ModelFile, wait: Wait, started: Mapping[str, float]) -> MirrorResult:
    """The file's result; its error as a ``failed`` result."""
    try:
        return wait()
    except Exception as exc:  # noqa: BLE001 - every failure becomes a row; the run goes on
        began = started.get(model.id)
        return failed_result(model, exc, time.monotonic() - began if began else 0.0)


def _write_manifest(store: ObjectStore, results: Sequence[MirrorResult]) -> bool:
    entries = manifest_entries(results)
    if entries:
        update_manifest(store, entries)
    return bool(entries)


def mirror_files(
    models: Sequence[ModelFile],
    store: ObjectStore,
    *,
    tokens: Tokens | TokenSource,
    settings: TransferSettings | None = None,
    force: bool = False,
    http: httpx.Client | None = None,
    max_parallel: int = DEFAULT_PARALLEL,
    progress_for: Callable[[ModelFile], ProgressSubscriber | None] | None = None,
    on_result: Callable[[MirrorResult], None] | None = None,
    submit: Submit | None = None,
    sleep: Sleep = time.sleep,
    cancel: threading.Event | None = None,
) -> MirrorRun:
    """Mirror ``models`` (at most ``max_parallel`` at once, or as ``submit`` schedules
    them), then write the manifest once with every mirrored and skipped file. Results keep
    the input order.

    Interrupted (Ctrl-C, or any ``BaseException`` in the waiting thread): ``cancel`` is
    set, every file in flight stops within one chunk (its multipart upload kept for the
    next run), the manifest records the files that did land, and the exception goes on.
    """
    if max_parallel < 1:
        raise ValueError("max_parallel must be at least 1")
    began = time.monotonic()
    _clean_stale_temp(store)
    manifest = read_manifest(store).by_key()
    cancel = cancel or threading.Event()
    token_cache = _TokenCache(tokens)
    started: dict[str, float] = {}

    def work(model: ModelFile) -> MirrorResult:
        started.setdefault(model.id, time.monotonic())
        return mirror_file(
            model,
            store,
            tokens=token_cache.for_model(model),
            settings=settings,
            force=force,
            http=http,
            progress=progress_for(model) if progress_for else None,
            manifest=manifest,
            sleep=sleep,
            cancel=cancel,
        )

    pool: ThreadPoolExecutor | None = None
    if submit is None:
        pool = ThreadPoolExecutor(
            max_workers=max(1, min(max_parallel, len(models) or 1)),
            thread_name_prefix="comfyfleet-mirror",
        )
        submit = _pool_submit(pool)
    waits: list[Wait] = []
    results: list[MirrorResult] = []
    try:
        waits.extend(submit(model, functools.partial(work, model)) for model in models)
        for model, wait in zip(models, waits, strict=True):
            results.append(_settled(model, wait, started))
            if on_result is not None:
                on_result(results[-1])
    except BaseException:
        _stop(cancel, pool)
        landed = [
            _settled(m, w, started)
            for m, w in zip(models[len(results) :], waits[len(results) :], strict=False)
        ]
        _write_manifest(store, results + landed)
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    written = _write_manifest(store, results)
    return MirrorRun(
        results=results,
        manifest_written=written,
        seconds=time.monotonic() - began,
        store_uri=store.uri,
    )


def _clean_stale_temp(store: ObjectStore) -> None:
    """Drop what killed runs left in a local store's temp dir (S3 stores have none)."""
    clean = getattr(store, "clean_stale_temp", None)
    if callable(clean):
        clean()


def _pool_submit(pool: ThreadPoolExecutor) -> Submit:
    def submit(model: ModelFile, work: Callable[[], MirrorResult]) -> Wait:
        return pool.submit(work).result

    return submit


def _stop(cancel: threading.Event, pool: ThreadPoolExecutor | None) -> None:
    """Tell every file in flight to stop and wait for them (each stops within a chunk)."""
    cancel.set()
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


def mirror_models(
    options: MirrorOptions,
    *,
    store: ObjectStore | None = None,
    models: Sequence[ModelFile] | None = None,
    http: httpx.Client | None = None,
    progress_for: Callable[[ModelFile], ProgressSubscriber | None] | None = None,
    on_result: Callable[[MirrorResult], None] | None = None,
    submit: Submit | None = None,
    sleep: Sleep = time.sleep,
    cancel: threading.Event | None = None,
) -> MirrorRun:
    """The mirror driver, shared by ``comfyfleet mirror`` and the ``mirror-models`` flow.

    ``options`` says what to mirror and how (see :class:`MirrorOptions`); ``store`` is an
    already opened store (a ``--store-block``), else ``options.store`` is opened;
    ``models`` a selection already made with :func:`select_models` (a flow that sizes
    its progress first). The CLI runs files on the driver's own threads; the flow passes
    ``submit`` to run each file as a task. See :func:`mirror_files`.
    """
    chosen = select_models(options) if models is None else models
    target = options.open_store() if store is None else store
    return mirror_files(
        chosen,
        target,
        tokens=options.tokens,
        settings=options.transfer_settings(),
        force=options.force,
        http=http,
        max_parallel=options.parallel,
        progress_for=progress_for,
        on_result=on_result,
        submit=submit,
        sleep=sleep,
        cancel=cancel,
    )


def summarize(run: MirrorRun) -> str:
    """``3 mirrored (1.2 GiB), 2 skipped, 1 failed in 12.3 s``."""
    by: dict[str, list[MirrorResult]] = {"mirrored": [], "skipped": [], "failed": []}
    for r in run.results:
        by[r.status].append(r)
    moved = sum(r.bytes for r in by["mirrored"])
    return (
        f"{len(by['mirrored'])} mirrored ({format_bytes(moved)}), {len(by['skipped'])} skipped, "
        f"{len(by['failed'])} failed in {run.seconds:.1f} s"
    )
