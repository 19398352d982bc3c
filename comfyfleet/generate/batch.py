"""Batch generation: drive one or many ComfyUIs through a jobs table, keeping every queue full.

``run_batch`` takes validated jobs (:mod:`comfyfleet.generate.jobs`) and one ComfyUI
(``client=``) or many (``endpoints=``; one ComfyUI is simply the one-endpoint case of the same
engine). Per job:

1. **prepares** it for the endpoint that takes it: LoRAs resolved (pulled on demand,
   :mod:`comfyfleet.generate.loras`), input images uploaded there (image columns ->
   ``/upload/image`` -> the returned name), the workflow built and checked against that
   ComfyUI before submission (:mod:`comfyfleet.generate.preflight`);
2. **submits** it: every endpoint has ``queue_depth`` feeder threads, each taking the next
   job from one shared queue, submitting it and following it to its end. So each ComfyUI has
   ``queue_depth`` prompts queued and never waits for us, and a faster one simply takes more
   jobs (work stealing, no fixed split);
3. **stores** its outputs (``/view``) as ``outputs/<batch>/<job>/<file>``, after clearing what
   an interrupted or abandoned earlier attempt may have left there
   (:mod:`comfyfleet.generate.results`);
4. runs its **video stage** (column ``video``, :mod:`comfyfleet.generate.video`): on the
   ComfyUI that ran the job when the video model is listed and the GPU has the VRAM, else (or
   when that fails) on fal.ai; the result row says which;
5. **records** the job in ``outputs/<batch>/results.parquet`` (one row per job, with the
   ``endpoint`` that ran it), rewritten atomically after every finished job. A job counts as
   done only once all its outputs are stored.

Rerunning a batch id reads ``results.parquet`` and skips every job recorded ``ok`` whose
definition (fingerprint) is unchanged and whose outputs are all still there: a batch killed
midway loses nothing and duplicates nothing.

Failures: a connection error after which the endpoint does not answer ``/system_stats``
either is the endpoint's fault, not the job's: the job goes back to the front of the shared
queue for any endpoint that answers (its retries untouched), and the endpoint takes no new job
until a probe answers again. An endpoint down for ``endpoint_timeout_s``, or refusing our
token, is dropped. Only one attempt of a job is ever alive (a job is in the queue, in one
feeder or in one post worker), and outputs are fetched only from the attempt that finished, so
a job re-run elsewhere leaves no second copy. When every endpoint is dropped the batch stops:
the jobs not yet run are reported failed ("not run") and a rerun resumes them. Other
connection drops and timeouts (``TransientError``) resubmit the job up to ``retries`` times
with exponential backoff; validation and execution errors fail the job at once and the batch
goes on.

Endpoints may **join a running batch** (``joining=``, an :class:`EndpointQueue`): a fleet's
instances become ready one by one, and each starts taking jobs the moment it joins instead of
idling until the slowest is ready. A joining endpoint gets the same per-endpoint setup as the
first ones (LoRA resolver, pre-submit check, video stage: the check runs on it before each of
its jobs is submitted), then its feeders start and steal from the shared queue. While the
queue is open the batch never ends as "every endpoint stopped answering": the jobs wait for
the next endpoint. Once it is closed, the usual rule applies, and a batch no endpoint ever
joined stops with every job "not run".

Threads: ``queue_depth`` feeders per endpoint prepare, submit and wait; ``post_workers``
threads fetch, store, run video stages and record; one thread takes joining endpoints; the
caller's thread waits for the end.
``on_event`` is called from all of them, serialised.
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
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from comfyfleet.comfy.workflows import LoraSpec, apply_loras, build_workflow
from comfyfleet.errors import (
    ComfyAuthError,
    ComfyConnectionError,
    ComfyfleetError,
    ComfyPartialPrompt,
    ComfyTimeout,
    ConfigError,
    StoreError,
    is_transient,
)
from comfyfleet.generate.api import ComfyBatchAPI
from comfyfleet.generate.endpoints import ComfyEndpoint, check_unique
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
    from comfyfleet.comfy.client import ComfyClient
    from comfyfleet.comfy.tracking import PromptResult
    from comfyfleet.sources import Tokens

__all__ = [
    "DEFAULT_OPTIONS",
    "BatchEndpoint",
    "BatchEvent",
    "ComfyEndpoint",
    "BatchOptions",
    "BatchReport",
    "ComfyBatchAPI",
    "EndpointQueue",
    "JobResult",
    "VideoSettings",
    "check_batch_id",
    "default_batch_id",
    "generate_from_file",
    "read_results",
    "run_batch",
]

EventKind = Literal["start", "submitted", "retry", "finished", "joined"]
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
    backoff ``retry_backoff_s``·2^n (a job handed on because its ComfyUI stopped answering
    spends none). The engine is the one owner of job retries, from the CLI
    and from the flow alike (the flow's task does not retry the batch: errors.py's rule);
    ``prompt_timeout_s``: how long one prompt may take; ``post_workers``: threads that fetch
    and store outputs; ``ready_timeout_s``: how long ComfyUI may take to answer at all;
    ``endpoint_timeout_s``: how long a ComfyUI may stay unreachable during the batch before
    it is dropped (its jobs run on the others; with none left the batch stops);
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
    endpoint_timeout_s: float = 30.0
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
        if self.endpoint_timeout_s <= 0:
            raise ConfigError(f"endpoint timeout {self.endpoint_timeout_s} must be positive")


DEFAULT_OPTIONS = BatchOptions()


@dataclass(frozen=True)
class BatchEvent:
    """Progress of a batch: ``done`` of ``total`` jobs are final (skipped ones included);
    ``endpoint`` names the ComfyUI of a ``submitted``/``retry``/``joined`` event (``joined``:
    an endpoint joined the running batch, or was refused, as ``message`` says)."""

    kind: EventKind
    job_id: str
    done: int
    total: int
    result: JobResult | None = None
    message: str = ""
    endpoint: str = ""


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


T = TypeVar("T")


class EndpointQueue(Generic[T]):
    """Endpoints joining a running batch: a thread-safe queue its producer ``close``s once no
    more will come (a fleet: when every instance is ready, failed or past its ready timeout).

    The producer ``put``s each endpoint as it becomes ready; the batch takes them with
    :meth:`get`. Until the queue is closed the batch keeps its jobs for endpoints still to
    come, even when every endpoint it has stopped answering.
    """

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._items: deque[T] = deque()
        self._closed = False

    def put(self, item: T) -> bool:
        """Queue ``item``; False (and dropped) once the queue is closed."""
        with self._cv:
            if self._closed:
                return False
            self._items.append(item)
            self._cv.notify_all()
            return True

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    @property
    def exhausted(self) -> bool:
        """Closed and empty: nothing will ever come out of it again."""
        with self._cv:
            return self._closed and not self._items

    def get(self, timeout: float | None = None) -> T | None:
        """The next endpoint, or None when none came within ``timeout`` or it is exhausted."""
        with self._cv:
            self._cv.wait_for(lambda: self._items or self._closed, timeout)
            return self._items.popleft() if self._items else None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until an endpoint is queued (True) or the queue is exhausted (False)."""
        with self._cv:
            self._cv.wait_for(lambda: self._items or self._closed, timeout)
            return bool(self._items)

    def take_all(self) -> list[T]:
        """Every endpoint queued now, without waiting."""
        with self._cv:
            items = list(self._items)
            self._items.clear()
            return items


