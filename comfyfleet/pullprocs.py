"""``transfer.pull`` across several worker processes, for hosts with cores to spare.

One Python process tops out near 1.7 GB/s however many threads it runs (the GIL: every
range costs some Python in the HTTP and reorder code), about half of what ``s5cmd`` reaches
on a 16-core host. Here the files to download are shared out between worker processes,
largest first into the least loaded one (by bytes), and each process runs the ordinary
threaded engine (``transfer._Puller``) on its group: hash while writing, verify before the
rename, journal for resume, ``flock`` on every ``.part``, the marker after placing. Nothing
about a single file changes; only who downloads it.

The workers never touch boto3 or credentials: the parent presigns one URL per object (a
presigned GET serves any Range) and hands them over on the worker's stdin, re-signing them
every ``_REFRESH_S`` while the pull lasts so no URL outlives its signature. A worker is a
fresh interpreter (``python -c``, the spawn model: nothing forked from a process that has
threads and a boto3 client) that imports only ``comfyfleet.transfer``, not the caller's
``__main__``. It sends progress (every ``_PROGRESS_BYTES``), one ``PullResult`` per file as
soon as that file is finished, and the reader it used, pickled on its stdout.

A worker that dies leaves its unfinished files ``failed`` with an error that says so; their
``.part`` and journal stay, so the next pull resumes them. An interrupt in the parent sends
SIGTERM to the workers, which stop like an interrupted ``pull`` (journal written, ``.part``
kept), and is then raised. A worker whose parent vanishes (its stdin closes) stops the same
way. Stores that cannot presign, or whose endpoint refuses presigned URLs, stay in one
process (``pull_in_processes`` returns ``None``).
"""

from __future__ import annotations

import _thread
import contextlib
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import comfyfleet
from comfyfleet.errors import ComfyfleetError, StoreAuthError
from comfyfleet.httprange import PresignedRangeReader
from comfyfleet.transfer import (
    MiB,
    Progress,
    PullItem,
    PullResult,
    PullSettings,
    RangeSource,
    _FileJob,
    _Puller,
)

_URL_TTL_S = 3600
_REFRESH_S = 900.0  # re-sign well before the TTL runs out
_PROGRESS_BYTES = 8 * MiB
_STOP_GRACE_S = 10.0
_CHILD_CODE = "from comfyfleet.pullprocs import worker_main; raise SystemExit(worker_main())"


# ---------------------------------------------------------------------------- planning


def split_by_bytes(sizes: list[int], groups: int) -> list[list[int]]:
    """Indices of ``sizes`` in ``groups`` groups: largest first into the least loaded one."""
    out: list[list[int]] = [[] for _ in range(groups)]
    loads = [0] * groups
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        g = min(range(groups), key=lambda g: (loads[g], len(out[g]), g))
        out[g].append(i)
        loads[g] += sizes[i]
    return [sorted(g) for g in out if g]


def share_workers(settings: PullSettings, loads: list[int]) -> list[PullSettings]:
    """Per-process settings: ``max_workers`` (and ``buffered_ranges``) in proportion to the
    bytes each process pulls, at least 4 workers each; one process inside each."""
    total = sum(loads) or 1
    out = []
    for load in loads:
        workers = max(4, round(settings.max_workers * load / total))
        buffered = settings.buffered_ranges
        if buffered is not None:
            buffered = -(-buffered * workers // settings.max_workers)
        out.append(replace(settings, max_workers=workers, buffered_ranges=buffered, processes=1))
    return out


def _presigned_ok(store: RangeSource, items: list[PullItem]) -> bool:
    """True when ranges of these objects can be read with presigned URLs (one tiny probe)."""
    if getattr(store, "get_range_into", None) is not None:
        return False  # the store fills buffers itself; keep to it, in this process
    reader = PresignedRangeReader.for_store(store, items[0].key)
    if reader is None:
        return False
    probe = next((i for i in items if i.size > 0), None)
    if probe is None:
        return True
    buf = bytearray(1)
    try:
        reader.read_into(probe.key, 0, 1, memoryview(buf))
    except StoreAuthError:
        return False  # the in-process engine falls back to store.get_range
    except ComfyfleetError:
        pass  # a missing object etc.: the worker reports it for that file, as in-process
    return True


# ---------------------------------------------------------------------------- parent


@dataclass
class _Worker:
    number: int
    indices: list[int]  # into the parent's job list
    proc: subprocess.Popen[bytes]
    results: dict[int, PullResult] = field(default_factory=dict)
    reader: str = ""
    send_lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, message: object) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        with self.send_lock, contextlib.suppress(OSError, ValueError):
            pickle.dump(message, stdin, protocol=pickle.HIGHEST_PROTOCOL)
            stdin.flush()


