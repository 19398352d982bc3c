"""Batch generation: drive one ComfyUI through a jobs table, keeping its queue full.

``run_batch`` takes validated jobs (:mod:`comfyfleet.generate.jobs`) and, per job:

1. **prepares** it: LoRAs resolved (pulled on demand, :mod:`comfyfleet.generate.loras`), input
   images uploaded (image columns -> ``/upload/image`` -> the returned name), the workflow built and
   checked against ``/object_info`` (once per distinct workflow shape);
2. **submits** it while ``queue_depth`` prompts are in flight, so the next prompt is already
   queued in ComfyUI when one finishes: ComfyUI never waits for us. Waits run concurrently on
   the client's shared WebSocket; when one returns, the next job is submitted at once;
3. **stores** its outputs (``/view``) as ``outputs/<batch>/<job>/<file>``, after clearing what
   an interrupted earlier run may have left there;
4. runs its **video stage** (column ``video``): on this ComfyUI when the video model is listed
   and the GPU has the VRAM, else (or when that fails) on fal.ai; the result row says which;
5. **records** the job in ``outputs/<batch>/results.parquet``, rewritten atomically after
   every finished job. A job counts as done only once all its outputs are stored.

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
import io
import json
import mimetypes
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from comfyfleet.comfy.folders import IMAGE_EXTENSIONS, looks_like_model
from comfyfleet.comfy.workflows import (
    BUILTIN_WORKFLOWS,
    LoraSpec,
    WorkflowSpec,
    apply_loras,
    build_workflow,
)
from comfyfleet.errors import (
    ComfyConnectionError,
    ComfyError,
    ComfyfleetError,
    ComfyTimeout,
    ConfigError,
    FalError,
    StoreError,
    is_transient,
)
from comfyfleet.generate.fal import FalClient, FalSettings, data_uri, result_files
from comfyfleet.generate.jobs import Job
from comfyfleet.generate.loras import LoraResolver, ResolvedLora
from comfyfleet.store.base import ObjectStore

if TYPE_CHECKING:
    from comfyfleet.comfy.client import OutputFile, PromptResult, UploadedImage
    from comfyfleet.sources import Tokens

Status = Literal["ok", "failed", "skipped"]
EventKind = Literal["start", "submitted", "retry", "finished"]

RESULTS_FILE = "results.parquet"
SUMMARY_FILE = "summary.md"
_BATCH_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# VRAM a local video stage needs when the catalog does not say (GiB, fp8/fp16 weights).
DEFAULT_VIDEO_VRAM_GB: Mapping[str, float] = {"wan_i2v": 24.0, "svd_i2v": 12.0}


class ComfyAPI(Protocol):
    """The part of :class:`comfyfleet.comfy.client.ComfyClient` a batch uses."""

    base_url: str

    def system_stats(self) -> dict[str, Any]: ...
    def list_models(self, folder: str) -> list[str]: ...
    def refresh_models(
        self, *, expect: Mapping[str, Iterable[str]] | None = None, timeout: float = 10.0
    ) -> None: ...
    def upload_image(
        self, source: str | Path | bytes, *, overwrite: bool = False
    ) -> UploadedImage: ...
    def check_workflow(self, workflow: Mapping[str, Any]) -> None: ...
    def submit(self, workflow: Mapping[str, Any], *, front: bool = False) -> str: ...
    def wait(
        self, prompt_id: str, *, timeout: float | None = None, on_progress: Any = None
    ) -> PromptResult: ...
    def fetch_output(self, f: OutputFile) -> bytes: ...
    def delete_queued(self, prompt_ids: Iterable[str]) -> None: ...
    def interrupt(self, prompt_id: str | None = None) -> None: ...


@dataclass(frozen=True)
class VideoSettings:
    """How video stages run.

    ``local``: try this ComfyUI first (model listed and ``vram_total`` >= the need);
    ``fal``: fall back to fal.ai (``fal_settings``: key, endpoint, apps per video workflow);
    ``min_vram_gb``: the need per video workflow when the catalog gives none;
    ``prompt_timeout_s``: how long a local video prompt may take;
    ``fal_image``: ``auto`` sends a presigned store URL when the store can make one (else a
    data URI), ``data-uri`` always inlines the image.
    """

    local: bool = True
    fal: bool = True
    fal_settings: FalSettings = field(default_factory=FalSettings)
    min_vram_gb: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_VIDEO_VRAM_GB))
    prompt_timeout_s: float | None = 3600.0
    fal_image: Literal["auto", "data-uri"] = "auto"


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


@dataclass
class JobResult:
    """One row of the results table.

    ``seconds``: ComfyUI execution time of the job's prompts; ``queue_wait``: time between
    submission and the start of execution (ours: submitted -> finished minus executing);
    ``wall_seconds``: first submission to the last output stored; ``video_path``: ``local``,
    ``fal`` or empty; ``attempt``: submissions made (1 = first try).
    """

    id: str
    status: Status
    workflow: str = ""
    seconds: float = 0.0
    queue_wait: float = 0.0
    wall_seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)
    video_path: str = ""
    video_seconds: float = 0.0
    error: str = ""
    prompt_id: str = ""
    attempt: int = 0
    fingerprint: str = ""
    finished_at: str = ""
    loras: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "workflow": self.workflow,
            "seconds": round(self.seconds, 4),
            "queue_wait": round(self.queue_wait, 4),
            "wall_seconds": round(self.wall_seconds, 4),
            "outputs": list(self.outputs),
            "video_path": self.video_path,
            "video_seconds": round(self.video_seconds, 4),
            "error": self.error,
            "prompt_id": self.prompt_id,
            "attempt": self.attempt,
            "fingerprint": self.fingerprint,
            "finished_at": self.finished_at,
            "loras": list(self.loras),
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> JobResult:
        status = str(row.get("status") or "failed")
        return cls(
            id=str(row["id"]),
            status=status if status in ("ok", "failed", "skipped") else "failed",  # type: ignore[arg-type]
            workflow=str(row.get("workflow") or ""),
            seconds=float(row.get("seconds") or 0.0),
            queue_wait=float(row.get("queue_wait") or 0.0),
            wall_seconds=float(row.get("wall_seconds") or 0.0),
            outputs=[str(k) for k in (row.get("outputs") or [])],
            video_path=str(row.get("video_path") or ""),
            video_seconds=float(row.get("video_seconds") or 0.0),
            error=str(row.get("error") or ""),
            prompt_id=str(row.get("prompt_id") or ""),
            attempt=int(row.get("attempt") or 0),
            fingerprint=str(row.get("fingerprint") or ""),
            finished_at=str(row.get("finished_at") or ""),
            loras=[str(x) for x in (row.get("loras") or [])],
        )


@dataclass(frozen=True)
class BatchEvent:
    """Progress of a batch: ``done`` of ``total`` jobs are final (skipped ones included)."""

    kind: EventKind
    job_id: str
    done: int
    total: int
    result: JobResult | None = None
    message: str = ""


@dataclass
class BatchReport:
    """The outcome of ``run_batch``; ``results`` follow the jobs' order."""

    batch_id: str
    store_uri: str
    results: list[JobResult]
    wall_seconds: float
    results_key: str
    summary_key: str
    stopped: str = ""

    @property
    def counts(self) -> dict[str, int]:
        out = {"ok": 0, "failed": 0, "skipped": 0}
        for r in self.results:
            out[r.status] = out.get(r.status, 0) + 1
        return out

    @property
    def ok(self) -> bool:
        return not any(r.status == "failed" for r in self.results)

    @property
    def exec_seconds(self) -> float:
        """ComfyUI execution seconds of the jobs run in this call."""
        return sum(r.seconds for r in self.results if r.status != "skipped")

    @property
    def utilisation(self) -> float:
        """Execution seconds / wall seconds: 1.0 means ComfyUI never idled."""
        return self.exec_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def rows(self) -> list[dict[str, Any]]:
        return [r.row() for r in self.results]

    def table(self) -> list[dict[str, Any]]:
        """Flat rows for artifacts and terminals (outputs joined, fingerprint left out)."""
        rows = []
        for r in self.results:
            rows.append(
                {
                    "id": r.id,
                    "status": r.status,
                    "seconds": round(r.seconds, 2),
                    "queue_wait": round(r.queue_wait, 2),
                    "outputs": ", ".join(k.rsplit("/", 1)[-1] for k in r.outputs),
                    "video": r.video_path,
                    "attempt": r.attempt,
                    "error": r.error,
                }
            )
        return rows

    def markdown(self) -> str:
        c = self.counts
        lines = [
            f"# Batch {self.batch_id}",
            "",
            f"- store: `{self.store_uri}`, results: `{self.results_key}`",
            f"- jobs: {len(self.results)} — ok {c['ok']}, failed {c['failed']}, "
            f"skipped {c['skipped']} (done in an earlier run)",
            f"- wall time: {self.wall_seconds:.2f} s; ComfyUI execution: "
            f"{self.exec_seconds:.2f} s; utilisation {self.utilisation:.1%}",
        ]
        videos = [r for r in self.results if r.video_path]
        if videos:
            local = sum(1 for r in videos if r.video_path == "local")
            lines.append(f"- video stages: {local} local, {len(videos) - local} on fal.ai")
        if self.stopped:
            lines.append(f"- **stopped early**: {self.stopped}")
        failed = [r for r in self.results if r.status == "failed"]
        if failed:
            lines += ["", "## Failed jobs", "", "| job | attempts | error |", "|---|---|---|"]
            for r in failed:
                lines.append(f"| {r.id} | {r.attempt} | {_md_cell(r.error)} |")
        return "\n".join(lines) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:300]


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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


