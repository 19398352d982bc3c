"""Batch generation: drive one ComfyUI through a jobs table, keeping its queue full.

``run_batch`` takes validated jobs (:mod:`comfyfleet.generate.jobs`) and, per job:

1. **prepares** it: LoRAs resolved (pulled on demand, :mod:`comfyfleet.generate.loras`), input
   images uploaded (image columns -> ``/upload/image`` -> the returned name), the workflow built and
   checked before submission (:mod:`comfyfleet.generate.preflight`);
2. **submits** it while ``queue_depth`` prompts are in flight, so the next prompt is already
   queued in ComfyUI when one finishes: ComfyUI never waits for us. Waits run concurrently on
   the client's shared WebSocket; when one returns, the next job is submitted at once;
3. **stores** its outputs (``/view``) as ``outputs/<batch>/<job>/<file>``, after clearing what
   an interrupted earlier run may have left there (:mod:`comfyfleet.generate.results`);
4. runs its **video stage** (column ``video``, :mod:`comfyfleet.generate.video`): on this
   ComfyUI when the video model is listed and the GPU has the VRAM, else (or when that fails)
   on fal.ai; the result row says which;
5. **records** the job in ``outputs/<batch>/results.parquet``, rewritten atomically after
   every finished job (:mod:`comfyfleet.generate.results`). A job counts as done only once
   all its outputs are stored.

Rerunning a batch id reads ``results.parquet`` and skips every job recorded ``ok`` whose
definition (fingerprint) is unchanged and whose outputs are all still there: a batch killed
midway loses nothing and duplicates nothing.

Retries: connection drops and timeouts (``TransientError``) resubmit the job up to
``retries`` more times with exponential backoff; validation and execution errors fail the
job at once and the batch goes on. When a job exhausts its retries on a connection error and
ComfyUI does not answer ``/system_stats`` either, the batch stops: the jobs not yet run are
reported failed ("not run") and a rerun resumes them.

Threads: the caller's thread prepares and submits; ``queue_depth`` waiter threads follow
prompts and free their slot the moment a prompt finishes; ``post_workers`` threads fetch,
store, run video stages and record. ``on_event`` is called from all of them, serialised.
"""

from __future__ import annotations

import contextlib
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from comfyfleet.comfy.workflows import LoraSpec, apply_loras, build_workflow
from comfyfleet.errors import (
    ComfyConnectionError,
    ComfyfleetError,
    ComfyPartialPrompt,
    ComfyTimeout,
    ConfigError,
    StoreError,
    is_transient,
)
from comfyfleet.generate.api import ComfyBatchAPI
from comfyfleet.generate.fal import FalClient
from comfyfleet.generate.jobs import Job
from comfyfleet.generate.loras import LoraResolver, ResolvedLora
from comfyfleet.generate.preflight import WorkflowChecker
from comfyfleet.generate.preflight import catalog_files as catalog_file_ids
from comfyfleet.generate.results import (
    SUMMARY_FILE,
    BatchReport,
    JobResult,
    ResultsLedger,
    describe,
    job_prefix,
    now_iso,
    read_results,
    store_outputs,
)
from comfyfleet.generate.video import VideoSettings, VideoStage
from comfyfleet.store.base import ObjectStore

if TYPE_CHECKING:
    from comfyfleet.comfy.tracking import PromptResult
    from comfyfleet.sources import Tokens

__all__ = [
    "DEFAULT_OPTIONS",
    "BatchEvent",
    "BatchOptions",
    "BatchReport",
    "ComfyBatchAPI",
    "JobResult",
    "VideoSettings",
    "check_batch_id",
    "default_batch_id",
    "generate_from_file",
    "read_results",
    "run_batch",
]

EventKind = Literal["start", "submitted", "retry", "finished"]
_BATCH_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# VRAM a local video stage needs when the catalog does not say (GiB, fp8/fp16 weights).
DEFAULT_VIDEO_VRAM_GB: Mapping[str, float] = {"wan_i2v": 24.0, "svd_i2v": 12.0}


