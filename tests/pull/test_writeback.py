"""Write-behind for buffered pulls: the order of sync_file_range calls, the fallbacks, and a
pull on the buffered path (with the real call, and with none)."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

import comfyfleet.pull.transfer as transfer
import comfyfleet.pull.writeback as writeback
from comfyfleet.pull.transfer import PullSettings, hash_file, plan_pull, pull
from comfyfleet.pull.writeback import (
    SYNC_FILE_RANGE_WAIT_AFTER,
    SYNC_FILE_RANGE_WAIT_BEFORE,
    SYNC_FILE_RANGE_WRITE,
    WriteBehind,
)
from comfyfleet.store.base import ObjectStore
from comfyfleet.store.manifest import ManifestEntry

WAIT = SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER
RS = 64 * 1024


class Recorder:
    """Records each call and passes it on to the real ``sync_file_range`` when given one."""

    def __init__(self, real: writeback.SyncFileRange | None = None, fail: int | None = None):
        self.calls: list[tuple[int, int, int]] = []
        self.real = real
        self.fail = fail

    def __call__(self, fd: int, offset: int, nbytes: int, flags: int) -> None:
        self.calls.append((offset, nbytes, flags))
        if self.fail is not None:
            raise OSError(self.fail, os.strerror(self.fail))
        if self.real is not None:
            self.real(fd, offset, nbytes, flags)


def test_each_range_is_started_and_the_one_a_window_back_waited_for() -> None:
    rec = Recorder()
    behind = WriteBehind(3, window=2, syscall=rec)
    for i in range(4):
        behind.written(i * 10, 10)
    assert rec.calls == [
        (0, 10, SYNC_FILE_RANGE_WRITE),
        (10, 10, SYNC_FILE_RANGE_WRITE),
        (20, 10, SYNC_FILE_RANGE_WRITE),
        (0, 10, WAIT),
        (30, 10, SYNC_FILE_RANGE_WRITE),
        (10, 10, WAIT),
    ]


def test_without_a_window_each_range_is_only_started() -> None:
    rec = Recorder()
    behind = WriteBehind(3, window=None, syscall=rec)
    for i in range(4):
        behind.written(i * 10, 10)
    assert rec.calls == [(i * 10, 10, SYNC_FILE_RANGE_WRITE) for i in range(4)]


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP])
def test_a_refusing_kernel_or_filesystem_switches_write_behind_off(code: int) -> None:
    rec = Recorder(fail=code)
    behind = WriteBehind(3, window=1, syscall=rec)
    behind.written(0, 10)
    behind.written(10, 10)
    assert len(rec.calls) == 1 and not behind.active


def test_a_real_io_error_is_not_swallowed() -> None:
    behind = WriteBehind(3, window=1, syscall=Recorder(fail=errno.EIO))
    with pytest.raises(OSError) as info:
        behind.written(0, 10)
    assert info.value.errno == errno.EIO


def test_without_sync_file_range_every_call_is_a_no_op() -> None:
    behind = WriteBehind(-1, window=1, syscall=None)  # a bad fd: any real call would fail
    behind.written(0, 10)
    assert not behind.active


def test_the_c_library_without_sync_file_range_gives_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class NoSuchCall:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

    monkeypatch.setattr(ctypes, "CDLL", NoSuchCall)
    assert writeback._load_sync_file_range() is None

    def no_library(*args: object, **kwargs: object) -> None:
        raise OSError("no C library")

    monkeypatch.setattr(ctypes, "CDLL", no_library)
    assert writeback._load_sync_file_range() is None


@pytest.mark.skipif(os.uname().sysname != "Linux", reason="sync_file_range is Linux's")
def test_the_real_call_works_on_a_file(tmp_path: Path) -> None:
    real = writeback.libc_sync_file_range()
    assert real is not None
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        for i in range(4):
            os.pwrite(fd, bytes([i]) * 4096, i * 4096)
            WriteBehind(fd, window=1, syscall=real).written(i * 4096, 4096)
        with pytest.raises(OSError) as info:  # a closed fd is an error, not "unsupported"
            real(10_000, 0, 4096, SYNC_FILE_RANGE_WRITE)
        assert info.value.errno == errno.EBADF
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(bytes([i]) * 4096 for i in range(4))


def _entry(store: ObjectStore, data: bytes) -> ManifestEntry:
    key = "models/checkpoints/c.safetensors"
    store.put_bytes(key, data, metadata={})
    return ManifestEntry(
        id="c",
        key=key,
        folder="checkpoints",
        file="c.safetensors",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        source="test",
        mirrored_at=datetime.now(UTC),
    )


@pytest.mark.parametrize("available", [True, False])
def test_buffered_pull_uses_write_behind_when_there_is_one(
    local_store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, available: bool
) -> None:
    data = random.Random(5).randbytes(9 * RS + 4097)
    items = plan_pull([_entry(local_store, data)], tmp_path / "ComfyUI")
    rec = Recorder(real=writeback.libc_sync_file_range())
    monkeypatch.setattr(writeback, "_SYNC_FILE_RANGE", rec if available else None)
    monkeypatch.setattr(transfer, "WRITE_BEHIND_WAIT_BYTES", 4 * RS)  # waits 4 ranges back
    settings = PullSettings(range_size=RS, max_workers=3, direct_io=False, write_behind=True)
    report = pull(items, local_store, settings=settings)
    assert report.ok and hash_file(items[0].dest) == hashlib.sha256(data).hexdigest()
    if available:
        started = sorted((o, n) for o, n, f in rec.calls if f == SYNC_FILE_RANGE_WRITE)
        assert started == [(s, min(RS, len(data) - s)) for s in range(0, len(data), RS)]
        assert sum(1 for *_, f in rec.calls if f == WAIT) == 10 - 4  # all but the last window
    else:
        assert rec.calls == []


@pytest.mark.parametrize("direct_io", [True, False], ids=["direct", "buffered"])
def test_only_the_write_behind_path_calls_sync_file_range(
    local_store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct_io: bool
) -> None:
    data = random.Random(6).randbytes(4 * RS)
    items = plan_pull([_entry(local_store, data)], tmp_path / "ComfyUI")
    rec = Recorder(real=writeback.libc_sync_file_range())
    monkeypatch.setattr(writeback, "_SYNC_FILE_RANGE", rec)
    settings = PullSettings(range_size=RS, direct_io=direct_io, write_behind=False)
    report = pull(items, local_store, settings=settings)
    assert report.ok and items[0].dest.read_bytes() == data
    if not direct_io or (os.uname().sysname == "Linux" and not _is_tmpfs(tmp_path)):
        assert rec.calls == []


def _is_tmpfs(path: Path) -> bool:
    """tmpfs has no O_DIRECT: there the direct path writes buffered (with write-behind)."""
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    best = max(
        (line.split() for line in mounts if str(path).startswith(line.split()[1])),
        key=lambda parts: len(parts[1]),
    )
    return best[2] == "tmpfs"