# ---------------------------------------------------------------- results ledger


class ResultsLedger:
    """``outputs/<batch>/results.parquet``: one row per job, rewritten atomically on change.

    Writes are coalesced: while one thread writes, rows recorded meanwhile are picked up by
    its next pass instead of each starting a write of its own. A row recorded just before a
    crash may thus be missing; its job is then simply run again (its folder is cleared
    first), so nothing is lost or duplicated.
    """

    def __init__(self, store: ObjectStore, batch_id: str) -> None:
        self.store = store
        self.key = f"outputs/{batch_id}/{RESULTS_FILE}"
        self._lock = threading.Lock()
        self._writing = threading.Lock()
        self._rows: dict[str, dict[str, Any]] = {}
        self._version = 0
        self._written = 0
        for row in read_results(store, batch_id):
            self._rows[str(row["id"])] = row

    def previous(self, job_id: str) -> JobResult | None:
        row = self._rows.get(job_id)
        return JobResult.from_row(row) if row is not None else None

    def record(self, result: JobResult) -> None:
        with self._lock:
            self._rows[result.id] = result.row()
            self._version += 1
        self.flush(wait=False)

    def flush(self, *, wait: bool = True) -> None:
        """Write until the file holds every recorded row (``wait=False``: unless another
        thread is writing already, which then does it)."""
        while True:
            if not self._writing.acquire(blocking=wait):
                return
            try:
                while True:
                    with self._lock:
                        if self._written == self._version:
                            break
                        version, rows = self._version, list(self._rows.values())
                    self.store.put_bytes(
                        self.key,
                        results_parquet(rows),
                        content_type="application/vnd.apache.parquet",
                    )
                    self._written = version
            finally:
                self._writing.release()
            # A row recorded between our last check and the release found us busy.
            with self._lock:
                if self._written == self._version:
                    return