@dataclass(frozen=True)
class BatchOptions:
    """Every option of a batch, each default spelled here once: the CLI builds this from its
    arguments, the ``generate-batch`` flow from its parameters, and both hand it to
    :func:`generate_from_file` (and from there :func:`run_batch`).

    ``batch_id``: the batch folder (``None``: ``<jobs file stem>-<8 hex of its sha256>``);
    ``queue_depth``: prompts kept queued in ComfyUI at once (2: it never idles);
    ``retries``: resubmits per job after a transient error (connection drop, timeout), with
    backoff ``retry_backoff_s``·2^n. The engine is the one owner of job retries, from the CLI
    and from the flow alike (the flow's task does not retry the batch: errors.py's rule);
    ``prompt_timeout_s``: how long one prompt may take; ``post_workers``: threads that fetch
    and store outputs; ``ready_timeout_s``: how long ComfyUI may take to answer at all;
    ``comfy_root``: ComfyUI's folder here (LoRAs are pulled into it on demand);
    ``catalog_paths``: catalog files (default: the built-in catalog); ``video``: video stages.
    """

    batch_id: str | None = None
    queue_depth: int = 2
    retries: int = 2
    retry_backoff_s: float = 1.0
    prompt_timeout_s: float | None = 3600.0
    post_workers: int = 4
    ready_timeout_s: float = 30.0
    comfy_root: str | None = None
    catalog_paths: tuple[str, ...] = ()
    video: VideoSettings = field(default_factory=VideoSettings)

    def __post_init__(self) -> None:
        if self.batch_id is not None:
            check_batch_id(self.batch_id)
        if self.queue_depth < 1:
            raise ConfigError(
                f"queue depth {self.queue_depth} must be at least 1", hint="2 keeps ComfyUI busy"
            )
        if self.retries < 0:
            raise ConfigError(f"retries {self.retries} must be 0 or more")
        if self.post_workers < 1:
            raise ConfigError(f"post workers {self.post_workers} must be at least 1")


DEFAULT_OPTIONS = BatchOptions()


@dataclass(frozen=True)
class BatchEvent:
    """Progress of a batch: ``done`` of ``total`` jobs are final (skipped ones included)."""

    kind: EventKind
    job_id: str
    done: int
    total: int
    result: JobResult | None = None
    message: str = ""


def check_batch_id(batch_id: str) -> str:
    if not _BATCH_ID_RE.match(batch_id or ""):
        raise ConfigError(
            f"batch id {batch_id!r} cannot be used as a folder name",
            hint="use letters, digits, '.', '_' and '-' (up to 128 characters)",
        )
    return batch_id


def default_batch_id(jobs_file: str | Path) -> str:
    """``<stem>-<8 hex of the file's sha256>``: the same jobs file resumes the same batch."""
    import hashlib

    path = Path(jobs_file)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-.") or "batch"
    return f"{stem[:100]}-{digest}"


# ---------------------------------------------------------------- the engine


@dataclass
class _Entry:
    job: Job
    index: int
    attempt: int = 0
    workflow: dict[str, Any] | None = None
    loras: list[ResolvedLora] = field(default_factory=list)
    prompt_id: str = ""
    submitted: float = 0.0
    first_submit: float | None = None
    last_error: str = ""


