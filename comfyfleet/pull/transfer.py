"""Pull model files from the store into ComfyUI's folders: parallel, verified, atomic, resumable.

What ``pull`` does, per file:

1. **Check what is there.** A file at the target with the wrong size is replaced. With
   ``verify="fast"`` a file whose marker (written after a verified placement:
   sha256, size, mtime_ns, inode) still matches is trusted without reading a byte; any
   other file of the right size is re-hashed. ``verify="full"`` re-hashes every present
   file. Hashing of present files runs in parallel.
2. **Download** the rest with ranged GETs, in parallel across *and* within files, into
   ``<dest>.part`` (preallocated, written with ``pwrite`` at each range's offset). The
   sha256 is computed while writing: ranges arrive out of order, so each file keeps a small
   reorder buffer and whichever worker completes the next in-order range feeds the hasher
   (hashlib releases the GIL on big buffers, so hashing overlaps the network).
3. **Place**: fsync the ``.part``, compare sha256 and size with the manifest, ``os.replace``
   into the final name, fsync the directory, write the marker. On a mismatch the ``.part``
   is deleted and the file is downloaded once more from scratch (``integrity_retries``); a
   second mismatch fails the file with ``IntegrityError`` naming both hashes. A partial or
   corrupt file never appears under its final name.

**Resume.** Next to each ``.part`` a small journal (``<dest>.part.journal``, JSON) lists the
byte intervals that are on disk; it is rewritten at most every ``journal_interval_s`` and
only *after* an ``fdatasync`` of the ``.part``, so it never claims bytes that a crash could
lose. A new process that finds a ``.part`` whose journal matches the file (key, size,
sha256) downloads only the missing ranges. Because the sha256 must cover the whole file, the
ranges already on disk are read back (local, fast) and fed to the hasher in order, between
the freshly downloaded ones. Should the journal have lied (a disk that acknowledged an
fsync it did not do), the hash catches it and the retry starts from scratch.

**Memory** is bounded by ``(max_workers + buffered_ranges) * range_size`` (192 MiB with the
defaults): each range is received into one of that many page-aligned buffers, which goes
back to the pool once the hasher has consumed it. Ranges are read with presigned URLs
straight into those buffers when the store can presign (``httprange``), else with
``store.get_range``; they are written with ``O_DIRECT`` (``direct_io``), or through the
page cache with write-behind (``writeback``): see ``PullSettings`` for the measurements.

**Concurrency**: every ``.part`` is ``flock``-ed while written, so two processes can never
write the same file; the warm-up also holds ``lock.RootLock`` for the whole root.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import mmap
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from comfyfleet.errors import (
    ComfyfleetError,
    ConfigError,
    InsufficientDiskError,
    IntegrityError,
    LockHeldError,
    StoreAuthError,
    TransientError,
)
from comfyfleet.files import STATE_DIR, fsync_dir, is_sha256, write_atomic
from comfyfleet.pull.disk import device_of, existing_parent, free_bytes, preflight
from comfyfleet.pull.httprange import PresignedRangeReader
from comfyfleet.pull.writeback import WriteBehind, libc_sync_file_range
from comfyfleet.store.base import ObjectStore
from comfyfleet.units import format_bytes

MiB = 1024 * 1024
# O_DIRECT needs buffers, offsets and lengths aligned to the device's logical block size;
# 4096 covers 512-byte and 4K devices alike.
_ALIGN = 4096
# Write-behind: how far behind the newest range a worker waits for writeback (bounds the
# dirty memory per file); None: never waits, only starts each range's writeback. Measured
# (issue 11, 1 GiB in 2 files, median of 5): waiting 512 MiB behind 4.0 s, no waits 2.9 s.
WRITE_BEHIND_WAIT_BYTES: int | None = None
PART_SUFFIX = ".part"
JOURNAL_SUFFIX = ".part.journal"
MARKERS_DIR = "markers"
_JOURNAL_VERSION = 1
_MARKER_VERSION = 1

Status = Literal["placed", "present", "replaced", "failed"]
Progress = Callable[[int], None]
PreflightFn = Callable[[int, Path], None]
WritePath = Literal["write-behind", "buffered", "direct"]
# The write paths by name (``warmup --write-path``, ``bench/warmup.py --write-path``): the
# ``PullSettings`` fields each one sets. The first is the default.
WRITE_PATHS: dict[str, dict[str, bool]] = {
    "write-behind": {"direct_io": False, "write_behind": True},
    "buffered": {"direct_io": False, "write_behind": False},
    "direct": {"direct_io": True, "write_behind": False},
}


# ---------------------------------------------------------------------------- settings and data


@dataclass(frozen=True)
class PullSettings:
    """How ``pull`` works. Defaults suit a GPU host pulling from S3 in the same region.

    - ``range_size``: bytes per ranged GET (16 MiB: big enough that per-request costs vanish,
      small enough that a file spreads over many workers; a multiple of 4096 for O_DIRECT).
    - ``max_workers``: ranged GETs in flight at once, across all files.
    - ``buffered_ranges``: ranges downloaded but not yet hashed that may wait in memory
      (``None``: half of ``max_workers``, at least 2). Memory is
      ``(max_workers + buffered_ranges) * range_size``.
    - ``verify``: ``"fast"`` trusts a matching marker; ``"full"`` re-hashes present files.
    - ``fsync``: make data durable before the rename and before each journal write.
    - ``hash``: ``False`` switches sha256 off entirely (benchmarks only: nothing is verified
      and no marker is written).
    - ``direct_io`` and ``write_behind``: the write path (:data:`WRITE_PATHS` names the
      three), chosen by measurement (issue 11: what a cold start pays is the pull *and*
      ComfyUI's read of every file right after it). Default, ``write-behind``
      (``direct_io=False, write_behind=True``): buffered writes, each range's writeback
      started as soon as it is written (``writeback.WriteBehind``, ``sync_file_range``), so
      the fsync before the rename finds little left to flush and the files stay in the page
      cache (the model load is a memory copy). ``buffered``: the same without write-behind
      (the fsync flushes the whole file). ``direct``: the block-aligned bulk of each range
      with ``O_DIRECT`` (no page-cache copy, but ComfyUI then reads every file from disk).
      Measured on the 2-core VM (SeaweedFS on the same host, caches dropped, pull + read
      every file, 512 MiB in 6 files, variants shuffled per run, median of 5,
      ``python bench/warmup.py --size-mb 512 --runs 5``), two runs on 2026-12-02:
      write-behind 1.036 / 1.180 s, buffered 1.180 / 1.467 s, direct 1.363 / 1.481 s;
      earlier sessions, 1 GiB in 2 files, median of 12-17: write-behind 2.93 s, buffered
      2.99 s, direct 3.22 s. On a loaded box O_DIRECT's lower client CPU once won (1.77 s
      vs 1.98 s at load 5-10): ``direct`` stays a setting for CPU-starved hosts whose
      files are read back later, not right away. Waiting for writeback in the workers
      (``WRITE_BEHIND_WAIT_BYTES``) measured slowest (4.0-4.3 s on the 1 GiB set), so
      write-behind only starts it.
      Durability is the same on every path: fdatasync before each journal write, fsync
      before the rename, so a file under its final name is complete and verified after
      kill -9 or a power loss alike.
    - ``fast_http``: read ranges through presigned URLs straight into the range buffers
      (``httprange``) when the store can presign; falls back to ``store.get_range`` (boto3)
      if the endpoint refuses them. ``False``: always ``store.get_range``.
    - ``journal_interval_s``: how often the resume journal may be rewritten (0: every range).
    - ``integrity_retries``: fresh downloads after a hash mismatch before the file fails.
    - ``transient_retries``: attempts per range after a ``TransientError`` (store 5xx, drop).
    """

    range_size: int = 16 * MiB
    max_workers: int = 8
    verify: Literal["fast", "full"] = "fast"
    fsync: bool = True
    hash: bool = True
    direct_io: bool = False
    write_behind: bool = True
    fast_http: bool = True
    buffered_ranges: int | None = None
    journal_interval_s: float = 2.0
    integrity_retries: int = 1
    transient_retries: int = 5
    retry_backoff_s: float = 0.5

    def __post_init__(self) -> None:
        if self.range_size < 4096:
            raise ConfigError(
                f"range_size {self.range_size} is too small", hint="use at least 4096 bytes"
            )
        if self.max_workers < 1:
            raise ConfigError(f"max_workers {self.max_workers} must be >= 1")
        if self.verify not in ("fast", "full"):
            raise ConfigError(f"verify {self.verify!r} is not 'fast' or 'full'")
        if self.buffered_ranges is not None and self.buffered_ranges < 0:
            raise ConfigError(f"buffered_ranges {self.buffered_ranges} must be >= 0")

    @property
    def write_path(self) -> str:
        """The name of this write path (a key of :data:`WRITE_PATHS`)."""
        if self.direct_io:
            return "direct"
        return "write-behind" if self.write_behind else "buffered"

    @property
    def slots(self) -> int:
        """Ranges that may hold memory at once (in flight + waiting for the hasher)."""
        if self.buffered_ranges is not None:
            return self.max_workers + self.buffered_ranges
        return self.max_workers + max(2, self.max_workers // 2)


@dataclass(frozen=True)
class PullItem:
    """One file to pull: the object ``key`` becomes ``dest`` with this size and sha256."""

    key: str
    dest: Path
    size: int
    sha256: str
    # Where the "verified" marker lives (``None``: no marker, always re-hash when present).
    marker: Path | None = None

    @property
    def part(self) -> Path:
        return self.dest.with_name(self.dest.name + PART_SUFFIX)

    @property
    def journal(self) -> Path:
        return self.dest.with_name(self.dest.name + JOURNAL_SUFFIX)


@dataclass
class PullResult:
    """What happened to one file."""

    key: str
    dest: Path
    status: Status
    bytes: int  # bytes downloaded for this file in this run
    seconds: float
    error: str | None = None
    size: int = 0
    resumed_bytes: int = 0  # bytes found on disk from an interrupted run and not re-fetched
    verified: Literal["marker", "hashed", "downloaded", "unverified", ""] = ""
    attempts: int = 0
    exception: BaseException | None = field(default=None, repr=False, compare=False)


@dataclass
class PullReport:
    """The outcome of one ``pull``: per-file results and the totals a cold-start report needs."""

    items: list[PullResult]
    bytes_downloaded: int
    seconds: float
    verify_seconds: float  # checking present files (stat, markers, re-hashing)
    download_seconds: float = 0.0  # from the first GET to the last file placed
    bytes_present: int = 0  # bytes already in place and trusted or re-verified
    bytes_resumed: int = 0
    bytes_hashed_present: int = 0  # bytes of present files read back to verify them
    reader: str = ""  # how ranges were read: presigned-http, store.get_range, ...

    @property
    def ok(self) -> bool:
        return all(r.status != "failed" for r in self.items)

    @property
    def failed(self) -> list[PullResult]:
        return [r for r in self.items if r.status == "failed"]

    def count(self, status: Status) -> int:
        return sum(1 for r in self.items if r.status == status)

    @property
    def download_mb_per_s(self) -> float:
        return self.bytes_downloaded / 1e6 / self.download_seconds if self.download_seconds else 0.0

    def raise_for_failures(self) -> None:
        """Raise the first failure's error (the others are summed up in its message)."""
        failed = self.failed
        if not failed:
            return
        first = failed[0]
        if len(failed) == 1 and first.exception is not None:
            raise first.exception
        names = ", ".join(r.key for r in failed[:5]) + (" ..." if len(failed) > 5 else "")
        raise ComfyfleetError(
            f"{len(failed)} of {len(self.items)} files failed to pull ({names}); "
            f"first: {first.error}",
            hint="rerun the warm-up: finished files are kept and partial ones resume",
        ) from first.exception


