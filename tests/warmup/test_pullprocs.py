"""The pull across worker processes (``pullprocs``) against a real SeaweedFS: the same
placed files, markers and report as one process; integrity and resume across a dead worker."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import comfyfleet.pullprocs as pullprocs
from comfyfleet.errors import ComfyfleetError, IntegrityError
from comfyfleet.store.base import ObjectStore
from comfyfleet.transfer import PullSettings, plan_pull, pull, read_journal
from tests.warmup.test_transfer import RS, blob, leftovers, put, sha, statuses

TWO = PullSettings(range_size=RS, max_workers=8, retry_backoff_s=0.01, processes=2)
ONE = PullSettings(range_size=RS, max_workers=8, retry_backoff_s=0.01, processes=1)


def test_processes_auto_and_forced() -> None:
    auto = PullSettings()
    assert auto.processes_for(6, cpus=2) == 1  # small hosts: no change
    assert auto.processes_for(6, cpus=16) == 4
    assert auto.processes_for(3, cpus=16) == 3
    assert auto.processes_for(40, cpus=64) == 8
    assert auto.processes_for(1, cpus=64) == 1
    assert PullSettings(processes=2).processes_for(6, cpus=2) == 2
    assert PullSettings(processes=4).processes_for(2, cpus=2) == 2
    with pytest.raises(ComfyfleetError, match="processes 0 must be >= 1"):
        PullSettings(processes=0)


def test_split_by_bytes_and_workers() -> None:
    groups = pullprocs.split_by_bytes([10, 50, 30, 5, 20, 1], 3)
    assert groups == [[1], [2, 3], [0, 4, 5]]  # 50 | 30 + 5 | 20 + 10 + 1
    shares = pullprocs.share_workers(PullSettings(max_workers=32), [50, 31, 35])
    assert [s.max_workers for s in shares] == [14, 9, 10]
    assert {s.processes for s in shares} == {1}
    assert [s.max_workers for s in pullprocs.share_workers(ONE, [1, 1, 98])] == [4, 4, 8]


def _payloads() -> dict[str, bytes]:
    return {
        "big.safetensors": blob(9 * RS + 7, 1),
        "mid.safetensors": blob(5 * RS + 1, 2),
        "small.pt": blob(RS - 3, 3),
        "empty.bin": b"",
        "two.safetensors": blob(2 * RS, 4),
    }


def test_two_processes_match_one(s3_store: ObjectStore, tmp_path: Path) -> None:
    payloads = _payloads()
    entries = [put(s3_store, "checkpoints", name, data) for name, data in payloads.items()]
    reports = {}
    seen: dict[str, list[int]] = {}
    for name, settings in (("one", ONE), ("two", TWO)):
        items = plan_pull(entries, tmp_path / name)
        seen[name] = []
        reports[name] = pull(items, s3_store, settings=settings, progress=seen[name].append)
        for item, data in zip(items, payloads.values(), strict=True):
            assert item.dest.read_bytes() == data
            assert item.marker is not None
            marker = json.loads(item.marker.read_text())
            assert marker["sha256"] == sha(data) and marker["ino"] == os.stat(item.dest).st_ino
        assert leftovers(tmp_path / name) == []

    one, two = reports["one"], reports["two"]
    assert one.processes == 1 and two.processes == 2
    assert two.reader == one.reader == "presigned-http"
    total = sum(len(d) for d in payloads.values())
    assert sum(seen["two"]) == sum(seen["one"]) == total == two.bytes_downloaded
    keep = ("key", "status", "bytes", "size", "resumed_bytes", "verified", "attempts", "error")
    for a, b in zip(one.items, two.items, strict=True):
        assert {k: getattr(a, k) for k in keep} == {k: getattr(b, k) for k in keep}
        assert a.dest.relative_to(tmp_path / "one") == b.dest.relative_to(tmp_path / "two")

    again = pull(plan_pull(entries, tmp_path / "two"), s3_store, settings=TWO)
    assert statuses(again) == ["present"] * len(payloads) and again.processes == 1


def test_corrupt_object_in_one_worker_is_not_placed(s3_store: ObjectStore, tmp_path: Path) -> None:
    good = blob(6 * RS + 5, 10)
    bad = bytearray(good)
    bad[2 * RS + 1] ^= 0x01
    entries = [
        put(s3_store, "checkpoints", "bad.safetensors", bytes(bad), claim=good),
        put(s3_store, "vae", "a.safetensors", blob(3 * RS, 11)),
        put(s3_store, "vae", "b.safetensors", blob(2 * RS + 9, 12)),
    ]
    items = plan_pull(entries, tmp_path)
    report = pull(items, s3_store, settings=TWO)
    assert report.processes == 2
    assert statuses(report) == ["failed", "placed", "placed"]
    failed = report.items[0]
    assert failed.attempts == 2 and isinstance(failed.exception, IntegrityError)
    assert sha(good) in (failed.error or "") and sha(bytes(bad)) in (failed.error or "")
    assert not items[0].dest.exists() and leftovers(tmp_path) == []
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        report.raise_for_failures()


# ---------------------------------------------------------------------------- a dead worker


class SlowRelay:
    """A throttling HTTP relay in front of the S3 endpoint (GETs only, keep-alive).

    Presigned URLs sign the Host header, so the relay puts the real one back into each
    request; responses come back at about ``rate`` bytes/s.
    """

    def __init__(self, target: str, rate: float) -> None:
        parts = urllib.parse.urlsplit(target)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.host = parts.netloc.encode()
        self.rate = rate
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._responses, args=(upstream, client), daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        data = b""
        try:
            while chunk := client.recv(65536):
                data += chunk
                while b"\r\n\r\n" in data:
                    head, data = data.split(b"\r\n\r\n", 1)
                    lines = [
                        b"Host: " + self.host if line.lower().startswith(b"host:") else line
                        for line in head.split(b"\r\n")
                    ]
                    upstream.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
        except OSError:
            pass
        finally:
            upstream.close()

    def _responses(self, upstream: socket.socket, client: socket.socket) -> None:
        try:
            while chunk := upstream.recv(16384):
                client.sendall(chunk)
                time.sleep(len(chunk) / self.rate)
        except OSError:
            pass
        finally:
            client.close()

    def close(self) -> None:
        self.closed = True
        self.sock.close()


class RelayedStore:
    """The S3 store, its presigned URLs pointing at the relay."""

    def __init__(self, inner: ObjectStore, relay: SlowRelay) -> None:
        self.inner = inner
        self.relay = relay

    def presign_get(self, key: str, expires_s: int = 3600) -> str | None:
        url = self.inner.presign_get(key, expires_s)
        assert url is not None
        parts = urllib.parse.urlsplit(url)
        return parts._replace(netloc=f"127.0.0.1:{self.relay.port}").geturl()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def relay(s3_server: Any) -> Iterator[SlowRelay]:
    r = SlowRelay(s3_server.endpoint_url, rate=1024 * 1024)
    yield r
    r.close()


def _worker_writing(part: Path) -> int | None:
    """The pid of this process's child that has ``part`` open."""
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
    for pid in children:
        with_fds = Path(f"/proc/{pid}/fd")
        try:
            if any(os.readlink(fd) == str(part) for fd in with_fds.iterdir()):
                return int(pid)
        except OSError:
            continue
    return None