class _Engine:
    """The scheduler of one batch run (see the module docstring): prepare, submit, wait,
    store, record. The video stage is :class:`~comfyfleet.generate.video.VideoStage`'s."""

    def __init__(
        self,
        *,
        client: ComfyBatchAPI,
        store: ObjectStore,
        batch_id: str,
        options: BatchOptions,
        loras: LoraResolver,
        ledger: ResultsLedger,
        on_event: Callable[[BatchEvent], None] | None,
        video: VideoStage,
        checker: WorkflowChecker,
        total: int,
        done: int,
    ) -> None:
        self.client = client
        self.store = store
        self.batch_id = batch_id
        self.depth = options.queue_depth
        self.retries = options.retries
        self.backoff = options.retry_backoff_s
        self.prompt_timeout = options.prompt_timeout_s
        self.post_workers = options.post_workers
        self.video = video
        self.checker = checker
        self.loras = loras
        self.ledger = ledger
        self.on_event = on_event
        self.total = total
        self.done = done
        self.results: dict[str, JobResult] = {}
        self.stopped = ""

        self._cv = threading.Condition()
        self._ready: deque[_Entry] = deque()
        self._delayed: list[tuple[float, _Entry]] = []
        self._outstanding = 0
        self._hold_until = 0.0
        self._slots = threading.Semaphore(self.depth)
        self._event_lock = threading.Lock()
        self._memo_lock = threading.Lock()
        self._uploads: dict[str, str] = {}

    # ------------------------------------------------------------ plumbing

    def emit(
        self, kind: EventKind, job_id: str, result: JobResult | None = None, message: str = ""
    ) -> None:
        if self.on_event is None:
            return
        with self._event_lock:
            self.on_event(BatchEvent(kind, job_id, self.done, self.total, result, message))

    def run(self, entries: Sequence[_Entry]) -> None:
        with self._cv:
            self._ready.extend(entries)
            self._outstanding = len(entries)
        waiters = ThreadPoolExecutor(self.depth, thread_name_prefix="comfyfleet-wait")
        post = ThreadPoolExecutor(self.post_workers, thread_name_prefix="comfyfleet-post")
        self._waiters, self._post = waiters, post
        try:
            while True:
                entry = self._next()
                if entry is None:
                    break
                self._start(entry)
        finally:
            waiters.shutdown(wait=True)
            post.shutdown(wait=True)
            self.video.close()

    def _next(self) -> _Entry | None:
        with self._cv:
            while True:
                if self._outstanding == 0:
                    return None
                now = time.monotonic()
                due = [d for d in self._delayed if d[0] <= now]
                if due:
                    self._delayed = [d for d in self._delayed if d[0] > now]
                    # Retries go first: their outputs are what the batch is waiting for.
                    for _, entry in reversed(sorted(due, key=lambda d: d[0])):
                        self._ready.appendleft(entry)
                if self.stopped and (self._ready or self._delayed):
                    dropped = list(self._ready) + [e for _, e in self._delayed]
                    self._ready.clear()
                    self._delayed.clear()
                    for entry in dropped:
                        self._cv.release()
                        try:
                            self._fail(entry, _not_run(entry, self.stopped))
                        finally:
                            self._cv.acquire()
                    continue
                if self._ready and now >= self._hold_until:
                    return self._ready.popleft()
                timeout = None
                if self._delayed:
                    timeout = max(0.0, min(d[0] for d in self._delayed) - now)
                if self._ready:
                    timeout = max(0.0, self._hold_until - now)
                self._cv.wait(timeout)

    def _start(self, entry: _Entry) -> None:
        """Prepare (if not yet), take a queue slot, submit, hand the wait to a waiter."""
        entry.attempt += 1
        try:
            if entry.workflow is None:
                entry.workflow = self._prepare(entry)
        except Exception as exc:  # noqa: BLE001 - every failure becomes the job's row
            self._retry_or_fail(entry, exc)
            return
        self._slots.acquire()
        if self.stopped:
            self._slots.release()
            self._fail(entry, _not_run(entry, self.stopped))
            return
        try:
            submitted = time.monotonic()
            entry.prompt_id = self.client.submit(entry.workflow)
        except ComfyPartialPrompt as exc:
            # ComfyUI queued part of it despite the preflight; the client cancelled it.
            self._slots.release()
            entry.prompt_id = exc.prompt_id
            self._post.submit(self._collect_partial, entry, exc)
            return
        except Exception as exc:  # noqa: BLE001
            self._slots.release()
            self._retry_or_fail(entry, exc)
            return
        entry.submitted = submitted
        if entry.first_submit is None:
            entry.first_submit = submitted
        self.emit("submitted", entry.job.id, message=entry.prompt_id)
        self._waiters.submit(self._wait, entry)

    def _wait(self, entry: _Entry) -> None:
        try:
            result = self.client.wait(entry.prompt_id, timeout=self.prompt_timeout)
        except Exception as exc:  # noqa: BLE001
            if isinstance(exc, ComfyTimeout):
                self._abandon(entry.prompt_id)
            self._slots.release()
            self._retry_or_fail(entry, exc)
            return
        finished = time.monotonic()
        self._slots.release()
        self._post.submit(self._finish, entry, result, finished)

    def _abandon(self, prompt_id: str) -> None:
        # A prompt we stopped waiting for must not run on (or run twice after a retry).
        with contextlib.suppress(ComfyfleetError):
            self.client.delete_queued([prompt_id])
            self.client.interrupt(prompt_id)

    def _retry_or_fail(self, entry: _Entry, exc: BaseException) -> None:
        message = describe(exc)
        entry.last_error = message
        if is_transient(exc) and entry.attempt <= self.retries and not self.stopped:
            delay = self.backoff * 2 ** (entry.attempt - 1)
            self.emit("retry", entry.job.id, message=f"attempt {entry.attempt}: {message}")
            with self._cv:
                due = time.monotonic() + delay
                self._delayed.append((due, entry))
                if isinstance(exc, ComfyConnectionError):
                    # ComfyUI itself is unreachable: hold every submission, not just this one.
                    self._hold_until = max(self._hold_until, due)
                self._cv.notify_all()
            return
        if isinstance(exc, ComfyConnectionError) and not self.stopped:
            self._probe(exc)
        self._fail(entry, message)

    def _probe(self, exc: ComfyConnectionError) -> None:
        """Stop the batch when ComfyUI itself is gone (not just one prompt)."""
        try:
            self.client.system_stats()
        except ComfyfleetError:
            with self._cv:
                if not self.stopped:
                    self.stopped = (
                        f"ComfyUI at {self.client.base_url} stopped answering; "
                        "rerun the same batch id to resume"
                    )
                self._cv.notify_all()

    def _collect_partial(self, entry: _Entry, exc: ComfyPartialPrompt) -> None:
        """Fail a job whose prompt ComfyUI queued only in part, keeping its prompt id and
        storing whatever the prompt wrote before the cancel took effect (no orphans)."""
        message = describe(exc)
        keys: list[str] = []
        try:
            files = self.client.settle(exc.prompt_id)
            prefix = job_prefix(self.batch_id, entry.job.id)
            keys = store_outputs(self.client, self.store, prefix, files, clean=True)
        except Exception as err:  # noqa: BLE001 - the row says what could not be collected
            message += f"; its outputs could not be collected: {describe(err)}"
        else:
            if keys:
                message += f"; the {len(keys)} file(s) it wrote before the cancel are stored"
        self._fail(entry, message, outputs=keys)

    def _fail(self, entry: _Entry, message: str, *, outputs: Sequence[str] = ()) -> None:
        started = entry.first_submit
        self._complete(
            JobResult(
                id=entry.job.id,
                status="failed",
                workflow=_workflow_label(entry.job.workflow),
                wall_seconds=time.monotonic() - started if started is not None else 0.0,
                outputs=list(outputs),
                error=message,
                prompt_id=entry.prompt_id,
                attempt=entry.attempt,
                fingerprint=entry.job.fingerprint(),
                finished_at=now_iso(),
                loras=[lr.name for lr in entry.loras],
            )
        )

    def _complete(self, result: JobResult) -> None:
        try:
            self.ledger.record(result)
        except Exception as exc:  # noqa: BLE001 - without a ledger the batch cannot resume
            with self._cv:
                self.stopped = self.stopped or (f"cannot write {self.ledger.key}: {describe(exc)}")
            if result.status == "ok":
                result = replace(
                    result,
                    status="failed",
                    error=f"outputs stored but not recorded: {describe(exc)}",
                )
        with self._cv:
            self.results[result.id] = result
            self.done += 1
            self._outstanding -= 1
            self._cv.notify_all()
        self.emit("finished", result.id, result)

    # ------------------------------------------------------------ preparing

    def _prepare(self, entry: _Entry) -> dict[str, Any]:
        job = entry.job
        values = job.values()
        # ComfyUI's own copy lands in output/comfyfleet/<batch>/<job>_NNNNN_.png.
        values.setdefault("filename_prefix", f"comfyfleet/{self.batch_id}/{job.id}")
        values.setdefault("id", job.id)  # a column like any other: "{{id}}" works
        for column, source in job.image_inputs().items():
            values[column] = self._upload(source)
        entry.loras = self.loras.resolve(job.loras) if job.loras else []
        workflow = build_workflow(job.workflow, values)
        if entry.loras:
            specs = [LoraSpec(lr.name, lr.strength_model, lr.strength_clip) for lr in entry.loras]
            workflow = apply_loras(workflow, specs)
        self.checker.check(workflow)
        return workflow

    def _upload(self, source: str) -> str:
        with self._memo_lock:
            known = self._uploads.get(source)
        if known is not None:
            return known
        target: str | Path = source if source.startswith(("http://", "https://")) else Path(source)
        ref = self.client.upload_image(target).ref
        with self._memo_lock:
            self._uploads[source] = ref
        return ref

    # ------------------------------------------------------------ finishing

    def _finish(self, entry: _Entry, result: PromptResult, finished: float) -> None:
        job = entry.job
        try:
            prefix = job_prefix(self.batch_id, job.id)
            keys = store_outputs(self.client, self.store, prefix, result.outputs, clean=True)
            video = self.video.run(job, result.outputs, keys) if job.video else None
            video_keys = video.keys if video else []
        except Exception as exc:  # noqa: BLE001
            self._retry_or_fail(entry, exc)
            return
        waited = finished - entry.submitted
        self._complete(
            JobResult(
                id=job.id,
                status="ok",
                workflow=_workflow_label(job.workflow),
                seconds=result.seconds + (video.exec_seconds if video else 0.0),
                queue_wait=max(0.0, waited - result.seconds),
                wall_seconds=time.monotonic() - (entry.first_submit or entry.submitted),
                outputs=keys + video_keys,
                video_path=video.path if video else "",
                video_seconds=video.wall_seconds if video else 0.0,
                prompt_id=result.prompt_id,
                attempt=entry.attempt,
                fingerprint=job.fingerprint(),
                finished_at=now_iso(),
                loras=[lr.name for lr in entry.loras],
            )
        )