def _sign(store: RangeSource, keys: list[str]) -> dict[str, str]:
    urls = {}
    for key in keys:
        url = store.presign_get(key, expires_s=_URL_TTL_S)
        if not url:
            raise ComfyfleetError(f"store {store.uri} no longer presigns {key!r}")
        urls[key] = url
    return urls


def _child_env() -> dict[str, str]:
    """The parent's environment, with this copy of comfyfleet first on the path."""
    env = dict(os.environ)
    root = str(Path(comfyfleet.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def pull_in_processes(
    jobs: list[_FileJob],
    store: RangeSource,
    settings: PullSettings,
    progress: Progress | None,
    processes: int,
) -> tuple[list[PullResult], str] | None:
    """Download ``jobs`` in ``processes`` worker processes; their results in job order and
    the reader used, or ``None`` when this store has to stay in one process."""
    items = [job.item for job in jobs]
    if not settings.fast_http or not _presigned_ok(store, items):
        return None
    groups = split_by_bytes([i.size for i in items], min(processes, len(items)))
    shares = share_workers(settings, [sum(items[i].size for i in g) for g in groups])
    progress_lock = threading.Lock()

    def report(n: int) -> None:
        if progress is not None and n:
            with progress_lock:
                progress(n)

    started = time.monotonic()
    workers: list[_Worker] = []
    stop_refresh = threading.Event()
    try:
        for number, (group, share) in enumerate(zip(groups, shares, strict=True)):
            keys = sorted({items[i].key for i in group})
            proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD_CODE],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=_child_env(),
                close_fds=True,
            )
            worker = _Worker(number, group, proc)
            workers.append(worker)
            worker.send(
                {
                    "uri": store.uri,
                    "urls": _sign(store, keys),
                    "settings": share,
                    "jobs": [(i, jobs[i].item, jobs[i].replacing) for i in group],
                    "progress_bytes": _PROGRESS_BYTES,
                }
            )
        pumps = [
            threading.Thread(
                target=_pump, args=(w, report), name=f"comfyfleet-pullproc-{w.number}", daemon=True
            )
            for w in workers
        ]
        for pump in pumps:
            pump.start()
        refresher = threading.Thread(
            target=_refresh, args=(store, workers, items, stop_refresh), daemon=True
        )
        refresher.start()
        for pump in pumps:
            while pump.is_alive():
                pump.join(0.2)  # short waits: an interrupt gets through at once
        for w in workers:
            w.proc.wait()
    except BaseException:
        _stop(workers)
        raise
    finally:
        stop_refresh.set()
        for w in workers:
            with contextlib.suppress(OSError):
                assert w.proc.stdin is not None
                w.proc.stdin.close()

    results: list[PullResult | None] = [None] * len(jobs)
    readers = []
    for w in workers:
        if w.reader:
            readers.append(w.reader)
        for i in w.indices:
            results[i] = w.results.get(i) or _lost(jobs[i], w, time.monotonic() - started)
    reader = max(set(readers), key=readers.count) if readers else "presigned-http"
    return [r for r in results if r is not None], reader


def _pump(worker: _Worker, report: Callable[[int], None]) -> None:
    """Read one worker's messages until it closes its stdout."""
    stdout = worker.proc.stdout
    assert stdout is not None
    while True:
        try:
            message = pickle.load(stdout)
        except (EOFError, OSError, pickle.UnpicklingError):
            return
        kind = message[0]
        if kind == "progress":
            report(message[1])
        elif kind == "result":
            worker.results[message[1]] = message[2]
        elif kind == "reader":
            worker.reader = message[1]


def _refresh(
    store: RangeSource, workers: list[_Worker], items: list[PullItem], stop: threading.Event
) -> None:
    while not stop.wait(_REFRESH_S):
        for w in workers:
            if w.proc.poll() is None:
                with contextlib.suppress(ComfyfleetError):
                    w.send({"urls": _sign(store, sorted({items[i].key for i in w.indices}))})


def _stop(workers: list[_Worker]) -> None:
    """SIGTERM (the workers keep their .part files resumable), then SIGKILL after a grace."""
    for w in workers:
        if w.proc.poll() is None:
            with contextlib.suppress(OSError):
                w.proc.terminate()
    deadline = time.monotonic() + _STOP_GRACE_S
    for w in workers:
        try:
            w.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait()