class EntryLike(Protocol):
    """What ``plan_pull`` needs from a manifest entry (``manifest.ManifestEntry``)."""

    @property
    def key(self) -> str: ...
    @property
    def folder(self) -> str: ...
    @property
    def file(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> str: ...


# ---------------------------------------------------------------------------- planning


def _safe_parts(what: str, value: str, *, single: bool) -> list[str]:
    parts = value.split("/")
    bad = (
        not value
        or value.startswith("/")
        or "\\" in value
        or "\x00" in value
        or any(p in ("", ".", "..") for p in parts)
        or (single and len(parts) != 1)
    )
    if bad:
        raise ConfigError(
            f"manifest {what} {value!r} would escape the ComfyUI models folder",
            hint="model folders and file names must be relative paths without '.', '..' or "
            "empty segments; fix the manifest entry (re-run the mirror)",
        )
    return parts


def plan_pull(
    entries: Iterable[EntryLike], comfy_root: Path, *, models_dir: Path | None = None
) -> list[PullItem]:
    """Map manifest entries to files: ``<models_dir>/<folder>/<file>``.

    ``models_dir`` defaults to ``<comfy_root>/models``; point it elsewhere (a network volume)
    and write ``lock.write_extra_model_paths`` so ComfyUI finds the files. Markers live in
    ``<models_dir>/../.comfyfleet/markers/`` (``<comfy_root>/.comfyfleet/markers/`` by
    default), next to the models they vouch for and outside every folder ComfyUI scans.
    """
    base = (models_dir if models_dir is not None else comfy_root / "models").absolute()
    markers = base.parent / STATE_DIR / MARKERS_DIR
    items: list[PullItem] = []
    seen: dict[Path, str] = {}
    for entry in entries:
        folder = _safe_parts("folder", entry.folder, single=True)
        file = _safe_parts("file", entry.file, single=False)
        sha = entry.sha256.lower()
        if not is_sha256(sha):
            raise ConfigError(
                f"manifest entry {entry.key!r} has no valid sha256 ({entry.sha256!r})",
                hint="re-run the mirror so the manifest records each file's sha256",
            )
        if entry.size < 0:
            raise ConfigError(f"manifest entry {entry.key!r} has a negative size {entry.size}")
        dest = base.joinpath(*folder, *file)
        if dest in seen:
            raise ConfigError(
                f"manifest entries {seen[dest]!r} and {entry.key!r} both land on {dest}",
                hint="keep one of them in the catalog",
            )
        seen[dest] = entry.key
        marker = markers.joinpath(*folder, *file[:-1], file[-1] + ".json")
        items.append(PullItem(entry.key, dest, entry.size, sha, marker))
    return items


def bytes_to_write(items: Iterable[PullItem]) -> int:
    """Disk space a pull still needs: files neither in place at the right size nor already
    allocated as a ``.part`` of the right size (those need no new space)."""
    needed = 0
    for item in items:
        if _size_of(item.dest) == item.size or _size_of(item.part) == item.size:
            continue
        needed += item.size
    return needed


def _size_of(path: Path) -> int | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size if os.path.isfile(path) else None


# ---------------------------------------------------------------------------- hashing


def hash_file(path: Path, chunk: int = 8 * MiB) -> str:
    """sha256 of a file (see ``hash_region``)."""
    digest = hashlib.sha256()
    hash_region(path, digest, 0, None, chunk=chunk)
    return digest.hexdigest()


def hash_region(
    path: Path, digest: Any, start: int, end: int | None, *, chunk: int = 8 * MiB
) -> int:
    """Feed bytes ``[start, end)`` of ``path`` (``end=None``: to EOF) to ``digest``; returns
    how many were read.

    Reads go through ``O_DIRECT`` into two page-aligned buffers where the filesystem allows
    it: on a VM disk that is 4x the speed of buffered reads (1.9 vs 0.44 GB/s measured here;
    the kernel's read-ahead is the limit), and a file just pulled with ``direct_io`` is not in
    the page cache anyway. The next chunk is read while the current one is hashed (both let
    go of the GIL), so a single big file verifies at the speed of the slower of the two.
    """
    chunk = max(_ALIGN, chunk // _ALIGN * _ALIGN)
    aligned = start % _ALIGN == 0
    fd = _open_read(path, direct=aligned)
    bufs = [mmap.mmap(-1, chunk), mmap.mmap(-1, chunk)]
    views = [memoryview(b) for b in bufs]
    state = {"fd": fd}

    def read(i: int, offset: int) -> int:
        want = chunk if end is None else min(chunk, end - offset)
        if want <= 0:
            return 0
        try:
            return os.preadv(state["fd"], [views[i][: -(-want // _ALIGN) * _ALIGN]], offset)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            # The filesystem took O_DIRECT at open but not for this read: go buffered.
            os.close(state["fd"])
            state["fd"] = _open_read(path, direct=False)
            return os.preadv(state["fd"], [views[i][:want]], offset)

    total = 0
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="comfyfleet-read") as ahead:
            offset, i = start, 0
            pending = ahead.submit(read, i, offset)
            while True:
                n = pending.result()
                if end is not None:
                    n = min(n, end - offset)
                if n <= 0:
                    break
                offset += n
                # A short read is the end of the file (direct reads only stop short there).
                more = n == chunk and (end is None or offset < end)
                if more:
                    pending = ahead.submit(read, 1 - i, offset)
                digest.update(views[i][:n])
                total += n
                if not more:
                    break
                i = 1 - i
    finally:
        os.close(state["fd"])
        for view in views:
            view.release()
        for buf in bufs:
            buf.close()
    return total


def _open_read(path: Path, *, direct: bool) -> int:
    flag = getattr(os, "O_DIRECT", 0) if direct else 0
    if flag:
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC | flag)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


# ---------------------------------------------------------------------------- markers


def read_marker(item: PullItem) -> dict[str, Any] | None:
    if item.marker is None:
        return None
    try:
        data = json.loads(item.marker.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def marker_matches(item: PullItem, st: os.stat_result) -> bool:
    """True when the marker vouches for exactly this file: same inode, size, mtime, sha256."""
    data = read_marker(item)
    return bool(
        data
        and data.get("version") == _MARKER_VERSION
        and data.get("sha256") == item.sha256
        and data.get("size") == item.size == st.st_size
        and data.get("mtime_ns") == st.st_mtime_ns
        and data.get("ino") == st.st_ino
        and data.get("dev") == st.st_dev
    )


def write_marker(item: PullItem, st: os.stat_result) -> None:
    if item.marker is None:
        return
    record = {
        "version": _MARKER_VERSION,
        "key": item.key,
        "sha256": item.sha256,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ino": st.st_ino,
        "dev": st.st_dev,
        "verified_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _write_json_atomic(item.marker, record)


def _write_json_atomic(path: Path, record: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(record, sort_keys=True))


# ---------------------------------------------------------------------------- journal


def _merge(intervals: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def read_journal(item: PullItem) -> list[tuple[int, int]]:
    """Byte intervals of ``item.part`` known to be on disk; [] when absent or not for this file."""
    try:
        data = json.loads(item.journal.read_bytes())
    except (OSError, ValueError):
        return []
    if (
        not isinstance(data, dict)
        or data.get("version") != _JOURNAL_VERSION
        or data.get("key") != item.key
        or data.get("size") != item.size
        or data.get("sha256") != item.sha256
    ):
        return []
    done = data.get("done")
    if not isinstance(done, list):
        return []
    intervals: list[tuple[int, int]] = []
    for pair in done:
        if (
            isinstance(pair, list)
            and len(pair) == 2
            and all(isinstance(x, int) for x in pair)
            and 0 <= pair[0] < pair[1] <= item.size
        ):
            intervals.append((pair[0], pair[1]))
    return _merge(intervals)


def _write_journal(item: PullItem, done: list[tuple[int, int]]) -> None:
    record = {
        "version": _JOURNAL_VERSION,
        "key": item.key,
        "size": item.size,
        "sha256": item.sha256,
        "done": [list(p) for p in done],
    }
    _write_json_atomic(item.journal, record)


def _covered(intervals: list[tuple[int, int]], start: int, end: int) -> bool:
    return any(s <= start and end <= e for s, e in intervals)


# ---------------------------------------------------------------------------- engine


class _BufferPool:
    """Page-aligned range buffers (anonymous mmaps), made on demand and reused.

    Holding a buffer is the ticket to memory: one is taken before a range's GET and given
    back once the hasher has consumed it, so memory stays at ``slots * range_size`` and no
    range allocates (or page-faults in) fresh memory after the first few.
    """

    def __init__(self, count: int, size: int) -> None:
        self._count = count
        self._size = size
        self._free: list[mmap.mmap] = []
        self._maps: list[mmap.mmap] = []
        self._cv = threading.Condition()

    def acquire(self, stop: threading.Event) -> mmap.mmap | None:
        with self._cv:
            while not self._free and len(self._maps) >= self._count:
                if stop.is_set():
                    return None
                self._cv.wait(0.1)
            if self._free:
                return self._free.pop()
            mapping = mmap.mmap(-1, self._size)
            if hasattr(mmap, "MADV_HUGEPAGE"):
                # 2 MiB pages: first touch costs 512x fewer page faults (the kernel may say no).
                with contextlib.suppress(OSError):
                    mapping.madvise(mmap.MADV_HUGEPAGE)
            self._maps.append(mapping)
            return mapping

    def release(self, buf: object) -> None:
        assert isinstance(buf, mmap.mmap)
        with self._cv:
            self._free.append(buf)
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._free.clear()
            for mapping in self._maps:
                with contextlib.suppress(BufferError):  # a view still lives: GC unmaps it
                    mapping.close()
            self._maps.clear()


class _FileJob:
    """One attempt at one file: its ``.part`` fds, hasher and reorder buffer.

    A retry after a hash mismatch is a new ``_FileJob`` (``successor``), so no worker of the
    failed attempt can ever touch the state of the next one.
    """

    def __init__(self, item: PullItem, settings: PullSettings, *, replacing: bool) -> None:
        self.item = item
        self.settings = settings
        self.replacing = replacing
        rs = settings.range_size
        self.ranges = [(s, min(s + rs, item.size)) for s in range(0, item.size, rs)]
        self.lock = threading.Lock()
        self.fd_free = threading.Condition(self.lock)
        self.hash_lock = threading.Lock()
        self.journal_lock = threading.Lock()
        self.digest: Any = hashlib.sha256() if settings.hash else None
        self.buffer: dict[int, memoryview] = {}  # index -> downloaded range, not yet hashed
        self.on_disk: set[int] = set()  # ranges found complete in the .part (resume)
        self.written: list[tuple[int, int]] = []  # byte intervals on disk, for the journal
        self.next_hash = 0
        self.remaining = len(self.ranges)  # ranges not yet hashed (or, hash off, written)
        self.last_journal = time.monotonic()
        self.started = time.monotonic()
        self.attempts = 1
        self.bytes_downloaded = 0
        self.resumed_bytes = 0
        self.fd: int | None = None  # buffered: lock, allocate, tails, fsync, read back
        self.dfd: int | None = None  # O_DIRECT: the aligned bulk of every range
        self.behind: WriteBehind | None = None  # buffered: start each range's writeback
        self.fd_users = 0
        self.failed: BaseException | None = None
        self.finishing = False
        self.done = False  # a result exists, or a successor took over
        self.successor: _FileJob | None = None
        self.result: PullResult | None = None

    # -- the .part file

    def open(self, *, resume: bool) -> list[int]:
        """Open and lock the ``.part``; returns the range indices still to download."""
        item = self.item
        item.dest.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(item.part, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LockHeldError(
                    f"{item.part} is being written by another process",
                    hint="another warm-up is pulling into this ComfyUI root; let it finish",
                ) from None
            done = read_journal(item) if resume else []
            todo: list[int] = []
            if done and os.fstat(fd).st_size == item.size:
                for i, (start, end) in enumerate(self.ranges):
                    if _covered(done, start, end):
                        self.on_disk.add(i)
                        self.resumed_bytes += end - start
                    else:
                        todo.append(i)
                self.written = list(done)
            else:
                item.journal.unlink(missing_ok=True)
                os.ftruncate(fd, 0)
                _preallocate(fd, item)
                todo = list(range(len(self.ranges)))
            rs = self.settings.range_size
            if todo and self.settings.direct_io and rs % _ALIGN == 0:
                self.dfd = _open_direct(item.part)
            if todo and self.dfd is None and self.settings.fsync and self.settings.write_behind:
                wait = WRITE_BEHIND_WAIT_BYTES
                window = None if wait is None else max(self.settings.max_workers, wait // rs)
                self.behind = WriteBehind(fd, window=window, syscall=libc_sync_file_range())
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return todo

    def use_fd(self, *, even_failed: bool = False) -> int | None:
        """Borrow the fds for one IO (None once closed, or failed unless ``even_failed``)."""
        with self.lock:
            if self.fd is None or (self.failed is not None and not even_failed):
                return None
            self.fd_users += 1
            return self.fd

    def return_fd(self) -> None:
        with self.lock:
            self.fd_users -= 1
            if self.fd_users == 0:
                self.fd_free.notify_all()

    def write(self, fd: int, view: memoryview, offset: int) -> None:
        """Write one range: buffered, then its writeback started (``write_behind``); or,
        with ``direct_io``, its block-aligned bulk with O_DIRECT and the unaligned tail of a
        file's last range buffered."""
        dfd = self.dfd
        bulk = len(view) // _ALIGN * _ALIGN if dfd is not None else 0
        if bulk:
            assert dfd is not None
            try:
                _pwrite_all(dfd, view[:bulk], offset)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.dfd = None  # the filesystem took the open but refuses the IO
                bulk = 0
        if bulk < len(view):
            _pwrite_all(fd, view[bulk:], offset + bulk)
            if self.behind is not None:
                self.behind.written(offset + bulk, len(view) - bulk)

    def close(self) -> None:
        """Close the fds once no worker is in an IO on them (the numbers could be reused)."""
        with self.lock:
            while self.fd_users:
                self.fd_free.wait()
            fd, self.fd = self.fd, None
            dfd, self.dfd = self.dfd, None
        if dfd is not None:
            os.close(dfd)
        if fd is not None:
            os.close(fd)  # also drops the flock

    def discard(self) -> None:
        self.close()
        with self.journal_lock:
            for path in (self.item.part, self.item.journal):
                # Cleanup after a failure must not replace that failure with its own (a
                # parent that is a file, not a directory, fails open() and unlink() alike).
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    path.unlink()


def _open_direct(path: Path) -> int | None:
    """A second fd with O_DIRECT, or None where the filesystem has none (tmpfs, some FUSE)."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        return os.open(path, os.O_WRONLY | os.O_CLOEXEC | flag)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            return None
        raise


def _preallocate(fd: int, item: PullItem) -> None:
    if item.size == 0:
        return
    try:
        os.posix_fallocate(fd, 0, item.size)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise InsufficientDiskError(
                str(item.dest.parent), needed=item.size, free=free_bytes(item.dest.parent)
            ) from exc
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        os.ftruncate(fd, item.size)  # filesystem without fallocate: a sparse file will do


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n


class _Puller:
    """Runs the jobs on one thread pool; the calling thread only hands out range tickets."""

    def __init__(
        self, store: ObjectStore, settings: PullSettings, progress: Progress | None
    ) -> None:
        self.store = store
        self.settings = settings
        self._progress = progress
        self._progress_lock = threading.Lock()
        self.buffers = _BufferPool(settings.slots, settings.range_size)
        self.stop = threading.Event()
        self.tickets: deque[tuple[_FileJob, int] | None] = deque()
        self.tickets_cv = threading.Condition()
        self.open_jobs = 0
        self.all_jobs: list[_FileJob] = []
        self.pool: ThreadPoolExecutor | None = None
        # A store may fill our buffer itself (no bytes object, no copy); else presigned
        # URLs read with readinto (httprange); else get_range and a copy.
        self._get_into: Callable[[str, int, int, memoryview], int] | None = getattr(
            store, "get_range_into", None
        )
        self.reader = "store.get_range_into" if self._get_into is not None else "store.get_range"
        self._presigned: Callable[[str, int, int, memoryview], int] | None = None
        self._fallback_lock = threading.Lock()

    def progress(self, n: int) -> None:
        if self._progress is not None and n:
            with self._progress_lock:
                self._progress(n)

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        assert self.pool is not None
        self.pool.submit(fn, *args)

    # -- main loop

    def run(self, jobs: list[_FileJob]) -> None:
        if not jobs:
            return
        if self._get_into is None and self.settings.fast_http:
            reader = PresignedRangeReader.for_store(self.store, jobs[0].item.key)
            if reader is not None:
                self._get_into = self._presigned = reader.read_into
                self.reader = "presigned-http"
        self.open_jobs = len(jobs)
        try:
            with ThreadPoolExecutor(
                max_workers=self.settings.max_workers, thread_name_prefix="comfyfleet-pull"
            ) as pool:
                self.pool = pool
                try:
                    # Files are opened when the dispatcher reaches them (index -1), and their
                    # ranges go to the front of the queue: only the files being worked on
                    # hold fds, however long the list.
                    with self.tickets_cv:
                        self.tickets.extend((job, -1) for job in jobs)
                    self._dispatch(pool)
                except BaseException:
                    self.stop.set()
                    pool.shutdown(wait=True, cancel_futures=True)
                    for job in self.all_jobs:
                        if not job.done:
                            self._keep_for_resume(job)
                    raise
        finally:
            self.buffers.close()

    def _dispatch(self, pool: ThreadPoolExecutor) -> None:
        while True:
            with self.tickets_cv:
                while not self.tickets:
                    self.tickets_cv.wait(0.5)
                ticket = self.tickets.popleft()
            if ticket is None:
                return
            job, index = ticket
            if job.failed is not None or job.done:
                continue
            if index < 0:
                self._start(job, resume=True)
                continue
            buf = self.buffers.acquire(self.stop)
            if buf is None:
                return
            pool.submit(self._fetch, job, index, buf)

    def _start(self, job: _FileJob, *, resume: bool) -> None:
        self.all_jobs.append(job)
        try:
            todo = job.open(resume=resume)
        except BaseException as exc:  # noqa: BLE001 - reported per file
            # Another process's .part is not ours to delete; anything else failed to set up
            # (no space to preallocate, ...) and is removed.
            self._fail(job, exc, keep=isinstance(exc, LockHeldError))
            return
        self.progress(job.resumed_bytes)
        if job.digest is not None:
            if not job.ranges or job.on_disk:
                # Zero bytes, or a resumed prefix to hash from disk: start the hasher now so
                # it overlaps the downloads instead of waiting for the first new range.
                self._submit(self._guard, job, self._drain)
        else:
            with job.lock:
                job.remaining -= len(job.on_disk)
                finished = job.remaining == 0
            if finished:
                self._submit(self._guard, job, self._finish)
        with self.tickets_cv:
            self.tickets.extendleft((job, i) for i in reversed(todo))
            self.tickets_cv.notify()

    def _guard(self, job: _FileJob, fn: Callable[[_FileJob], None]) -> None:
        try:
            fn(job)
        except BaseException as exc:  # noqa: BLE001 - reported per file
            self._fail(job, exc, keep=not isinstance(exc, IntegrityError))

    def _job_done(self, job: _FileJob, result: PullResult) -> None:
        job.result = result
        job.done = True
        with self.tickets_cv:
            self.open_jobs -= 1
            if self.open_jobs == 0:
                self.tickets.append(None)
            self.tickets_cv.notify()

    # -- one range

    def _fetch(self, job: _FileJob, index: int, buf: mmap.mmap) -> None:
        holds_buffer = True
        try:
            if job.failed is not None or job.done or self.stop.is_set():
                return
            start, end = job.ranges[index]
            n = self._get(job.item.key, start, end, memoryview(buf))
            if n != end - start:
                raise IntegrityError(
                    job.item.key,
                    expected_size=job.item.size,
                    actual_size=start + n,
                    hint="the object in the store is shorter than the manifest says; re-run "
                    "the mirror for this model",
                )
            view = memoryview(buf)[:n]
            fd = job.use_fd()
            if fd is None:
                return
            try:
                job.write(fd, view, start)
            finally:
                job.return_fd()
            self.progress(len(view))
            with job.lock:
                if job.failed is not None:
                    return
                job.bytes_downloaded += len(view)
                job.written.append((start, end))
                if job.digest is not None:
                    job.buffer[index] = view
                    holds_buffer = False  # the reorder buffer owns it; the hasher gives it back
                else:
                    job.remaining -= 1
                last = job.remaining == 0
            if job.digest is not None:
                self._drain(job)
            elif last:
                self._finish(job)
                return
            self._maybe_journal(job)
        except BaseException as exc:  # noqa: BLE001 - reported per file
            self._fail(job, exc, keep=not isinstance(exc, IntegrityError))
        finally:
            if holds_buffer:
                self.buffers.release(buf)

    def _get(self, key: str, start: int, end: int, buf: memoryview) -> int:
        """Fill ``buf`` with bytes ``[start, end)`` of ``key``; retries transient errors."""
        attempt = 0
        while True:
            get_into = self._get_into
            try:
                if get_into is not None:
                    try:
                        return get_into(key, start, end, buf)
                    except StoreAuthError:
                        if get_into != self._presigned:
                            raise
                        # Some S3 look-alikes refuse presigned URLs the SDK itself gets
                        # through: fall back to the store's own reads for the rest.
                        with self._fallback_lock:
                            self._get_into = None
                            self.reader = "store.get_range (presigned URL refused)"
                        continue
                data = self.store.get_range(key, start, end)
                if len(data) <= len(buf):
                    buf[: len(data)] = data
                return len(data)
            except TransientError:
                attempt += 1
                if attempt >= self.settings.transient_retries or self.stop.is_set():
                    raise
                time.sleep(self.settings.retry_backoff_s * 2 ** (attempt - 1))

    # -- hashing in order

    def _drain(self, job: _FileJob) -> None:
        """Feed the hasher every range that is next in order (from memory or, resumed, disk).

        Only one worker drains a file at a time (``hash_lock``, taken without blocking: the
        others go back to downloading); it re-checks after letting go, so no range is left
        waiting when it returns.
        """
        digest = job.digest
        while True:
            if not job.hash_lock.acquire(blocking=False):
                return
            try:
                while True:
                    with job.lock:
                        if job.failed is not None or job.done:
                            return
                        i = job.next_hash
                        view = job.buffer.pop(i, None)
                        from_disk = view is None and i in job.on_disk
                        if view is None and not from_disk:
                            break
                    if view is not None:
                        digest.update(view)
                        self.buffers.release(view.obj)
                    else:
                        start, end = job.ranges[i]
                        if hash_region(job.item.part, digest, start, end) != end - start:
                            raise OSError(errno.EIO, f"{job.item.part} ends before {end}")
                    with job.lock:
                        job.next_hash += 1
                        job.remaining -= 1
                if job.next_hash == len(job.ranges):
                    self._finish(job)
                    return
            finally:
                job.hash_lock.release()
            with job.lock:
                if job.next_hash not in job.buffer:
                    return

    # -- journal

    def _maybe_journal(self, job: _FileJob) -> None:
        with job.lock:
            if job.finishing or job.failed is not None:
                return
            if time.monotonic() - job.last_journal < self.settings.journal_interval_s:
                return
            job.last_journal = time.monotonic()
        self._journal(job)

    def _journal(self, job: _FileJob) -> None:
        """Make the written ranges durable, then say so in the journal (in that order)."""
        if not job.journal_lock.acquire(blocking=False):
            return  # another worker is writing it; the next range will try again
        try:
            with job.lock:
                snapshot = _merge(job.written)
            if not snapshot:
                return
            fd = job.use_fd(even_failed=True)
            if fd is None:
                return
            try:
                if self.settings.fsync:
                    os.fdatasync(fd)  # never claim bytes a crash could lose
            finally:
                job.return_fd()
            with job.lock:
                if job.finishing or job.done:
                    return
            _write_journal(job.item, snapshot)
        finally:
            job.journal_lock.release()

    def _keep_for_resume(self, job: _FileJob) -> None:
        """Leave the ``.part`` and an up-to-date journal so the next run continues."""
        with contextlib.suppress(OSError):
            self._journal(job)
        job.close()

    # -- the end of a file

    def _finish(self, job: _FileJob) -> None:
        item = job.item
        with job.lock:
            job.finishing = True
        fd = job.use_fd()
        if fd is None:
            return
        try:
            if self.settings.fsync:
                os.fsync(fd)
            size = os.fstat(fd).st_size
        finally:
            job.return_fd()
        actual = job.digest.hexdigest() if job.digest is not None else None
        if size != item.size or (actual is not None and actual != item.sha256):
            err = IntegrityError(
                item.key,
                expected_sha256=item.sha256,
                actual_sha256=actual,
                expected_size=item.size,
                actual_size=size,
            )
            job.discard()
            if job.attempts <= self.settings.integrity_retries and not self.stop.is_set():
                self._retry(job)
                return
            raise err
        job.close()
        with job.journal_lock:
            os.replace(item.part, item.dest)
            item.journal.unlink(missing_ok=True)
        if self.settings.fsync:
            fsync_dir(item.dest.parent)
        verified: Literal["downloaded", "unverified"] = "unverified"
        if job.digest is not None:
            write_marker(item, os.stat(item.dest))
            verified = "downloaded"
        self._job_done(
            job,
            PullResult(
                key=item.key,
                dest=item.dest,
                status="replaced" if job.replacing else "placed",
                bytes=job.bytes_downloaded,
                seconds=time.monotonic() - job.started,
                size=item.size,
                resumed_bytes=job.resumed_bytes,
                verified=verified,
                attempts=job.attempts,
            ),
        )

    def _retry(self, job: _FileJob) -> None:
        """Download the file again from scratch as a new job (after a hash mismatch)."""
        new = _FileJob(job.item, self.settings, replacing=job.replacing)
        new.attempts = job.attempts + 1
        new.started = job.started
        new.bytes_downloaded = job.bytes_downloaded
        job.successor = new
        job.done = True
        self.progress(-(job.bytes_downloaded + job.resumed_bytes))  # rewind, as s3transfer
        self._start(new, resume=False)

    def _fail(self, job: _FileJob, exc: BaseException, *, keep: bool) -> None:
        with job.lock:
            if job.failed is not None or job.done:
                return
            job.failed = exc
            buffered = list(job.buffer.values())
            job.buffer.clear()
        for view in buffered:
            self.buffers.release(view.obj)
        if keep:
            self._keep_for_resume(job)
        else:
            job.discard()
        message = exc.one_line() if isinstance(exc, ComfyfleetError) else repr(exc)
        self._job_done(
            job,
            PullResult(
                key=job.item.key,
                dest=job.item.dest,
                status="failed",
                bytes=job.bytes_downloaded,
                seconds=time.monotonic() - job.started,
                error=message,
                size=job.item.size,
                resumed_bytes=job.resumed_bytes,
                attempts=job.attempts,
                exception=exc,
            ),
        )


def _final(job: _FileJob) -> _FileJob:
    while job.successor is not None:
        job = job.successor
    return job


# ---------------------------------------------------------------------------- checking present


@dataclass
class _Check:
    item: PullItem
    present: bool = False
    replacing: bool = False
    verified: Literal["marker", "hashed", "unverified", ""] = ""
    hashed_bytes: int = 0
    error: BaseException | None = None


def _check(item: PullItem, settings: PullSettings) -> _Check:
    """Decide whether ``item.dest`` can be trusted as is (never trusting a wrong file)."""
    try:
        return _check_file(item, settings)
    except OSError:
        return _Check(item, replacing=True)  # cannot be read back: cannot be trusted


def _check_file(item: PullItem, settings: PullSettings) -> _Check:
    try:
        st = os.stat(item.dest)
    except FileNotFoundError:
        return _Check(item)
    if not os.path.isfile(item.dest):
        err = ConfigError(
            f"{item.dest} exists and is not a file",
            hint="move it away; the warm-up places a model file there",
        )
        return _Check(item, error=err)
    if st.st_size != item.size:
        return _Check(item, replacing=True)
    if not settings.hash:
        return _Check(item, present=True, verified="unverified")
    if settings.verify == "fast" and marker_matches(item, st):
        return _Check(item, present=True, verified="marker")
    digest = hash_file(item.dest)
    if digest != item.sha256:
        return _Check(item, replacing=True, hashed_bytes=st.st_size)
    write_marker(item, os.stat(item.dest))
    return _Check(item, present=True, verified="hashed", hashed_bytes=st.st_size)


def _check_all(items: list[PullItem], settings: PullSettings) -> list[_Check]:
    if len(items) <= 1:
        return [_check(i, settings) for i in items]
    with ThreadPoolExecutor(
        max_workers=min(settings.max_workers, len(items)), thread_name_prefix="comfyfleet-verify"
    ) as pool:
        futures: list[Future[_Check]] = [pool.submit(_check, i, settings) for i in items]
        return [f.result() for f in futures]


# ---------------------------------------------------------------------------- public entry


def _default_preflight(needed: int, path: Path) -> None:
    preflight(needed, path)


def _preflight_by_device(jobs: list[_FileJob], preflight_fn: PreflightFn) -> None:
    """Refuse before the first byte when a filesystem lacks room (one check per filesystem)."""
    by_device: dict[int, tuple[Path, list[PullItem]]] = {}
    for job in jobs:
        dev = device_of(job.item.dest.parent)
        path, items = by_device.setdefault(dev, (existing_parent(job.item.dest.parent), []))
        items.append(job.item)
    for path, items in by_device.values():
        preflight_fn(bytes_to_write(items), path)


def pull(
    items: Iterable[PullItem],
    store: ObjectStore,
    *,
    settings: PullSettings | None = None,
    progress: Progress | None = None,
    preflight_fn: PreflightFn | None = _default_preflight,
    on_plan: Callable[[int, int], None] | None = None,
) -> PullReport:
    """Make every item present and verified at its ``dest``; see the module docstring.

    ``progress(n)`` is called with each batch of bytes that reached the disk: downloaded
    ranges, and at a file's start the bytes an interrupted run left (resumed); a negative
    ``n`` rewinds a file that is downloaded again after a hash mismatch. Calls are serialised
    and come from worker threads.

    ``on_plan(files, bytes)`` is called once the files to download are known, before the
    first byte. ``preflight_fn(bytes_needed, path)`` runs per filesystem before any byte is
    written (``None`` skips it); the default is ``disk.preflight``.

    Per-file failures do not stop the other files: they come back with ``status="failed"``
    (``report.raise_for_failures()`` turns them into an exception). Failures before the first
    byte (``InsufficientDiskError``) and interrupts (``KeyboardInterrupt``) raise; partial
    files are then kept with their journal so the next run resumes.

    (Over 80 lines with this docstring; the body is one check -> plan -> download -> report
    sequence that reads best in one place.)
    """
    settings = settings or PullSettings()
    items = list(items)
    t0 = time.monotonic()
    checks = _check_all(items, settings)
    verify_seconds = time.monotonic() - t0

    results: dict[int, PullResult] = {}
    jobs: list[_FileJob] = []
    job_of: dict[int, _FileJob] = {}
    for n, check in enumerate(checks):
        item = check.item
        if check.error is not None:
            results[n] = PullResult(
                key=item.key,
                dest=item.dest,
                status="failed",
                bytes=0,
                seconds=0.0,
                error=check.error.one_line()
                if isinstance(check.error, ComfyfleetError)
                else repr(check.error),
                size=item.size,
                exception=check.error,
            )
        elif check.present:
            item.part.unlink(missing_ok=True)  # leftovers of an older interrupted run
            item.journal.unlink(missing_ok=True)
            results[n] = PullResult(
                key=item.key,
                dest=item.dest,
                status="present",
                bytes=0,
                seconds=0.0,
                size=item.size,
                verified=check.verified,
            )
        else:
            job_of[n] = _FileJob(item, settings, replacing=check.replacing)
            jobs.append(job_of[n])

    if preflight_fn is not None and jobs:
        _preflight_by_device(jobs, preflight_fn)
    if on_plan is not None:
        on_plan(len(jobs), sum(j.item.size for j in jobs))

    t1 = time.monotonic()
    puller = _Puller(store, settings, progress)
    puller.run(jobs)
    download_seconds = time.monotonic() - t1 if jobs else 0.0
    for n, job in job_of.items():
        result = _final(job).result
        assert result is not None
        results[n] = result

    ordered = [results[n] for n in range(len(items))]
    return PullReport(
        items=ordered,
        bytes_downloaded=sum(r.bytes for r in ordered),
        seconds=time.monotonic() - t0,
        verify_seconds=verify_seconds,
        download_seconds=download_seconds,
        bytes_present=sum(r.size for r in ordered if r.status == "present"),
        bytes_resumed=sum(r.resumed_bytes for r in ordered),
        bytes_hashed_present=sum(c.hashed_bytes for c in checks),
        reader=puller.reader if jobs else "",
    )


def describe(report: PullReport) -> str:
    """One line for logs: counts, bytes and speed."""
    return (
        f"{report.count('placed')} placed, {report.count('replaced')} replaced, "
        f"{report.count('present')} present, {report.count('failed')} failed; "
        f"{format_bytes(report.bytes_downloaded)} in {report.download_seconds:.1f} s "
        f"({report.download_mb_per_s:.0f} MB/s)"
    )