def _not_run(entry: _Entry, stopped: str) -> str:
    if entry.last_error:
        return f"{entry.last_error}; not retried: {stopped}"
    return f"not run: {stopped}"


def _import_parquet() -> None:
    import pyarrow.parquet  # noqa: F401


def _workflow_label(workflow: str) -> str:
    return Path(workflow).name if ("/" in workflow or "\\" in workflow) else workflow


# ---------------------------------------------------------------- entry point


def _resume_plan(
    jobs: Sequence[Job], ledger: ResultsLedger, store: ObjectStore
) -> tuple[dict[str, JobResult], list[_Entry]]:
    """(jobs done in an earlier run, as skipped rows; the entries still to run).

    Done means: recorded ``ok`` with the same fingerprint and every output still stored.
    """
    skipped: dict[str, JobResult] = {}
    todo: list[_Entry] = []
    for index, job in enumerate(jobs):
        prev = ledger.previous(job.id)
        if (
            prev is not None
            and prev.status == "ok"
            and prev.fingerprint == job.fingerprint()
            and all(store.exists(key) is not None for key in prev.outputs)
        ):
            skipped[job.id] = replace(prev, status="skipped")
        else:
            todo.append(_Entry(job, index))
    return skipped, todo


def run_batch(
    jobs: Sequence[Job],
    *,
    client: ComfyBatchAPI,
    store: ObjectStore,
    batch_id: str,
    options: BatchOptions = DEFAULT_OPTIONS,
    loras: LoraResolver | None = None,
    on_event: Callable[[BatchEvent], None] | None = None,
    fal: FalClient | None = None,
    catalog_vram: Mapping[str, float] | None = None,
    catalog_files: Mapping[str, str] | None = None,
) -> BatchReport:
    """Run ``jobs`` on ComfyUI (see the module docstring) and return the report.

    ``catalog_vram`` maps model file names to the VRAM (GiB) they need, for the local video
    decision (``{m.file: m.min_vram_gb for m in catalog.models.values()}``);
    ``catalog_files`` maps ``<folder>/<file>`` to its catalog id, so a job refused for a
    missing model names what to mirror (:func:`comfyfleet.generate.preflight.catalog_files`).
    """
    check_batch_id(batch_id)
    ids = [j.id for j in jobs]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ConfigError(f"duplicate job ids: {', '.join(dup)}", hint="job ids must be unique")
    began = time.monotonic()
    if "pyarrow.parquet" not in sys.modules:
        # Half a second of imports; done while the first prompts run, not before them.
        threading.Thread(target=_import_parquet, daemon=True, name="comfyfleet-import").start()
    ledger = ResultsLedger(store, batch_id)
    skipped, todo = _resume_plan(jobs, ledger, store)
    checker = WorkflowChecker(client, catalog_files=catalog_files)
    engine = _Engine(
        client=client,
        store=store,
        batch_id=batch_id,
        options=options,
        loras=loras or LoraResolver(client, store=store),
        ledger=ledger,
        on_event=on_event,
        video=VideoStage(
            client=client,
            store=store,
            batch_id=batch_id,
            settings=options.video,
            catalog_vram=catalog_vram or {},
            check=checker.check,
            retries=options.retries,
            backoff_s=options.retry_backoff_s,
            fal=fal,
        ),
        checker=checker,
        total=len(jobs),
        done=len(skipped),
    )
    engine.emit("start", "", message=f"{len(todo)} to run, {len(skipped)} done before")
    for result in skipped.values():
        engine.emit("finished", result.id, result)
    engine.run(todo)
    ledger.flush()
    results = [skipped.get(j.id) or engine.results[j.id] for j in jobs]
    report = BatchReport(
        batch_id=batch_id,
        store_uri=store.uri,
        results=results,
        wall_seconds=time.monotonic() - began,
        results_key=ledger.key,
        summary_key=f"outputs/{batch_id}/{SUMMARY_FILE}",
        stopped=engine.stopped,
    )
    try:
        store.put_bytes(
            report.summary_key, report.markdown().encode(), content_type="text/markdown"
        )
    except StoreError:
        report.summary_key = ""
    return report