@dataclass
class BatchEndpoint:
    """One ComfyUI a batch runs on: its client, the name its rows carry in the ``endpoint``
    column (default: the client's URL) and, optionally, its LoRA resolver."""

    client: ComfyBatchAPI
    name: str = ""
    loras: LoraResolver | None = None


class _Endpoint:
    """One endpoint while the batch runs: what is prepared per ComfyUI (uploads, LoRAs,
    the pre-submit check, the video stage) and its health.

    ``down_since`` is set when a connection error came with a failed probe: the endpoint
    takes no new job until a probe answers again; ``dropped`` (the reason) once it stayed
    down for ``endpoint_timeout_s`` or refused our token.
    """

    def __init__(self, spec: BatchEndpoint, video: VideoStage, checker: WorkflowChecker) -> None:
        self.client = spec.client
        self.name = spec.name or spec.client.base_url
        self.loras = spec.loras or LoraResolver(spec.client)
        self.video = video
        self.checker = checker
        self.uploads: dict[str, str] = {}
        self.upload_locks: dict[str, threading.Lock] = {}
        self.down_since: float | None = None
        self.next_probe = 0.0
        self.probing = False
        self.dropped = ""


@dataclass
class _Entry:
    job: Job
    index: int
    attempt: int = 0
    retried: int = 0
    moves: int = 0
    prepared: tuple[str, dict[str, Any]] | None = None
    loras: list[ResolvedLora] = field(default_factory=list)
    prompt_id: str = ""
    endpoint: str = ""
    submitted: float = 0.0
    first_submit: float | None = None
    last_error: str = ""
    dirty: bool = False  # its folder holds files of an earlier, interrupted run