def _lost(job: _FileJob, worker: _Worker, seconds: float) -> PullResult:
    code = worker.proc.returncode
    how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited ({code})"
    err = ComfyfleetError(
        f"pull worker process {worker.number} (pid {worker.proc.pid}) {how} before "
        f"finishing {job.item.key!r}; its .part is kept",
        hint="rerun the warm-up: the file resumes where the journal says; if it repeats, "
        "check the worker's output above (memory, disk)",
    )
    return PullResult(
        key=job.item.key,
        dest=job.item.dest,
        status="failed",
        bytes=0,
        seconds=seconds,
        error=err.one_line(),
        size=job.item.size,
        exception=err,
    )


# ---------------------------------------------------------------------------- worker


class _SignedUrls:
    """The store as a worker sees it: the URLs its parent signed (kept fresh on stdin)."""

    def __init__(self, uri: str, urls: dict[str, str]) -> None:
        self._uri = uri
        self.urls = urls
        self._reader = PresignedRangeReader(self)

    @property
    def uri(self) -> str:
        return self._uri

    def presign_get(self, key: str, expires_s: int = 3600) -> str | None:
        return self.urls.get(key)

    def get_range(self, key: str, start: int, end: int) -> bytes:
        buf = bytearray(max(0, end - start))
        n = self._reader.read_into(key, start, end, memoryview(buf))
        return bytes(buf[:n])


def _portable(result: PullResult) -> PullResult:
    """The result with an exception the parent can unpickle (else a plain one, same text)."""
    exc = result.exception
    if exc is None:
        return result
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - any exception that does not survive pickling
        text = result.error or repr(exc)
        plain: BaseException = (
            ComfyfleetError(exc.message, hint=exc.hint)
            if isinstance(exc, ComfyfleetError)
            else RuntimeError(text)
        )
        return replace(result, exception=plain)
    return result


class _WorkerPuller(_Puller):
    """The engine, sending each file's result to the parent as soon as it exists."""

    def __init__(
        self,
        store: RangeSource,
        settings: PullSettings,
        progress: Progress,
        index_of: dict[int, int],
        send: Callable[[object], None],
    ) -> None:
        super().__init__(store, settings, progress)
        self._index_of = index_of
        self._send = send

    def _job_done(self, job: _FileJob, result: PullResult) -> None:
        self._send(("result", self._index_of[id(job.item)], _portable(result)))
        super()._job_done(job, result)


def worker_main() -> int:
    """A worker process: read the job on stdin, pull, answer on stdout (pickles)."""
    out: IO[bytes] = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints go to stderr, never into the pickle stream
    stdin = sys.stdin.buffer
    spec: dict[str, Any] = pickle.load(stdin)
    send_lock = threading.Lock()

    def send(message: object) -> None:
        with send_lock:
            pickle.dump(message, out, protocol=pickle.HIGHEST_PROTOCOL)
            out.flush()

    pending = [0]
    every: int = spec["progress_bytes"]

    def progress(n: int) -> None:  # called serialised by the engine
        pending[0] += n
        if pending[0] >= every or pending[0] < 0:
            send(("progress", pending[0]))
            pending[0] = 0

    store = _SignedUrls(spec["uri"], spec["urls"])
    settings: PullSettings = spec["settings"]
    entries: list[tuple[int, PullItem, bool]] = spec["jobs"]
    jobs = [_FileJob(item, settings, replacing=replacing) for _, item, replacing in entries]
    index_of = {id(item): n for n, item, _ in entries}
    finished = threading.Event()

    def listen() -> None:
        while True:
            try:
                message = pickle.load(stdin)
            except (EOFError, OSError, pickle.UnpicklingError):
                break
            if isinstance(message, dict) and "urls" in message:
                store.urls = {**store.urls, **message["urls"]}
        if not finished.is_set():
            _thread.interrupt_main()  # the parent is gone: stop, keeping .part files

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    threading.Thread(target=listen, name="comfyfleet-pullproc-stdin", daemon=True).start()
    puller = _WorkerPuller(store, settings, progress, index_of, send)
    try:
        puller.run(jobs)
    except KeyboardInterrupt:
        return 130
    finally:
        finished.set()
    if pending[0]:
        send(("progress", pending[0]))
    send(("reader", puller.reader))
    out.close()
    return 0