def generate_from_file(
    jobs_file: str | Path,
    options: BatchOptions = DEFAULT_OPTIONS,
    *,
    comfy_url: str,
    store: ObjectStore,
    tokens: Tokens | None = None,
    on_event: Callable[[BatchEvent], None] | None = None,
) -> BatchReport:
    """The batch driver the CLI and the flow both call: read a jobs file, connect to
    ComfyUI and run the batch with ``options``.

    ``options.batch_id`` defaults to ``<jobs file stem>-<8 hex of its sha256>``, so running
    the same file again resumes it. ``options.catalog_paths`` (default: the built-in
    catalog) give LoRA ids and the VRAM the video models need; ``options.comfy_root``
    enables pulling LoRAs on demand.
    """
    from comfyfleet.catalog import load_catalog
    from comfyfleet.comfy.client import ComfyClient
    from comfyfleet.generate.jobs import read_jobs

    jobs = read_jobs(jobs_file)
    batch = options.batch_id or default_batch_id(jobs_file)
    catalog = load_catalog(list(options.catalog_paths) or None)
    root = Path(options.comfy_root).expanduser() if options.comfy_root else None
    if root is not None and not root.is_dir():
        raise ConfigError(
            f"--comfy-root {root} is not a directory",
            hint="pass the ComfyUI folder (the one holding models/)",
        )
    with ComfyClient(comfy_url) as client:
        client.wait_ready(timeout=options.ready_timeout_s)
        resolver = LoraResolver(
            client, store=store, comfy_root=root, catalog=catalog, tokens=tokens
        )
        vram = {m.file: m.min_vram_gb for m in catalog.models.values() if m.min_vram_gb}
        return run_batch(
            jobs,
            client=client,
            store=store,
            batch_id=batch,
            options=options,
            loras=resolver,
            on_event=on_event,
            catalog_vram=vram,
            catalog_files=catalog_file_ids(catalog.models.values()),
        )