def test_killed_worker_fails_its_files_and_they_resume(
    s3_store: ObjectStore,
    relay: SlowRelay,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    big = blob(32 * RS + 11, 20)
    other = blob(4 * RS, 21)
    entries = [
        put(s3_store, "checkpoints", "big.safetensors", big),
        put(s3_store, "vae", "other.safetensors", other),
    ]
    items = plan_pull(entries, tmp_path)
    monkeypatch.setattr(pullprocs, "_PROGRESS_BYTES", RS)
    settings = PullSettings(
        range_size=RS, max_workers=8, journal_interval_s=0, processes=2, retry_backoff_s=0.01
    )
    done = [0]
    killed: list[int] = []

    def progress(n: int) -> None:
        done[0] += n
        if not killed and done[0] >= 12 * RS:
            pid = _worker_writing(items[0].part)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    first = pull(items, RelayedStore(s3_store, relay), settings=settings, progress=progress)

    assert killed, "the worker with the big file was never seen"
    assert statuses(first) == ["failed", "placed"]
    assert f"pid {killed[0]}) was killed by signal 9" in (first.items[0].error or "")
    assert "rerun the warm-up" in (first.items[0].error or "")
    assert items[1].dest.read_bytes() == other
    assert not items[0].dest.exists() and items[0].part.exists()
    journaled = sum(e - s for s, e in read_journal(items[0]))
    assert 0 < journaled < len(big)

    second = pull(items, s3_store, settings=settings)
    assert statuses(second) == ["placed", "present"]
    assert second.items[0].resumed_bytes == journaled
    assert second.bytes_downloaded == len(big) - journaled
    assert items[0].dest.read_bytes() == big and leftovers(tmp_path) == []
