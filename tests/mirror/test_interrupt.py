"""Ctrl-C during ``comfyfleet mirror``: stop within about a second, keep the unfinished
multipart upload for the next run, and leave manifest.json in agreement with the store."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from comfyfleet.store.local import INTERNAL_DIR, LocalStore
from comfyfleet.store.manifest import entry_matches, read_manifest
from tests.doubles.faults import Recorded, Request, Server
from tests.mirror.support import MiB, payload

ROOT = Path(__file__).resolve().parents[2]
BIG = payload(96 * MiB, seed=7)
SMALL = payload(200_000, seed=8)
FAST_PREFIX = 66 * MiB  # past the first 64 MiB part, so a multipart upload exists


class SlowFiles:
    """Serves two files over http; ``/big.bin`` trickles after its first 66 MiB (4 MiB/s)
    until ``fast`` is set. Ignores Range (200 + whole file), which sources must handle."""

    def __init__(self) -> None:
        self.fast = threading.Event()

    def route(self, req: Request) -> None:
        data = {"/big.bin": BIG, "/small.bin": SMALL}.get(req.path)
        if data is None:
            req.send(404, b"not found")
            return
        h = req.handler
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        h.send_header("Content-Type", "application/octet-stream")
        h.end_headers()
        if req.method == "HEAD":
            return
        view = memoryview(data)
        h.wfile.write(view[:FAST_PREFIX])
        pos = FAST_PREFIX
        while pos < len(data):
            step = len(data) - pos if self.fast.is_set() else 256 * 1024
            h.wfile.write(view[pos : pos + step])
            pos += step
            if not self.fast.is_set():
                time.sleep(step / (4 * MiB))


@pytest.fixture
def slow_files() -> Iterator[tuple[SlowFiles, str]]:
    state = SlowFiles()
    log: list[Recorded] = []
    server = Server("files", state.route, log, threading.Lock())
    server.start()
    try:
        yield state, server.url
    finally:
        state.fast.set()
        server.stop()


def _catalog(tmp_path: Path, url: str) -> str:
    def entry(model_id: str, name: str, data: bytes) -> dict[str, object]:
        return {
            "id": model_id,
            "folder": "checkpoints",
            "file": name,
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "source": {"type": "url", "url": f"{url}/{name}"},
        }

    path = tmp_path / "cat.yaml"
    models = [entry("small", "small.bin", SMALL), entry("big", "big.bin", BIG)]
    path.write_text(yaml.safe_dump({"schema": 1, "models": models}))
    return str(path)


def _mirror(catalog: str, store: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "comfyfleet", "mirror", "--catalog", catalog]
        + ["--store", str(store), "--parallel", "2", "--json"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _assert_manifest_matches_store(store: LocalStore) -> set[str]:
    manifest = read_manifest(store)
    for entry in manifest.entries:
        info = store.exists(entry.key)
        assert info is not None and entry_matches(entry, info), entry.key
    in_store = {info.key for info in store.list("models/")}
    assert in_store == {e.key for e in manifest.entries}
    return {e.id for e in manifest.entries}


def test_ctrl_c_stops_within_a_second_and_keeps_the_store_consistent(
    slow_files: tuple[SlowFiles, str], tmp_path: Path
) -> None:
    files, url = slow_files
    catalog = _catalog(tmp_path, url)
    root = tmp_path / "store"
    proc = _mirror(catalog, root)
    uploads = root / INTERNAL_DIR / "uploads"
    deadline = time.monotonic() + 60
    while not list(uploads.glob("*/part-00001")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the first part never reached the store"
        time.sleep(0.05)
    time.sleep(0.3)  # well inside the slow tail (another ~7 s to go)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    took = time.monotonic() - sent
    print(f"exited {took:.2f} s after SIGINT")
    assert proc.returncode == 130, err.decode()
    # The bound is 1 s; the slack covers a loaded two-core test machine.
    assert took < 2.0, f"exited {took:.2f} s after SIGINT"

    store = LocalStore(root)
    assert _assert_manifest_matches_store(store) == {"small"}
    assert store.exists("models/checkpoints/big.bin") is None
    (kept,) = store.find_multipart("models/checkpoints/big.bin")
    assert kept.list_parts(), "the unfinished upload is kept for the next run"

    # The next run resumes: the big file lands and the manifest records both.
    files.fast.set()
    rerun = _mirror(catalog, root)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err.decode()
    statuses = {r["id"]: r["status"] for r in yaml.safe_load(out)["results"]}
    assert statuses == {"small": "skipped", "big": "mirrored"}
    assert _assert_manifest_matches_store(store) == {"small", "big"}
    assert store.find_multipart("models/checkpoints/big.bin") == []