_RESULT_FIELDS: list[tuple[str, str]] = [
    ("id", "string"),
    ("status", "string"),
    ("workflow", "string"),
    ("seconds", "float64"),
    ("queue_wait", "float64"),
    ("wall_seconds", "float64"),
    ("outputs", "list<string>"),
    ("video_path", "string"),
    ("video_seconds", "float64"),
    ("error", "string"),
    ("prompt_id", "string"),
    ("attempt", "int64"),
    ("fingerprint", "string"),
    ("finished_at", "string"),
    ("loras", "list<string>"),
]


def results_parquet(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """Rows as Parquet bytes with a fixed schema (so an all-empty column keeps its type)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {
        "string": pa.string(),
        "float64": pa.float64(),
        "int64": pa.int64(),
        "list<string>": pa.list_(pa.string()),
    }
    schema = pa.schema([(name, types[kind]) for name, kind in _RESULT_FIELDS])
    table = pa.Table.from_pylist(
        [{k: row.get(k) for k, _ in _RESULT_FIELDS} for row in rows], schema=schema
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def read_results(store: ObjectStore, batch_id: str) -> list[dict[str, Any]]:
    """The rows of a batch's ``results.parquet`` ([] when the batch never ran)."""
    key = f"outputs/{batch_id}/{RESULTS_FILE}"
    if store.exists(key) is None:
        return []
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = store.get_bytes(key)
    try:
        rows: list[dict[str, Any]] = pq.read_table(io.BytesIO(data)).to_pylist()
    except (pa.ArrowInvalid, OSError) as exc:
        raise ConfigError(
            f"{store.uri}/{key} is not a readable results table ({exc})",
            hint="delete it to rerun every job of this batch, or use another --batch-id",
        ) from None
    return [r for r in rows if r.get("id")]


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


def _safe_name(name: str) -> str:
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "output"
    return base[:200]


def _shape_key(workflow: Mapping[str, Any]) -> str:
    """What makes two workflows need the same ``/object_info`` check: node types, links and
    model files, not prompts, seeds or uploaded image names."""
    shape: dict[str, Any] = {}
    for node_id, node in workflow.items():
        if not isinstance(node, Mapping):
            shape[str(node_id)] = repr(node)
            continue
        inputs = node.get("inputs") if isinstance(node.get("inputs"), Mapping) else {}
        kept: dict[str, Any] = {}
        for name, value in (inputs or {}).items():
            if isinstance(value, list) or (isinstance(value, str) and looks_like_model(value)):
                kept[str(name)] = value
            else:
                kept[str(name)] = type(value).__name__
        shape[str(node_id)] = [str(node.get("class_type")), kept]
    return json.dumps(shape, sort_keys=True, default=str)


class _Engine:
    def __init__(
        self,
        *,
        client: ComfyAPI,
        store: ObjectStore,
        batch_id: str,
        queue_depth: int,
        retries: int,
        retry_backoff_s: float,
        prompt_timeout_s: float | None,
        video: VideoSettings,
        loras: LoraResolver,
        ledger: ResultsLedger,
        on_event: Callable[[BatchEvent], None] | None,
        fal: FalClient | None,
        catalog_vram: Mapping[str, float],
        post_workers: int,
        total: int,
        done: int,
    ) -> None:
        self.client = client
        self.store = store
        self.batch_id = batch_id
        self.depth = queue_depth
        self.retries = retries
        self.backoff = retry_backoff_s
        self.prompt_timeout = prompt_timeout_s
        self.video = video
        self.loras = loras
        self.ledger = ledger
        self.on_event = on_event
        self._fal = fal
        self._own_fal = False
        self.catalog_vram = catalog_vram
        self.post_workers = post_workers
        self.total = total
        self.done = done
        self.results: dict[str, JobResult] = {}
        self.stopped = ""

        self._cv = threading.Condition()
        self._ready: deque[_Entry] = deque()
        self._delayed: list[tuple[float, _Entry]] = []
        self._outstanding = 0
        self._hold_until = 0.0
        self._slots = threading.Semaphore(queue_depth)
        self._event_lock = threading.Lock()
        self._memo_lock = threading.Lock()
        self._checked: dict[str, ComfyError | None] = {}
        self._uploads: dict[str, str] = {}
        self._local_video_why: dict[str, str] = {}  # video workflow -> "" (possible) or why not

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
            if self._own_fal and self._fal is not None:
                self._fal.close()

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
        message = _describe(exc)
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

    def _fail(self, entry: _Entry, message: str) -> None:
        started = entry.first_submit
        self._complete(
            JobResult(
                id=entry.job.id,
                status="failed",
                workflow=_workflow_label(entry.job.workflow),
                wall_seconds=time.monotonic() - started if started is not None else 0.0,
                error=message,
                prompt_id=entry.prompt_id,
                attempt=entry.attempt,
                fingerprint=entry.job.fingerprint(),
                finished_at=_now_iso(),
                loras=[lr.name for lr in entry.loras],
            )
        )

    def _complete(self, result: JobResult) -> None:
        try:
            self.ledger.record(result)
        except Exception as exc:  # noqa: BLE001 - without a ledger the batch cannot resume
            with self._cv:
                self.stopped = self.stopped or (f"cannot write {self.ledger.key}: {_describe(exc)}")
            if result.status == "ok":
                result = replace(
                    result,
                    status="failed",
                    error=f"outputs stored but not recorded: {_describe(exc)}",
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
        for column, source in job.image_inputs().items():
            values[column] = self._upload(source)
        entry.loras = self.loras.resolve(job.loras) if job.loras else []
        workflow = build_workflow(job.workflow, values)
        if entry.loras:
            specs = [LoraSpec(lr.name, lr.strength_model, lr.strength_clip) for lr in entry.loras]
            workflow = apply_loras(workflow, specs)
        self._check(workflow)
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

    def _check(self, workflow: Mapping[str, Any]) -> None:
        key = _shape_key(workflow)
        with self._memo_lock:
            if key in self._checked:
                failure = self._checked[key]
                if failure is not None:
                    raise failure
                return
        try:
            self.client.check_workflow(workflow)
        except ComfyError as exc:
            if not is_transient(exc):
                with self._memo_lock:
                    self._checked[key] = exc
            raise
        with self._memo_lock:
            self._checked[key] = None

    # ------------------------------------------------------------ finishing

    def _finish(self, entry: _Entry, result: PromptResult, finished: float) -> None:
        job = entry.job
        try:
            keys = self._store_outputs(job, result.outputs, clean=True)
            video_keys: list[str] = []
            video_path, video_exec, video_wall = "", 0.0, 0.0
            if job.video:
                video_path, video_keys, video_exec, video_wall = self._video_stage(
                    job, result.outputs, keys
                )
        except Exception as exc:  # noqa: BLE001
            self._retry_or_fail(entry, exc)
            return
        waited = finished - entry.submitted
        self._complete(
            JobResult(
                id=job.id,
                status="ok",
                workflow=_workflow_label(job.workflow),
                seconds=result.seconds + video_exec,
                queue_wait=max(0.0, waited - result.seconds),
                wall_seconds=time.monotonic() - (entry.first_submit or entry.submitted),
                outputs=keys + video_keys,
                video_path=video_path,
                video_seconds=video_wall,
                prompt_id=result.prompt_id,
                attempt=entry.attempt,
                fingerprint=job.fingerprint(),
                finished_at=_now_iso(),
                loras=[lr.name for lr in entry.loras],
            )
        )

    def _prefix(self, job: Job) -> str:
        return f"outputs/{self.batch_id}/{job.id}/"

    def _store_outputs(self, job: Job, outputs: Sequence[OutputFile], *, clean: bool) -> list[str]:
        prefix = self._prefix(job)
        if clean:
            # Leftovers of an interrupted earlier run of this job: never mixed with new ones.
            for info in list(self.store.list(prefix)):
                self.store.delete(info.key)
        chosen = [o for o in outputs if o.type == "output"] or list(outputs)
        keys: list[str] = []
        used: set[str] = set()
        for out in chosen:
            name = _safe_name(out.filename)
            if name in used:
                name = _safe_name(f"{out.node_id}_{out.filename}")
            used.add(name)
            data = self.client.fetch_output(out)
            key = prefix + name
            self.store.put_bytes(key, data, content_type=mimetypes.guess_type(name)[0])
            keys.append(key)
        return keys

    # ------------------------------------------------------------ video stage

    def _video_stage(
        self, job: Job, outputs: Sequence[OutputFile], keys: Sequence[str]
    ) -> tuple[str, list[str], float, float]:
        """(path, keys, ComfyUI seconds, wall seconds) of the job's video stage."""
        assert job.video is not None
        began = time.monotonic()
        chosen = [o for o in outputs if o.type == "output"] or list(outputs)
        index = next(
            (
                n
                for n, o in enumerate(chosen)
                if not o.is_video and o.filename.lower().endswith(IMAGE_EXTENSIONS)
            ),
            None,
        )
        if index is None or index >= len(keys):
            raise ComfyError(
                f"job {job.id}: video stage {job.video} needs an image output, the workflow "
                "produced none",
                hint="give the job a workflow that saves an image (SaveImage)",
            )
        image_key = keys[index]
        image_bytes = self.store.get_bytes(image_key)
        reasons: list[str] = []
        if self.video.local:
            why_not = self._local_video_possible(job.video)
            if not why_not:
                try:
                    video_keys, exec_seconds = self._local_video(job, image_bytes)
                    return "local", video_keys, exec_seconds, time.monotonic() - began
                except ComfyError as exc:
                    reasons.append(f"local {job.video} failed: {_describe(exc)}")
            else:
                reasons.append(why_not)
        else:
            reasons.append("local video stages are off")
        if not self.video.fal:
            raise ComfyError(
                f"job {job.id}: video stage {job.video} cannot run: {'; '.join(reasons)}",
                hint="turn on the fal.ai fallback (--fal-fallback with FAL_KEY set), or put the "
                "video model on this ComfyUI",
            )
        try:
            video_keys = self._fal_video(job, image_key, image_bytes)
        except FalError as exc:
            raise FalError(
                f"job {job.id}: video stage {job.video} failed locally and on fal.ai: "
                f"{'; '.join(reasons)}; fal.ai: {exc.message}",
                hint=exc.hint,
            ) from exc
        return "fal", video_keys, 0.0, time.monotonic() - began

    def _local_video_possible(self, name: str) -> str:
        """'' when this ComfyUI can run video workflow ``name``, else why not (cached)."""
        with self._memo_lock:
            if name in self._local_video_why:
                return self._local_video_why[name]
        reason = self._why_no_local_video(name)
        with self._memo_lock:
            self._local_video_why[name] = reason
        return reason

    def _why_no_local_video(self, name: str) -> str:
        spec = BUILTIN_WORKFLOWS.get(name)
        if spec is None:
            return f"{name} is not a built-in workflow"
        values = {"image": "input.png"}
        try:
            missing = []
            listed: dict[str, set[str]] = {}
            for folder, file in _required_models(spec, values):
                if folder not in listed:
                    listed[folder] = set(self.client.list_models(folder))
                if file not in listed[folder]:
                    missing.append(f"{folder}/{file}")
            if missing:
                return f"{name} needs {', '.join(missing)}, which this ComfyUI does not list"
            need = self._vram_need(name, spec, values)
            have = _vram_total_gb(self.client.system_stats())
            if need > 0 and have is None:
                return f"{name} needs {need:g} GiB of VRAM, this ComfyUI reports no GPU"
            if need > 0 and have is not None and have < need:
                return f"{name} needs {need:g} GiB of VRAM, this GPU has {have:.1f} GiB"
        except ComfyError as exc:
            return f"cannot ask ComfyUI about {name}: {_describe(exc)}"
        return ""

    def _vram_need(self, name: str, spec: WorkflowSpec, values: Mapping[str, Any]) -> float:
        files = [file for _, file in _required_models(spec, values)]
        from_catalog = [self.catalog_vram[f] for f in files if f in self.catalog_vram]
        if from_catalog:
            return max(from_catalog)
        return float(self.video.min_vram_gb.get(name, 0.0))

    def _local_video(self, job: Job, image_bytes: bytes) -> tuple[list[str], float]:
        assert job.video is not None
        uploaded = self.client.upload_image(image_bytes)
        values: dict[str, Any] = {
            "image": uploaded.ref,
            "filename_prefix": f"comfyfleet/{self.batch_id}/{job.id}_video",
        }
        for name in ("prompt", "negative", "seed"):
            value = getattr(job, name)
            if value is not None:
                values[name] = value
        workflow = build_workflow(job.video, values)
        self._check(workflow)
        prompt_id = self.client.submit(workflow)
        result = self.client.wait(prompt_id, timeout=self.video.prompt_timeout_s)
        videos = [o for o in result.outputs if o.is_video] or list(result.outputs)
        return self._store_outputs(job, videos, clean=False), result.seconds

    def _fal_client(self) -> FalClient:
        with self._memo_lock:
            if self._fal is None:
                self._fal = FalClient(self.video.fal_settings)
                self._own_fal = True
            return self._fal

    def _fal_video(self, job: Job, image_key: str, image_bytes: bytes) -> list[str]:
        assert job.video is not None
        fal = self._fal_client()
        app = self.video.fal_settings.apps.get(job.video)
        if not app:
            raise FalError(
                f"no fal.ai app is configured for video workflow {job.video}",
                hint="add it to FalSettings.apps (video workflow -> fal app id)",
            )
        image_url = None
        if self.video.fal_image == "auto":
            image_url = self.store.presign_get(image_key, expires_s=3600)
        if image_url is None:
            mime = mimetypes.guess_type(image_key)[0] or "image/png"
            image_url = data_uri(image_bytes, mime)
        payload: dict[str, Any] = {"image_url": image_url}
        if job.prompt:
            payload["prompt"] = job.prompt
        if job.negative:
            payload["negative_prompt"] = job.negative
        if job.seed is not None:
            payload["seed"] = job.seed
        attempt = 0
        while True:
            attempt += 1
            try:
                _, result = fal.run(app, payload)
                break
            except FalError as exc:
                if not is_transient(exc) or attempt > self.retries:
                    raise
                time.sleep(self.backoff * 2 ** (attempt - 1))
        files = result_files(result)
        if not files:
            raise FalError(
                f"fal.ai app {app} answered without a file for job {job.id}",
                hint="check the app's output schema; a 'video' {url} is expected",
            )
        keys = []
        prefix = self._prefix(job)
        for n, file in enumerate(files):
            data = fal.download(file)
            ext = mimetypes.guess_extension(file.content_type or "") or ".mp4"
            name = _safe_name(f"fal_{file.file_name or f'video{ext}'}")
            if n:
                name = _safe_name(f"fal_{n}_{file.file_name or f'video{ext}'}")
            key = prefix + name
            self.store.put_bytes(
                key, data, content_type=file.content_type or mimetypes.guess_type(name)[0]
            )
            keys.append(key)
        return keys


def _not_run(entry: _Entry, stopped: str) -> str:
    if entry.last_error:
        return f"{entry.last_error}; not retried: {stopped}"
    return f"not run: {stopped}"


def _import_parquet() -> None:
    import pyarrow.parquet  # noqa: F401


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ComfyfleetError):
        return exc.one_line()
    return f"{type(exc).__name__}: {exc}"


def _workflow_label(workflow: str) -> str:
    return Path(workflow).name if ("/" in workflow or "\\" in workflow) else workflow


def _required_models(spec: WorkflowSpec, values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(folder, file) pairs a built-in workflow needs for ``values``."""
    return [(str(f), str(n)) for f, n in spec.required_models(values)]


def _vram_total_gb(stats: Mapping[str, Any]) -> float | None:
    devices = stats.get("devices")
    if not isinstance(devices, list):
        return None
    totals = [
        float(d["vram_total"])
        for d in devices
        if isinstance(d, Mapping)
        and isinstance(d.get("vram_total"), (int, float))
        and str(d.get("type", "")).lower() != "cpu"
    ]
    return max(totals) / 2**30 if totals else None


# ---------------------------------------------------------------- entry point


def run_batch(
    jobs: Sequence[Job],
    *,
    client: ComfyAPI,
    store: ObjectStore,
    batch_id: str,
    options: BatchOptions = DEFAULT_OPTIONS,
    loras: LoraResolver | None = None,
    on_event: Callable[[BatchEvent], None] | None = None,
    fal: FalClient | None = None,
    catalog_vram: Mapping[str, float] | None = None,
) -> BatchReport:
    """Run ``jobs`` on ComfyUI (see the module docstring) and return the report.

    ``catalog_vram`` maps model file names to the VRAM (GiB) they need, for the local video
    decision (``{m.file: m.min_vram_gb for m in catalog.models.values()}``).
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
    engine = _Engine(
        client=client,
        store=store,
        batch_id=batch_id,
        queue_depth=options.queue_depth,
        retries=options.retries,
        retry_backoff_s=options.retry_backoff_s,
        prompt_timeout_s=options.prompt_timeout_s,
        video=options.video,
        loras=loras or LoraResolver(client, store=store),
        ledger=ledger,
        on_event=on_event,
        fal=fal,
        catalog_vram=catalog_vram or {},
        post_workers=options.post_workers,
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
        )
