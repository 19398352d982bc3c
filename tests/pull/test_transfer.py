"""The pull engine against LocalStore and a real SeaweedFS: placement, integrity, resume."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import comfyfleet.pull.transfer as transfer
from comfyfleet.errors import (
    ConfigError,
    InsufficientDiskError,
    IntegrityError,
    LockHeldError,
    StoreUnavailable,
)
from comfyfleet.pull.disk import preflight
from comfyfleet.pull.transfer import (
    PullItem,
    PullReport,
    PullSettings,
    bytes_to_write,
    hash_file,
    plan_pull,
    pull,
    read_journal,
)
from comfyfleet.store.base import ObjectStore
from comfyfleet.store.local import LocalStore
from comfyfleet.store.manifest import ManifestEntry
from comfyfleet.warmup.lock import RootLock

RS = 64 * 1024  # small ranges, so small files still span many of them
SETTINGS = PullSettings(range_size=RS, max_workers=4, retry_backoff_s=0.01)
REPO = Path(__file__).resolve().parents[2]


def blob(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put(store: ObjectStore, folder: str, file: str, data: bytes, *, claim: bytes | None = None):  # type: ignore[no-untyped-def]
    """Upload ``data``; the manifest entry describes ``claim`` (default: the same bytes)."""
    key = f"models/{folder}/{file}"
    store.put_bytes(key, data, metadata={"sha256": sha(data)})
    described = data if claim is None else claim
    return ManifestEntry(
        id=file.replace("/", "-").lower(),
        key=key,
        folder=folder,
        file=file,
        size=len(described),
        sha256=sha(described),
        source="test",
        mirrored_at=datetime.now(UTC),
    )


def leftovers(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.name.endswith((".part", ".part.journal")))


def statuses(report: PullReport) -> list[str]:
    return [r.status for r in report.items]


class CountingStore:
    """Delegates to a real store and counts ranged reads (and can fail some)."""

    def __init__(self, inner: ObjectStore, *, fail_after: int | None = None, failures: int = 0):
        self.inner = inner
        self.gets = 0
        self.fail_after = fail_after
        self.failures = failures
        self.lock = threading.Lock()

    def get_range(self, key: str, start: int, end: int) -> bytes:
        with self.lock:
            self.gets += 1
            failing = (
                self.fail_after is not None and self.gets > self.fail_after and self.failures > 0
            )
            if failing:
                self.failures -= 1
        if failing:
            raise StoreUnavailable(f"read {key!r}: 503 Slow Down", store=self.inner.uri)
        return self.inner.get_range(key, start, end)

    def presign_get(self, key: str, expires_s: int = 3600) -> str | None:
        return None  # no presigned fast path: every range goes through get_range, counted

    def __getattr__(self, name: str) -> Any:
        if name == "get_range_into":
            raise AttributeError(name)
        return getattr(self.inner, name)


@pytest.fixture
def comfy(tmp_path: Path) -> Path:
    return tmp_path / "ComfyUI"


# ---------------------------------------------------------------------------- planning


def test_plan_maps_entries_to_comfy_folders(local_store: ObjectStore, comfy: Path) -> None:
    entries = [
        put(local_store, "checkpoints", "a.safetensors", b"a"),
        put(local_store, "CogVideo", "CogVideoX-5b/transformer/x.safetensors", b"b"),
    ]
    items = plan_pull(entries, comfy)
    assert items[0].dest == comfy / "models" / "checkpoints" / "a.safetensors"
    assert items[0].marker == comfy / ".comfyfleet" / "markers" / "checkpoints" / (
        "a.safetensors.json"
    )
    assert items[1].dest == comfy / "models/CogVideo/CogVideoX-5b/transformer/x.safetensors"
    assert items[0].part.name == "a.safetensors.part"
    outside = plan_pull(entries, comfy, models_dir=comfy.parent / "volume" / "models")
    assert outside[0].dest == comfy.parent / "volume/models/checkpoints/a.safetensors"
    assert outside[0].marker == comfy.parent / "volume/.comfyfleet/markers/checkpoints" / (
        "a.safetensors.json"
    )


@pytest.mark.parametrize(
    ("folder", "file"),
    [
        ("..", "x.bin"),
        ("checkpoints", "../x.bin"),
        ("checkpoints", "a/../../x"),
        ("a/b", "x.bin"),
        ("checkpoints", "/etc/passwd"),
        ("checkpoints", "a\\b"),
    ],
)
def test_plan_refuses_names_that_escape(folder: str, file: str, comfy: Path) -> None:
    entry = ManifestEntry.model_construct(
        id="x",
        key="models/x",
        folder=folder,
        file=file,
        size=1,
        sha256="0" * 64,
        source="t",
        mirrored_at=datetime.now(UTC),
    )
    with pytest.raises(ConfigError, match="would escape the ComfyUI models folder"):
        plan_pull([entry], comfy)


def test_plan_refuses_two_entries_on_one_file(local_store: ObjectStore, comfy: Path) -> None:
    a = put(local_store, "loras", "x.safetensors", b"a")
    b = a.model_copy(update={"key": "models/loras/other", "id": "other"})
    with pytest.raises(ConfigError, match="both land on"):
        plan_pull([a, b], comfy)


def test_hash_file(tmp_path: Path) -> None:
    for size in (0, 1, 4096, 1024 * 1024, 3 * 1024 * 1024 + 5):
        data = blob(size, size)
        (tmp_path / "f").write_bytes(data)
        assert hash_file(tmp_path / "f", chunk=1024 * 1024) == sha(data), size


@pytest.mark.parametrize(("start", "end"), [(0, 5000), (4096, 3 * RS + 1), (7, 100), (RS, None)])
def test_hash_region(tmp_path: Path, start: int, end: int | None) -> None:
    data = blob(3 * RS + 1, 2)
    (tmp_path / "f").write_bytes(data)
    digest = hashlib.sha256()
    n = transfer.hash_region(tmp_path / "f", digest, start, end, chunk=8192)
    assert n == len(data[start:end]) and digest.hexdigest() == sha(data[start:end])


# ---------------------------------------------------------------------------- full pull


def test_full_pull_then_everything_present(store: ObjectStore, comfy: Path) -> None:
    sizes = {
        "empty.safetensors": 0,
        "one.bin": 1,
        "just-under.pt": RS - 1,
        "just-over.pt": RS + 1,
        "several.safetensors": 5 * RS + 123,
    }
    payloads = {name: blob(size, n) for n, (name, size) in enumerate(sizes.items())}
    entries = [put(store, "checkpoints", name, data) for name, data in payloads.items()]
    entries.append(put(store, "CogVideo", "5b/vae/model.safetensors", blob(2 * RS + 9, 99)))
    payloads["5b/vae/model.safetensors"] = blob(2 * RS + 9, 99)
    items = plan_pull(entries, comfy)
    seen: list[int] = []
    planned: list[tuple[int, int]] = []

    report = pull(
        items,
        store,
        settings=SETTINGS,
        progress=seen.append,
        on_plan=lambda f, b: planned.append((f, b)),
    )

    total = sum(len(d) for d in payloads.values())
    assert report.ok, [r.error for r in report.failed]
    assert statuses(report) == ["placed"] * len(items)
    assert {r.verified for r in report.items} == {"downloaded"}
    assert report.bytes_downloaded == total == sum(seen)
    assert report.reader == (
        "store.get_range" if isinstance(store, LocalStore) else "presigned-http"
    )
    assert planned == [(len(items), total)]
    for item, data in zip(items, payloads.values(), strict=True):
        assert item.dest.read_bytes() == data
        assert item.marker is not None and json.loads(item.marker.read_text())["sha256"] == sha(
            data
        )
    assert leftovers(comfy) == []

    again = pull(items, store, settings=SETTINGS)
    assert statuses(again) == ["present"] * len(items)
    assert {r.verified for r in again.items} == {"marker"}
    assert again.bytes_downloaded == 0 and again.bytes_present == total


def test_many_files_hold_few_file_descriptors(local_store: ObjectStore, comfy: Path) -> None:
    import resource

    payloads = {f"lora-{i:03d}.safetensors": blob(1000 + i, i) for i in range(200)}
    entries = [put(local_store, "loras", name, data) for name, data in payloads.items()]
    items = plan_pull(entries, comfy)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 48, hard))  # 200 files won't fit
    try:
        report = pull(items, local_store, settings=SETTINGS)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert report.ok, report.failed[:1]
    assert all(i.dest.read_bytes() == d for i, d in zip(items, payloads.values(), strict=True))


@pytest.mark.parametrize("direct_io", [True, False])
@pytest.mark.parametrize("write_behind", [True, False])
def test_buffered_and_direct_writes_agree(
    local_store: ObjectStore, comfy: Path, direct_io: bool, write_behind: bool
) -> None:
    data = blob(7 * RS + 4097, 3)  # an unaligned tail, written buffered after direct bulk
    items = plan_pull([put(local_store, "vae", "v.safetensors", data)], comfy)
    settings = PullSettings(
        range_size=RS, max_workers=3, direct_io=direct_io, write_behind=write_behind
    )
    report = pull(items, local_store, settings=settings)
    assert report.ok and items[0].dest.read_bytes() == data


def test_hash_off_places_without_marker(local_store: ObjectStore, comfy: Path) -> None:
    data = blob(3 * RS, 4)
    items = plan_pull([put(local_store, "loras", "l.safetensors", data)], comfy)
    report = pull(items, local_store, settings=PullSettings(range_size=RS, hash=False))
    assert report.items[0].verified == "unverified"
    assert items[0].dest.read_bytes() == data
    assert items[0].marker is not None and not items[0].marker.exists()


# ---------------------------------------------------------------------------- integrity


def test_corrupted_object_is_caught_retried_and_never_placed(
    store: ObjectStore, comfy: Path
) -> None:
    good = blob(3 * RS + 17, 5)
    bad = bytearray(good)
    bad[RS + 3] ^= 0xFF  # one flipped bit in the store's copy
    entry = put(store, "checkpoints", "model.safetensors", bytes(bad), claim=good)
    ok_entry = put(store, "vae", "fine.safetensors", blob(RS, 6))
    items = plan_pull([entry, ok_entry], comfy)
    counting = CountingStore(store)

    report = pull(items, counting, settings=SETTINGS)

    bad_result, ok_result = report.items
    assert bad_result.status == "failed" and ok_result.status == "placed"
    assert bad_result.attempts == 2  # downloaded again from scratch once, then given up
    assert counting.gets == 2 * 4 + 1
    assert isinstance(bad_result.exception, IntegrityError)
    assert bad_result.error is not None
    assert sha(good) in bad_result.error and sha(bytes(bad)) in bad_result.error
    assert "nothing was placed" in bad_result.error
    assert not items[0].dest.exists()
    assert leftovers(comfy) == []
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        report.raise_for_failures()


def test_object_shorter_than_manifest(local_store: ObjectStore, comfy: Path) -> None:
    data = blob(2 * RS + 5, 7)
    entry = put(local_store, "checkpoints", "short.safetensors", data[:-5], claim=data)
    items = plan_pull([entry], comfy)
    report = pull(items, local_store, settings=SETTINGS)
    assert report.items[0].status == "failed"
    assert "size mismatch" in (report.items[0].error or "")
    assert not items[0].dest.exists() and leftovers(comfy) == []


def test_a_folder_that_is_a_file_fails_that_file_not_the_pull(
    local_store: ObjectStore, comfy: Path
) -> None:
    entries = [
        put(local_store, "checkpoints", "a.safetensors", blob(RS, 1)),
        put(local_store, "vae", "b.safetensors", blob(RS, 2)),
    ]
    (comfy / "models").mkdir(parents=True)
    (comfy / "models" / "checkpoints").write_bytes(b"not a folder")
    items = plan_pull(entries, comfy)
    # The cleanup of the failed file must not raise over its failure (NotADirectoryError).
    report = pull(items, local_store, settings=SETTINGS, preflight_fn=None)
    assert statuses(report) == ["failed", "placed"]
    assert "FileExistsError" in (report.items[0].error or "")  # mkdir of the folder
    assert items[1].dest.read_bytes() == blob(RS, 2)


def test_stale_wrong_size_file_is_replaced(store: ObjectStore, comfy: Path) -> None:
    data = blob(2 * RS + 1, 8)
    items = plan_pull([put(store, "checkpoints", "m.safetensors", data)], comfy)
    items[0].dest.parent.mkdir(parents=True)
    items[0].dest.write_bytes(data[:RS])  # a truncated leftover of some older tool
    report = pull(items, store, settings=SETTINGS)
    assert statuses(report) == ["replaced"]
    assert items[0].dest.read_bytes() == data


def test_same_size_wrong_content_fast_without_marker_is_rehashed(
    local_store: ObjectStore, comfy: Path
) -> None:
    data = blob(2 * RS, 9)
    items = plan_pull([put(local_store, "loras", "x.safetensors", data)], comfy)
    items[0].dest.parent.mkdir(parents=True)
    items[0].dest.write_bytes(blob(2 * RS, 10))  # right size, wrong bytes, no marker
    report = pull(items, local_store, settings=SETTINGS)
    assert statuses(report) == ["replaced"]
    assert report.bytes_hashed_present == 2 * RS
    assert items[0].dest.read_bytes() == data


def test_same_size_wrong_content_is_replaced_with_verify_full(
    local_store: ObjectStore, comfy: Path
) -> None:
    data = blob(2 * RS, 11)
    items = plan_pull([put(local_store, "loras", "x.safetensors", data)], comfy)
    assert pull(items, local_store, settings=SETTINGS).ok
    # Tamper in place, keeping inode, size and mtime: only a full re-hash can tell.
    st = os.stat(items[0].dest)
    with open(items[0].dest, "r+b") as f:
        f.seek(100)
        f.write(b"\x00" * 8)
    os.utime(items[0].dest, ns=(st.st_atime_ns, st.st_mtime_ns))

    fast = pull(items, local_store, settings=SETTINGS)
    assert fast.items[0].verified == "marker"  # fast trusts the marker: that is its contract
    full = pull(items, local_store, settings=PullSettings(range_size=RS, verify="full"))
    assert statuses(full) == ["replaced"]
    assert items[0].dest.read_bytes() == data
    again = pull(items, local_store, settings=PullSettings(range_size=RS, verify="full"))
    assert statuses(again) == ["present"] and again.items[0].verified == "hashed"


def test_marker_fast_path_reads_no_file(
    local_store: ObjectStore, comfy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = [
        put(local_store, "checkpoints", f"m{i}.safetensors", blob(RS + i, i)) for i in range(3)
    ]
    items = plan_pull(entries, comfy)
    assert pull(items, local_store, settings=SETTINGS).ok

    def no_reading(path: Path, chunk: int = 0) -> str:
        raise AssertionError(f"read {path}")

    monkeypatch.setattr(transfer, "hash_file", no_reading)
    report = pull(items, local_store, settings=SETTINGS)
    assert statuses(report) == ["present"] * 3
    assert report.bytes_hashed_present == 0

    # A touched file no longer matches its marker: it is re-hashed (here: would be read).
    os.utime(items[1].dest, ns=(1, 1))
    with pytest.raises(AssertionError, match="m1.safetensors"):
        pull(items, local_store, settings=SETTINGS)
    monkeypatch.undo()
    report = pull(items, local_store, settings=SETTINGS)
    assert [r.verified for r in report.items] == ["marker", "hashed", "marker"]


# ---------------------------------------------------------------------------- disk


def test_disk_too_small_refuses_before_any_byte(local_store: ObjectStore, comfy: Path) -> None:
    entries = [
        put(local_store, "checkpoints", f"m{i}.safetensors", blob(3 * RS, i)) for i in range(2)
    ]
    items = plan_pull(entries, comfy)
    counting = CountingStore(local_store)

    def small_disk(needed: int, path: Path) -> None:
        preflight(needed, path, margin_bytes=0, margin_ratio=0.0, free_fn=lambda p: 4 * RS)

    with pytest.raises(InsufficientDiskError) as info:
        pull(items, counting, settings=SETTINGS, preflight_fn=small_disk)
    assert info.value.needed == 6 * RS and info.value.free == 4 * RS
    assert info.value.missing == 2 * RS
    assert counting.gets == 0
    assert not (comfy / "models").exists() or not any((comfy / "models").rglob("*.*"))


def test_preflight_counts_only_what_is_missing(local_store: ObjectStore, comfy: Path) -> None:
    entries = [
        put(local_store, "checkpoints", f"m{i}.safetensors", blob(3 * RS, i)) for i in range(3)
    ]
    items = plan_pull(entries, comfy)
    assert pull(items, local_store, settings=SETTINGS).ok
    items[0].dest.unlink()
    asked: list[int] = []
    report = pull(
        items,
        local_store,
        settings=SETTINGS,
        preflight_fn=lambda needed, path: asked.append(needed),
    )
    assert asked == [3 * RS] and statuses(report) == ["placed", "present", "present"]
    assert bytes_to_write(items) == 0


# ---------------------------------------------------------------------------- resume


def test_transient_errors_are_retried(local_store: ObjectStore, comfy: Path) -> None:
    data = blob(4 * RS, 12)
    items = plan_pull([put(local_store, "vae", "v.safetensors", data)], comfy)
    flaky = CountingStore(local_store, fail_after=1, failures=2)
    report = pull(items, flaky, settings=SETTINGS)
    assert report.ok and items[0].dest.read_bytes() == data


def test_store_outage_keeps_the_part_and_the_next_run_resumes(
    local_store: ObjectStore, comfy: Path
) -> None:
    data = blob(20 * RS + 3, 13)
    items = plan_pull([put(local_store, "checkpoints", "big.safetensors", data)], comfy)
    settings = PullSettings(
        range_size=RS, max_workers=1, journal_interval_s=0, retry_backoff_s=0.001
    )
    down = CountingStore(local_store, fail_after=8, failures=10**6)
    first = pull(items, down, settings=settings)
    assert statuses(first) == ["failed"]
    assert isinstance(first.items[0].exception, StoreUnavailable)
    assert not items[0].dest.exists()
    assert items[0].part.exists() and read_journal(items[0]) == [(0, 8 * RS)]

    second = pull(items, local_store, settings=settings)
    assert statuses(second) == ["placed"]
    assert second.bytes_resumed == 8 * RS
    assert second.bytes_downloaded == len(data) - 8 * RS
    assert items[0].dest.read_bytes() == data and leftovers(comfy) == []


def test_resume_hashes_the_prefix_from_disk(local_store: ObjectStore, comfy: Path) -> None:
    """A .part + journal from an interrupted run: only the missing ranges are fetched, and
    the sha256 covers the ranges already on disk (read back) as well as the new ones."""
    data = blob(10 * RS + 77, 14)
    items = plan_pull([put(local_store, "checkpoints", "r.safetensors", data)], comfy)
    item = items[0]
    item.dest.parent.mkdir(parents=True)
    part = bytearray(len(data))
    for start, end in ((0, 3 * RS), (5 * RS, 7 * RS)):  # holes: out-of-order completion
        part[start:end] = data[start:end]
    item.part.write_bytes(bytes(part))
    transfer._write_journal(item, [(0, 3 * RS), (5 * RS, 7 * RS)])
    counting = CountingStore(local_store)

    report = pull(items, counting, settings=SETTINGS)

    assert statuses(report) == ["placed"]
    assert counting.gets == 11 - 5
    assert report.bytes_resumed == 5 * RS
    assert report.bytes_downloaded == len(data) - 5 * RS
    assert item.dest.read_bytes() == data


def test_a_lying_journal_is_caught_by_the_hash(local_store: ObjectStore, comfy: Path) -> None:
    data = blob(4 * RS, 15)
    items = plan_pull([put(local_store, "checkpoints", "l.safetensors", data)], comfy)
    item = items[0]
    item.dest.parent.mkdir(parents=True)
    item.part.write_bytes(b"\x00" * len(data))  # the journal says [0, 2RS) is there; it is not
    transfer._write_journal(item, [(0, 2 * RS)])
    report = pull(items, local_store, settings=SETTINGS)
    assert statuses(report) == ["placed"] and report.items[0].attempts == 2
    assert item.dest.read_bytes() == data


def test_journal_for_another_file_is_ignored(local_store: ObjectStore, comfy: Path) -> None:
    data = blob(3 * RS, 16)
    items = plan_pull([put(local_store, "checkpoints", "j.safetensors", data)], comfy)
    items[0].dest.parent.mkdir(parents=True)
    items[0].part.write_bytes(b"\x00" * len(data))
    other = PullItem(items[0].key, items[0].dest, items[0].size, "f" * 64)
    transfer._write_journal(other, [(0, 3 * RS)])
    assert read_journal(items[0]) == []
    report = pull(items, local_store, settings=SETTINGS)
    assert report.items[0].attempts == 1 and report.bytes_downloaded == len(data)


def _store_spec(store: ObjectStore, request: pytest.FixtureRequest) -> dict[str, Any]:
    if isinstance(store, LocalStore):
        return {"type": "local", "root": str(store.root)}
    server = request.getfixturevalue("s3_server")
    return {
        "type": "s3",
        "bucket": store.bucket,
        "prefix": store.prefix,  # type: ignore[attr-defined]
        "endpoint_url": server.endpoint_url,
        "access_key": server.access_key,
        "secret_key": server.secret_key,
        "region": server.region,
    }


@pytest.fixture
def child_env() -> Iterator[dict[str, str]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    yield env


@pytest.mark.parametrize(
    "write_path",
    [{"direct_io": True}, {"direct_io": False}, {"direct_io": False, "write_behind": True}],
    ids=["direct", "buffered", "write-behind"],
)
def test_killed_mid_file_resumes(
    store: ObjectStore,
    comfy: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    child_env: dict[str, str],
    write_path: dict[str, bool],
) -> None:
    small = blob(RS + 5, 20)
    big = blob(48 * RS + 11, 21)
    entries = [
        put(store, "vae", "small.safetensors", small),
        put(store, "checkpoints", "big.safetensors", big),
    ]
    items = plan_pull(entries, comfy)
    config = {
        "store": _store_spec(store, request),
        "items": [
            {
                "key": i.key,
                "dest": str(i.dest),
                "size": i.size,
                "sha256": i.sha256,
                "marker": str(i.marker),
            }
            for i in items
        ],
        "settings": {
            "range_size": RS,
            "max_workers": 2,
            "journal_interval_s": 0,
            **write_path,
        },
        "delay_s": 0.01,
    }
    (tmp_path / "child.json").write_text(json.dumps(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.pull.pull_child", str(tmp_path / "child.json")],
        cwd=REPO,
        env=child_env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip().isdigit() and int(line) >= len(small) + 16 * RS:
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    # No partial file under a final name: the small file is complete, the big one a .part.
    assert items[0].dest.read_bytes() == small
    assert not items[1].dest.exists()
    assert items[1].part.exists()
    # The journal lags the bytes on disk by design (it is written after fsync), so on a
    # loaded machine less than was reported may be journaled; any resumed prefix proves it.
    journaled = sum(e - s for s, e in read_journal(items[1]))
    assert journaled >= RS

    report = pull(items, store, settings=SETTINGS)
    assert statuses(report) == ["present", "placed"]
    assert report.items[1].resumed_bytes == journaled
    assert report.bytes_downloaded == len(big) - journaled < len(big)
    assert hash_file(items[1].dest) == sha(big)
    assert leftovers(comfy) == []


# ---------------------------------------------------------------------------- concurrency


def test_two_warmups_on_one_root(local_store: ObjectStore, comfy: Path) -> None:
    data = blob(24 * RS, 30)
    items = plan_pull([put(local_store, "checkpoints", "c.safetensors", data)], comfy)
    started = threading.Event()
    release = threading.Event()
    reports: list[PullReport] = []

    def slow(n: int) -> None:
        started.set()
        release.wait(10)

    def first() -> None:
        with RootLock(comfy):
            reports.append(pull(items, local_store, settings=SETTINGS, progress=slow))

    t = threading.Thread(target=first)
    t.start()
    assert started.wait(10)
    with pytest.raises(LockHeldError, match=f"pid {os.getpid()}"):
        RootLock(comfy).acquire()  # the second warm-up: refused at once, nothing touched
    release.set()
    with RootLock(comfy, wait_s=20, poll_s=0.02):  # or it waits for the first to finish
        second = pull(items, local_store, settings=SETTINGS)
    t.join()
    assert statuses(reports[0]) == ["placed"] and statuses(second) == ["present"]
    assert items[0].dest.read_bytes() == data


def test_two_pulls_without_the_lock_never_corrupt(local_store: ObjectStore, comfy: Path) -> None:
    payloads = [blob(12 * RS + i, 40 + i) for i in range(3)]
    entries = [
        put(local_store, "checkpoints", f"p{i}.safetensors", d) for i, d in enumerate(payloads)
    ]
    items = plan_pull(entries, comfy)
    reports: list[PullReport] = []
    threads = [
        threading.Thread(target=lambda: reports.append(pull(items, local_store, settings=SETTINGS)))
        for _ in range(2)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for report in reports:
        for r in report.items:
            assert r.status != "failed" or isinstance(r.exception, LockHeldError), r.error
    for item, data in zip(items, payloads, strict=True):
        assert item.dest.read_bytes() == data
    final = pull(items, local_store, settings=SETTINGS)
    assert final.ok and final.bytes_downloaded == 0