class _Engine:
    """The scheduler of one batch run over one or many ComfyUIs (see the module docstring).

    One shared queue of jobs; every endpoint has ``queue_depth`` feeder threads, each taking
    the next job, submitting it to its ComfyUI and following it to the end, so each queue
    stays full and a faster endpoint simply takes more jobs (work stealing, no fixed split).
    Finished prompts go to ``post_workers`` threads that store, run video stages and record.
    Endpoints from ``joining`` are set up with ``make`` and added while the batch runs.
    """

    def __init__(
        self,
        *,
        endpoints: Sequence[_Endpoint],
        joining: EndpointQueue[BatchEndpoint] | None = None,
        make: Callable[[BatchEndpoint], _Endpoint] | None = None,
        store: ObjectStore,
        batch_id: str,
        options: BatchOptions,
        ledger: ResultsLedger,
        on_event: Callable[[BatchEvent], None] | None,
        total: int,
        done: int,
    ) -> None:
        self.endpoints: list[_Endpoint] = []  # grows as endpoints join (under _cv)
        self._initial = list(endpoints)
        self._joining = joining
        self._make = make
        # More endpoints may come: the batch must not end for want of one meanwhile.
        self._open = joining is not None
        self._finished = False
        self._feeders: list[threading.Thread] = []
        self.store = store
        self.batch_id = batch_id
        self.depth = options.queue_depth
        self.retries = options.retries
        self.backoff = options.retry_backoff_s
        self.prompt_timeout = options.prompt_timeout_s
        self.post_workers = options.post_workers
        self.endpoint_timeout = options.endpoint_timeout_s
        self.probe_interval = min(max(options.retry_backoff_s, 0.05), 2.0)
        # A job handed on because its endpoint went down does not spend its retries, but
        # a flapping endpoint must not bounce it forever.
        self.max_moves = max(3, 2 * len(self._initial))
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
        self._event_lock = threading.Lock()

    # ------------------------------------------------------------ plumbing

    def emit(
        self,
        kind: EventKind,
        job_id: str,
        result: JobResult | None = None,
        message: str = "",
        endpoint: str = "",
    ) -> None:
        if self.on_event is None:
            return
        with self._event_lock:
            self.on_event(
                BatchEvent(kind, job_id, self.done, self.total, result, message, endpoint)
            )

    def run(self, entries: Sequence[_Entry]) -> None:
        with self._cv:
            self._ready.extend(entries)
            self._outstanding = len(entries)
        self._post = ThreadPoolExecutor(self.post_workers, thread_name_prefix="comfyfleet-post")
        joiner = None
        try:
            for ep in self._initial:
                self.add_endpoint(ep, joined=False)
            if self._joining is not None:
                joiner = threading.Thread(
                    target=self._take_joining, name="comfyfleet-join", daemon=True
                )
                joiner.start()
            else:
                self._source_closed()  # nothing will join: the usual end condition
            self._drain_when_stopped()
        finally:
            with self._cv:
                self._finished = True
                self._cv.notify_all()
            if joiner is not None:
                joiner.join()
            with self._cv:
                feeders = list(self._feeders)
            for thread in feeders:
                thread.join()
            self._post.shutdown(wait=True)
            for ep in self.endpoints:
                ep.video.close()

    def add_endpoint(self, ep: _Endpoint, *, joined: bool = True) -> bool:
        """Start ``ep``'s feeders: from now on it takes jobs from the shared queue. False
        when the batch is over or an endpoint of that name is in it already."""
        with self._cv:
            refused = ""
            if self._finished or self.stopped:
                refused = "the batch is over"
            elif any(e.name == ep.name for e in self.endpoints):
                refused = "an endpoint of that name is in the batch already"
            else:
                self.endpoints.append(ep)
                # Moves are bounded per endpoint count (see __init__): a job bounced off
                # the first endpoints must still reach one that joins later.
                self.max_moves = max(self.max_moves, 2 * len(self.endpoints))
                n = len(self.endpoints) - 1
                threads = [
                    threading.Thread(
                        target=self._feed,
                        args=(ep,),
                        name=f"comfyfleet-feed-{n}-{slot}",
                        daemon=True,
                    )
                    for slot in range(self.depth)
                ]
                self._feeders.extend(threads)
                for thread in threads:
                    thread.start()
                self._cv.notify_all()
        if refused:
            ep.video.close()
            self.emit("joined", "", message=f"refused: {refused}", endpoint=ep.name)
            return False
        if joined:
            self.emit("joined", "", message="joined the running batch", endpoint=ep.name)
        return True

    def _take_joining(self) -> None:
        """Add each endpoint of ``joining`` as it comes, until it is exhausted or the batch
        is over; then no more can come."""
        assert self._joining is not None and self._make is not None
        try:
            while True:
                with self._cv:
                    if self._finished or self.stopped:
                        return
                spec = self._joining.get(timeout=0.1)
                if spec is None:
                    if self._joining.exhausted:
                        return
                    continue
                try:
                    ep = self._make(spec)
                except Exception as exc:  # noqa: BLE001 - one bad joiner must not end the batch
                    name = spec.name or spec.client.base_url
                    self.emit("joined", "", message=f"refused: {describe(exc)}", endpoint=name)
                    continue
                self.add_endpoint(ep)
        finally:
            self._source_closed()

    def _source_closed(self) -> None:
        with self._cv:
            self._open = False
            if not self.stopped and all(e.dropped for e in self.endpoints):
                self.stopped = self._all_gone()
            self._cv.notify_all()

    def _all_gone(self) -> str:
        """Why the batch stops when no endpoint is left and none can join."""
        if not self.endpoints:
            return "no ComfyUI joined the batch; rerun the same batch id to resume"
        if len(self.endpoints) == 1:
            ep = self.endpoints[0]
            return (
                f"ComfyUI at {ep.client.base_url} stopped answering ({ep.dropped}); "
                "rerun the same batch id to resume"
            )
        return (
            f"every ComfyUI stopped answering ({len(self.endpoints)} endpoints); "
            "rerun the same batch id to resume"
        )

    def _drain_when_stopped(self) -> None:
        """Wait for the end; once every endpoint is gone, fail the jobs left as 'not run'."""
        with self._cv:
            while self._outstanding > 0:
                if self.stopped and (self._ready or self._delayed):
                    dropped = list(self._ready) + [e for _, e in self._delayed]
                    self._ready.clear()
                    self._delayed.clear()
                    self._cv.release()
                    try:
                        for entry in dropped:
                            self._fail(entry, _not_run(entry, self.stopped))
                    finally:
                        self._cv.acquire()
                    continue
                self._cv.wait(1.0)

    def _feed(self, ep: _Endpoint) -> None:
        while True:
            entry = self._take(ep)
            if entry is None:
                return
            self._attempt(ep, entry)

    def _promote_due(self, now: float) -> None:
        due = [d for d in self._delayed if d[0] <= now]
        if due:
            self._delayed = [d for d in self._delayed if d[0] > now]
            # Retries go first: their outputs are what the batch is waiting for.
            for _, entry in reversed(sorted(due, key=lambda d: d[0])):
                self._ready.appendleft(entry)

    def _take(self, ep: _Endpoint) -> _Entry | None:
        """The next job for ``ep`` (None: the batch is over for it). Called by its feeders;
        while ``ep`` is down one of them probes it and the others wait."""
        with self._cv:
            while True:
                if self._outstanding == 0 or self.stopped or ep.dropped or self._finished:
                    return None
                now = time.monotonic()
                self._promote_due(now)
                if ep.down_since is not None:
                    if not ep.probing and now >= ep.next_probe:
                        self._probe_locked(ep)
                        continue
                    self._cv.wait(max(ep.next_probe - now, 0.01))
                    continue
                if self._ready:
                    return self._ready.popleft()
                timeout = None
                if self._delayed:
                    timeout = max(0.0, min(d[0] for d in self._delayed) - now)
                self._cv.wait(timeout)

    def _probe_locked(self, ep: _Endpoint) -> None:
        """Probe a down endpoint (lock released meanwhile): back up, or dropped once it has
        been down for ``endpoint_timeout_s``."""
        ep.probing = True
        self._cv.release()
        try:
            answers = self._answers(ep)
        finally:
            self._cv.acquire()
            ep.probing = False
        now = time.monotonic()
        ep.next_probe = now + self.probe_interval
        if answers:
            ep.down_since = None
        elif ep.down_since is not None and now - ep.down_since >= self.endpoint_timeout:
            self._drop_locked(ep, f"not answering for {now - ep.down_since:.0f} s")
        self._cv.notify_all()

    def _answers(self, ep: _Endpoint) -> bool:
        try:
            ep.client.system_stats()
        except ComfyfleetError:
            return False
        return True

    def _mark_down(self, ep: _Endpoint) -> None:
        with self._cv:
            if ep.down_since is None:
                ep.down_since = time.monotonic()
                ep.next_probe = ep.down_since + self.probe_interval
            self._cv.notify_all()

    def _drop_locked(self, ep: _Endpoint, why: str) -> None:
        if ep.dropped:
            return
        ep.dropped = why
        # While endpoints may still join, the jobs wait for them instead.
        if all(e.dropped for e in self.endpoints) and not self._open and not self.stopped:
            self.stopped = self._all_gone()
        self._cv.notify_all()

    def _requeue(self, entry: _Entry, delay: float = 0.0) -> None:
        with self._cv:
            if not self.stopped:
                if delay > 0:
                    self._delayed.append((time.monotonic() + delay, entry))
                else:
                    self._ready.appendleft(entry)
                self._cv.notify_all()
                return
        self._fail(entry, _not_run(entry, self.stopped))

    # ------------------------------------------------------------ one attempt

    def _attempt(self, ep: _Endpoint, entry: _Entry) -> None:
        """Prepare ``entry`` for ``ep`` (if not yet), submit it, follow it to its end."""
        entry.attempt += 1
        entry.endpoint = ep.name
        try:
            if entry.prepared is None or entry.prepared[0] != ep.name:
                entry.prepared = (ep.name, self._prepare(ep, entry))
            submitted = time.monotonic()
            entry.prompt_id = ep.client.submit(entry.prepared[1])
        except ComfyPartialPrompt as exc:
            # ComfyUI queued part of it despite the preflight; the client cancelled it.
            entry.prompt_id = exc.prompt_id
            self._post.submit(self._collect_partial, ep, entry, exc)
            return
        except Exception as exc:  # noqa: BLE001 - every failure becomes the job's row
            self._retry_or_fail(ep, entry, exc)
            return
        entry.submitted = submitted
        if entry.first_submit is None:
            entry.first_submit = submitted
        self.emit("submitted", entry.job.id, message=entry.prompt_id, endpoint=ep.name)
        try:
            result = ep.client.wait(entry.prompt_id, timeout=self.prompt_timeout)
        except Exception as exc:  # noqa: BLE001
            if isinstance(exc, ComfyTimeout):
                self._abandon(ep, entry.prompt_id)
            self._retry_or_fail(ep, entry, exc)
            return
        self._post.submit(self._finish, ep, entry, result, time.monotonic())

    def _abandon(self, ep: _Endpoint, prompt_id: str) -> None:
        # A prompt we stopped waiting for must not run on (or run twice after a retry).
        with contextlib.suppress(ComfyfleetError):
            ep.client.delete_queued([prompt_id])
            ep.client.interrupt(prompt_id)

    def _retry_or_fail(self, ep: _Endpoint, entry: _Entry, exc: BaseException) -> None:
        """What a failed attempt leads to. An endpoint that does not answer (or refuses our
        token) is the endpoint's fault: the job goes back to the shared queue at once for
        any endpoint that answers, without spending its retries. Other transient errors are
        retried ``retries`` times with backoff; anything else fails the job."""
        message = describe(exc)
        entry.last_error = message
        endpoint_gone = isinstance(exc, ComfyAuthError) or (
            isinstance(exc, ComfyConnectionError) and not self._answers(ep)
        )
        if endpoint_gone and not self.stopped and entry.moves < self.max_moves:
            if isinstance(exc, ComfyAuthError):
                with self._cv:
                    self._drop_locked(ep, "refused the token")
            else:
                self._mark_down(ep)
            entry.moves += 1
            self.emit(
                "retry",
                entry.job.id,
                message=f"attempt {entry.attempt} on {ep.name}: {message}; "
                "back to the queue (that ComfyUI is not answering)",
                endpoint=ep.name,
            )
            self._requeue(entry)
            return
        if is_transient(exc) and entry.retried < self.retries and not self.stopped:
            entry.retried += 1
            self.emit(
                "retry",
                entry.job.id,
                message=f"attempt {entry.attempt}: {message}",
                endpoint=ep.name,
            )
            self._requeue(entry, self.backoff * 2 ** (entry.retried - 1))
            return
        self._fail(entry, message)

    def _collect_partial(self, ep: _Endpoint, entry: _Entry, exc: ComfyPartialPrompt) -> None:
        """Fail a job whose prompt ComfyUI queued only in part, keeping its prompt id and
        storing whatever the prompt wrote before the cancel took effect (no orphans)."""
        message = describe(exc)
        keys: list[str] = []
        try:
            files = ep.client.settle(exc.prompt_id)
            prefix = job_prefix(self.batch_id, entry.job.id)
            keys = store_outputs(ep.client, self.store, prefix, files, clean=True)
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
                endpoint=entry.endpoint,
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
        self.emit("finished", result.id, result, endpoint=result.endpoint)

    # ------------------------------------------------------------ preparing

    def _prepare(self, ep: _Endpoint, entry: _Entry) -> dict[str, Any]:
        """The job's workflow for ``ep``: images uploaded there, LoRAs resolved there,
        checked against its node list."""
        job = entry.job
        values = job.values()
        # ComfyUI's own copy lands in output/comfyfleet/<batch>/<job>_NNNNN_.png.
        values.setdefault("filename_prefix", f"comfyfleet/{self.batch_id}/{job.id}")
        values.setdefault("id", job.id)  # a column like any other: "{{id}}" works
        for column, source in job.image_inputs().items():
            values[column] = self._upload(ep, source)
        entry.loras = ep.loras.resolve(job.loras) if job.loras else []
        workflow = build_workflow(job.workflow, values)
        if entry.loras:
            specs = [LoraSpec(lr.name, lr.strength_model, lr.strength_clip) for lr in entry.loras]
            workflow = apply_loras(workflow, specs)
        ep.checker.check(workflow)
        return workflow

    def _upload(self, ep: _Endpoint, source: str) -> str:
        # One upload per image and endpoint, also when two feeders need it at once.
        with self._cv:
            lock = ep.upload_locks.setdefault(source, threading.Lock())
        with lock:
            known = ep.uploads.get(source)
            if known is not None:
                return known
            target: str | Path = (
                source if source.startswith(("http://", "https://")) else Path(source)
            )
            ref = ep.client.upload_image(target).ref
            ep.uploads[source] = ref
            return ref

    # ------------------------------------------------------------ finishing

    def _finish(self, ep: _Endpoint, entry: _Entry, result: PromptResult, finished: float) -> None:
        job = entry.job
        try:
            prefix = job_prefix(self.batch_id, job.id)
            # What an abandoned attempt (an earlier run, an endpoint lost midway, a failed
            # store) left in the job's folder is removed before this attempt's files land;
            # a first attempt in a clean folder skips the listing.
            clean = entry.dirty or entry.attempt > 1
            keys = store_outputs(ep.client, self.store, prefix, result.outputs, clean=clean)
            video = ep.video.run(job, result.outputs, keys) if job.video else None
            video_keys = video.keys if video else []
        except Exception as exc:  # noqa: BLE001
            self._retry_or_fail(ep, entry, exc)
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
                endpoint=ep.name,
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
    One listing of the batch's folder answers both that and which jobs to run have files
    left by an interrupted earlier run (their folder is cleared before new outputs land),
    instead of a request per output and a listing per job.
    """
    prefix = f"outputs/{ledger.batch_id}/"
    stored = {info.key for info in store.list(prefix)}
    # outputs/<batch>/<job id>/<file>: the jobs with a folder
    with_files = {
        key[len(prefix) :].partition("/")[0] for key in stored if "/" in key[len(prefix) :]
    }
    skipped: dict[str, JobResult] = {}
    todo: list[_Entry] = []
    for index, job in enumerate(jobs):
        prev = ledger.previous(job.id)
        if (
            prev is not None
            and prev.status == "ok"
            and prev.fingerprint == job.fingerprint()
            and all(key in stored for key in prev.outputs)
        ):
            skipped[job.id] = replace(prev, status="skipped")
        else:
            todo.append(_Entry(job, index, dirty=job.id in with_files))
    return skipped, todo


def _endpoint_specs(
    client: ComfyBatchAPI | None,
    endpoints: Sequence[BatchEndpoint] | None,
    loras: LoraResolver | None,
    joining: bool = False,
) -> list[BatchEndpoint]:
    if (client is None) == (endpoints is None):
        raise ConfigError(
            "run_batch needs either client= (one ComfyUI) or endpoints= (one or many)",
            hint="pass exactly one of them",
        )
    specs = [BatchEndpoint(client, loras=loras)] if client is not None else list(endpoints or ())
    if not specs and not joining:
        raise ConfigError("no ComfyUI endpoint to run the batch on", hint="pass at least one")
    names = [s.name or s.client.base_url for s in specs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(
            f"endpoint named twice: {', '.join(repeated)}", hint="give endpoints distinct names"
        )
    return specs


def run_batch(
    jobs: Sequence[Job],
    *,
    client: ComfyBatchAPI | None = None,
    endpoints: Sequence[BatchEndpoint] | None = None,
    store: ObjectStore,
    batch_id: str,
    options: BatchOptions = DEFAULT_OPTIONS,
    loras: LoraResolver | None = None,
    on_event: Callable[[BatchEvent], None] | None = None,
    fal: FalClient | None = None,
    catalog_vram: Mapping[str, float] | None = None,
    catalog_files: Mapping[str, str] | None = None,
    joining: EndpointQueue[BatchEndpoint] | None = None,
) -> BatchReport:
    """Run ``jobs`` on one ComfyUI (``client``, with ``loras`` its LoRA resolver) or over
    many (``endpoints``) and return the report (see the module docstring).

    ``joining``: endpoints that join while the batch runs (``endpoints`` may then be empty:
    the jobs wait for the first). Until it is closed the batch does not end for want of an
    endpoint; the caller closes it (or the batch ends with every job done).

    ``catalog_vram`` maps model file names to the VRAM (GiB) they need, for the local video
    decision (``{m.file: m.min_vram_gb for m in catalog.models.values()}``);
    ``catalog_files`` maps ``<folder>/<file>`` to its catalog id, so a job refused for a
    missing model names what to mirror (:func:`comfyfleet.generate.preflight.catalog_files`).
    """
    check_batch_id(batch_id)
    specs = _endpoint_specs(client, endpoints, loras, joining=joining is not None)
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

    def make(spec: BatchEndpoint) -> _Endpoint:
        """What every endpoint gets, a joining one too: its pre-submit check (the model
        listings and node checks of preflight.py, run before each of its jobs), its video
        stage and its LoRA resolver."""
        checker = WorkflowChecker(spec.client, catalog_files=catalog_files)
        video = VideoStage(
            client=spec.client,
            store=store,
            batch_id=batch_id,
            settings=options.video,
            catalog_vram=catalog_vram or {},
            check=checker.check,
            retries=options.retries,
            backoff_s=options.retry_backoff_s,
            fal=fal,
        )
        spec = replace(spec, loras=spec.loras or LoraResolver(spec.client, store=store))
        return _Endpoint(spec, video, checker)

    engine = _Engine(
        endpoints=[make(spec) for spec in specs],
        joining=joining,
        make=make,
        store=store,
        batch_id=batch_id,
        options=options,
        ledger=ledger,
        on_event=on_event,
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
        endpoints={ep.name: ep.dropped for ep in engine.endpoints},
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
    endpoints: Sequence[ComfyEndpoint] | None = None,
    comfy_url: str | None = None,
    store: ObjectStore,
    tokens: Tokens | None = None,
    on_event: Callable[[BatchEvent], None] | None = None,
    joining: EndpointQueue[ComfyEndpoint] | None = None,
) -> BatchReport:
    """The batch driver the CLI, the flows and the fleet call: read a jobs file, connect to
    every ComfyUI of ``endpoints`` (or the one ``comfy_url``) and run the batch over them.

    ``joining``: ComfyUIs that join while the batch runs (a fleet's instances as they get
    ready): each is connected and must answer within ``options.ready_timeout_s`` before it
    joins (else it is reported ``not ready`` and left out). The producer closes it.

    ``options.batch_id`` defaults to ``<jobs file stem>-<8 hex of its sha256>``, so running
    the same file again resumes it. ``options.catalog_paths`` (default: the built-in
    catalog) give LoRA ids and the VRAM the video models need; ``options.comfy_root``
    enables pulling LoRAs on demand (into that one folder: for ComfyUIs sharing this host's
    disk). Endpoints that do not answer within ``options.ready_timeout_s`` are left out
    (reported as dropped); when none answers, the first one's error is raised.
    """
    from comfyfleet.catalog import load_catalog
    from comfyfleet.comfy.client import ComfyClient
    from comfyfleet.generate.jobs import read_jobs

    if endpoints is None and joining is not None and not comfy_url:
        endpoints = []
    if endpoints is None:
        if not comfy_url:
            raise ConfigError("no ComfyUI endpoint given", hint="pass --comfy-url URL")
        endpoints = [ComfyEndpoint(comfy_url)]
    check_unique(endpoints)
    jobs = read_jobs(jobs_file)
    batch = options.batch_id or default_batch_id(jobs_file)
    catalog = load_catalog(list(options.catalog_paths) or None)
    root = Path(options.comfy_root).expanduser() if options.comfy_root else None
    if root is not None and not root.is_dir():
        raise ConfigError(
            f"--comfy-root {root} is not a directory",
            hint="pass the ComfyUI folder (the one holding models/)",
        )

    def connect(e: ComfyEndpoint) -> ComfyClient:
        return ComfyClient(
            e.url, token=e.token, reconnect_timeout=min(30.0, options.endpoint_timeout_s)
        )

    def batch_endpoint(label: str, client: ComfyClient) -> BatchEndpoint:
        resolver = LoraResolver(
            client, store=store, comfy_root=root, catalog=catalog, tokens=tokens
        )
        return BatchEndpoint(client, name=label, loras=resolver)

    with contextlib.ExitStack() as stack:
        clients = {e.label: stack.enter_context(connect(e)) for e in endpoints}
        unready = _wait_all_ready(clients, options.ready_timeout_s, joining is not None)
        specs = [
            batch_endpoint(label, client)
            for label, client in clients.items()
            if label not in unready
        ]
        inner: EndpointQueue[BatchEndpoint] | None = None
        connector = None
        over = threading.Event()
        if joining is not None:
            inner = EndpointQueue()

            def connect_joining() -> None:
                # Connects each joining ComfyUI off the batch's threads; the clients close
                # with the stack, after this thread has been joined.
                assert joining is not None and inner is not None
                try:
                    while not over.is_set():
                        e = joining.get(timeout=0.1)
                        if e is None:
                            if joining.exhausted:
                                return
                            continue
                        client = stack.enter_context(connect(e))
                        try:
                            # Given up once the batch is over: its end must not wait.
                            client.wait_ready(timeout=options.ready_timeout_s, stop=over)
                        except ComfyfleetError as exc:
                            unready[e.label] = exc
                            continue
                        inner.put(batch_endpoint(e.label, client))
                finally:
                    inner.close()

            connector = threading.Thread(
                target=connect_joining, name="comfyfleet-connect", daemon=True
            )
            connector.start()
        vram = {m.file: m.min_vram_gb for m in catalog.models.values() if m.min_vram_gb}
        try:
            report = run_batch(
                jobs,
                endpoints=specs,
                store=store,
                batch_id=batch,
                options=options,
                on_event=on_event,
                catalog_vram=vram,
                catalog_files=catalog_file_ids(catalog.models.values()),
                joining=inner,
            )
        finally:
            over.set()
            if connector is not None:
                connector.join()
    for label, error in unready.items():
        report.endpoints[label] = f"not ready: {describe(error)}"
    return report


def _wait_all_ready(
    clients: Mapping[str, ComfyClient], timeout: float, more_may_join: bool = False
) -> dict[str, ComfyfleetError]:
    """Wait for every ComfyUI at once; the ones that did not answer, with their error.
    Raises the first error when none answered (and none may join later)."""
    failed: dict[str, ComfyfleetError] = {}

    def ready(label: str) -> None:
        try:
            clients[label].wait_ready(timeout=timeout)
        except ComfyfleetError as exc:
            failed[label] = exc

    with ThreadPoolExecutor(max(1, len(clients)), thread_name_prefix="comfyfleet-ready") as pool:
        list(pool.map(ready, list(clients)))
    if clients and len(failed) == len(clients) and not more_may_join:
        raise next(iter(failed[label] for label in clients))
    return failed
