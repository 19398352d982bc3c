"""One contract, two stores: every test runs against LocalStore and against S3Store on SeaweedFS."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import pytest

from comfyfleet.errors import (
    ObjectNotFound,
    PreconditionFailed,
    StoreConfigError,
    StoreError,
    UploadNotFound,
)
from comfyfleet.store import LocalStore, ObjectStore, S3Store
from comfyfleet.store.base import MIN_PART_SIZE, SHA256_METADATA_KEY, MultipartUpload
from comfyfleet.store.manifest import (
    MANIFEST_KEY,
    Manifest,
    ManifestEntry,
    read_manifest,
    update_manifest,
    write_manifest,
)
from tests.support.seaweed import SeaweedServer

DATA = bytes(range(256)) * 40  # 10,240 bytes, every offset distinguishable


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_store_satisfies_protocol(store: ObjectStore) -> None:
    assert isinstance(store, ObjectStore)
    upload = store.create_multipart("models/x/proto.bin")
    assert isinstance(upload, MultipartUpload)
    upload.abort()
    assert store.uri.startswith(("file:///", "s3://"))


# ---------------------------------------------------------------------- reads and writes


def test_put_head_get_roundtrip(store: ObjectStore) -> None:
    key = "models/checkpoints/a.safetensors"
    put = store.put_bytes(key, DATA, metadata={"SHA256": _sha(DATA)})
    assert put.size == len(DATA)
    assert put.metadata == {"sha256": _sha(DATA)}

    info = store.head(key)
    assert (info.key, info.size) == (key, len(DATA))
    assert info.sha256 == _sha(DATA)
    assert info.metadata[SHA256_METADATA_KEY] == _sha(DATA)
    assert info.etag and info.etag == put.etag
    assert info.last_modified is not None
    assert store.exists(key) == info
    assert store.get_bytes(key) == DATA


def test_missing_key(store: ObjectStore) -> None:
    key = "models/vae/missing.bin"
    assert store.exists(key) is None
    for read in (
        lambda: store.head(key),
        lambda: store.get_bytes(key),
        lambda: store.get_range(key, 0, 10),
        lambda: store.get_range(key, 5, 5),
        lambda: list(store.iter_bytes(key)),
        lambda: store.set_metadata(key, {"sha256": "0" * 64}),
    ):
        with pytest.raises(ObjectNotFound) as caught:
            read()
        assert key in caught.value.message and store.uri in caught.value.message
        assert isinstance(caught.value, FileNotFoundError)


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0, 10, DATA[:10]),
        (100, 300, DATA[100:300]),
        (len(DATA) - 5, len(DATA) + 1000, DATA[-5:]),  # end clamps to the size
        (0, 10**12, DATA),
        (len(DATA), len(DATA) + 10, b""),  # start at the end
        (len(DATA) + 50, len(DATA) + 60, b""),  # start past the end
        (7, 7, b""),
        (9, 3, b""),
    ],
)
def test_get_range(store: ObjectStore, start: int, end: int, expected: bytes) -> None:
    store.put_bytes("blob", DATA)
    assert store.get_range("blob", start, end) == expected


def test_iter_bytes_from_offset(store: ObjectStore) -> None:
    store.put_bytes("blob", DATA)
    chunks = list(store.iter_bytes("blob", 1000, chunk_size=999))
    assert b"".join(chunks) == DATA[1000:]
    assert all(0 < len(c) <= 999 for c in chunks)
    assert b"".join(store.iter_bytes("blob")) == DATA
    assert list(store.iter_bytes("blob", len(DATA))) == []
    assert list(store.iter_bytes("blob", len(DATA) + 10)) == []


def test_empty_object(store: ObjectStore) -> None:
    store.put_bytes("empty", b"")
    assert store.head("empty").size == 0
    assert store.get_bytes("empty") == b""
    assert store.get_range("empty", 0, 10) == b""
    assert b"".join(store.iter_bytes("empty")) == b""


def test_overwrite_replaces_bytes_and_metadata(store: ObjectStore) -> None:
    store.put_bytes("k", b"old", metadata={"sha256": _sha(b"old")})
    store.put_bytes("k", b"newer")
    info = store.head("k")
    assert store.get_bytes("k") == b"newer"
    assert info.size == 5
    assert info.sha256 is None  # old metadata must not describe new bytes


def test_conditional_put(store: ObjectStore) -> None:
    store.put_bytes("lock", b"first", if_none_match=True)
    with pytest.raises(PreconditionFailed) as caught:
        store.put_bytes("lock", b"second", if_none_match=True)
    assert "lock" in caught.value.message
    assert store.get_bytes("lock") == b"first"


def test_conditional_put_race_has_one_winner(store: ObjectStore) -> None:
    barrier = threading.Barrier(8)

    def attempt(i: int) -> bool:
        barrier.wait()
        try:
            store.put_bytes("race", f"writer-{i}".encode(), if_none_match=True)
        except PreconditionFailed:
            return False
        return True

    with ThreadPoolExecutor(8) as pool:
        wins = list(pool.map(attempt, range(8)))
    assert wins.count(True) == 1
    assert store.get_bytes("race") == f"writer-{wins.index(True)}".encode()


def test_set_metadata_replaces_without_reupload(store: ObjectStore) -> None:
    store.put_bytes("m", DATA, metadata={"sha256": "0" * 64, "other": "x"})
    updated = store.set_metadata("m", {"sha256": _sha(DATA)})
    assert updated.metadata == {"sha256": _sha(DATA)}
    info = store.head("m")
    assert info.metadata == {"sha256": _sha(DATA)}
    assert store.get_bytes("m") == DATA


def test_bad_metadata_refused(store: ObjectStore) -> None:
    with pytest.raises(StoreConfigError, match="metadata"):
        store.put_bytes("m", b"x", metadata={"bad name": "v"})
    with pytest.raises(StoreConfigError, match="metadata"):
        store.put_bytes("m", b"x", metadata={"name": "caf\u00e9"})
    assert store.exists("m") is None


def test_delete_is_idempotent_and_drops_metadata(store: ObjectStore) -> None:
    store.put_bytes("models/loras/x.safetensors", b"abc", metadata={"sha256": _sha(b"abc")})
    store.delete("models/loras/x.safetensors")
    store.delete("models/loras/x.safetensors")
    store.delete("never/existed")
    assert store.exists("models/loras/x.safetensors") is None
    assert list(store.list()) == []
    store.put_bytes("models/loras/x.safetensors", b"abc")
    assert store.head("models/loras/x.safetensors").sha256 is None


def test_list_prefix_order_and_paging(store: ObjectStore) -> None:
    keys = [f"models/loras/l{i:02d}.safetensors" for i in range(30)]
    keys += ["models/vae/v.bin", "models/checkpoints/c.bin", "manifest.json"]
    keys += ["a-c", "a/b", "a0"]
    for i, key in enumerate(keys):
        store.put_bytes(key, b"x" * i)
    listed = list(store.list())
    # AWS and LocalStore list in byte order of the whole key ('a-c' < 'a/b'); SeaweedFS walks
    # directories ('a/b' first). Callers rely on the set and on order within one folder.
    assert sorted(o.key for o in listed) == sorted(keys)
    if isinstance(store, LocalStore):
        assert [o.key for o in listed] == sorted(keys, key=str.encode)
    assert {o.key: o.size for o in listed} == {k: i for i, k in enumerate(keys)}
    loras = [o.key for o in store.list("models/loras/")]
    assert loras == sorted(k for k in keys if k.startswith("models/loras/"))
    assert [o.key for o in store.list("models/loras/l1")] == [
        f"models/loras/l1{i}.safetensors" for i in range(10)
    ]
    assert [o.key for o in store.list("models/v")] == ["models/vae/v.bin"]
    assert list(store.list("nothing/")) == []


@pytest.mark.parametrize("key", ["../escape", "/abs", "a//b", "a/./b", "a/../b", "", "a\\b", "x/"])
def test_key_escapes_refused(store: ObjectStore, key: str) -> None:
    for op in (
        lambda: store.put_bytes(key, b"x"),
        lambda: store.head(key),
        lambda: store.delete(key),
        lambda: store.create_multipart(key),
    ):
        with pytest.raises(StoreConfigError, match="invalid object key"):
            op()
    assert list(store.list()) == []


def test_concurrent_ranged_reads(store: ObjectStore) -> None:
    blob = os.urandom(256 * 1024)
    store.put_bytes("shared", blob)
    ranges = [(i * 3001, i * 3001 + 4096) for i in range(80)]
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda r: store.get_range("shared", *r), ranges))
    assert got == [blob[a:b] for a, b in ranges]


def test_presign_get(store: ObjectStore) -> None:
    store.put_bytes("models/p.bin", DATA)
    url = store.presign_get("models/p.bin", expires_s=60)
    if isinstance(store, LocalStore):
        assert url is None
        return
    assert url is not None and "Signature" in url
    resp = httpx.get(url)
    assert resp.status_code == 200 and resp.content == DATA


# ---------------------------------------------------------------------- multipart


PART = MIN_PART_SIZE  # S3's minimum for every part but the last


def test_multipart_happy_path_and_resume(store: ObjectStore) -> None:
    key = "models/checkpoints/big.safetensors"
    part1 = os.urandom(PART)
    part2 = b"tail-bytes" * 100
    whole = part1 + part2
    upload = store.create_multipart(key, metadata={"sha256": _sha(whole)})
    p1 = upload.put_part(1, part1)
    assert (p1.number, p1.size) == (1, PART)

    # Nothing is visible under the key before complete.
    assert store.exists(key) is None
    assert [o.key for o in store.list()] == []

    # A new process finds the upload and the parts already sent, and finishes it.
    [found] = store.find_multipart(key)
    assert (found.key, found.upload_id) == (key, upload.upload_id)
    assert found.list_parts() == [p1]
    p2 = found.put_part(2, part2)
    parts = found.list_parts()
    assert parts == [p1, p2]
    assert store.exists(key) is None

    info = found.complete(parts)
    assert info.size == len(whole)
    assert info.sha256 == _sha(whole)
    assert store.head(key).sha256 == _sha(whole)
    assert store.get_bytes(key) == whole
    assert store.find_multipart(key) == []
    assert [o.key for o in store.list()] == [key]


def test_multipart_part_reupload_replaces(store: ObjectStore) -> None:
    upload = store.create_multipart("re")
    upload.put_part(1, b"a" * PART)
    first_tail = upload.put_part(2, b"wrong")
    good_tail = upload.put_part(2, b"right!")
    assert upload.list_parts()[1] == good_tail != first_tail
    upload.complete(upload.list_parts())
    assert store.get_bytes("re") == b"a" * PART + b"right!"


def test_multipart_abort_leaves_nothing(store: ObjectStore) -> None:
    store.put_bytes("keep", b"old bytes", metadata={"sha256": _sha(b"old bytes")})
    upload = store.create_multipart("keep", metadata={"sha256": "1" * 64})
    upload.put_part(1, b"z" * PART)
    upload.abort()
    upload.abort()  # idempotent: cleanup paths may call it twice
    assert store.find_multipart("keep") == []
    assert store.get_bytes("keep") == b"old bytes"
    assert store.head("keep").sha256 == _sha(b"old bytes")
    assert [o.key for o in store.list()] == ["keep"]
    with pytest.raises(UploadNotFound):
        upload.put_part(2, b"late")
    with pytest.raises(UploadNotFound):
        upload.list_parts()


def test_multipart_keeps_old_object_until_complete(store: ObjectStore) -> None:
    store.put_bytes("swap", b"v1")
    upload = store.create_multipart("swap")
    p = upload.put_part(1, b"v2-bytes")
    assert store.get_bytes("swap") == b"v1"
    upload.complete([p])
    assert store.get_bytes("swap") == b"v2-bytes"


def test_multipart_small_middle_part_refused(store: ObjectStore) -> None:
    upload = store.create_multipart("small")
    parts = [upload.put_part(1, b"x" * 1024), upload.put_part(2, b"y")]
    with pytest.raises(StoreError):
        upload.complete(parts)
    assert store.exists("small") is None
    upload.abort()


def test_find_multipart_newest_first_and_exact_key(store: ObjectStore) -> None:
    first = store.create_multipart("f/a")
    if isinstance(store, S3Store):
        time.sleep(1.1)  # S3 reports Initiated in whole seconds
    second = store.create_multipart("f/a")
    other = store.create_multipart("f/ab")  # same prefix, other key
    found = store.find_multipart("f/a")
    assert [u.upload_id for u in found] == [second.upload_id, first.upload_id]
    assert [u.upload_id for u in store.find_multipart("f/ab")] == [other.upload_id]
    for u in (first, second, other):
        u.abort()
    assert store.find_multipart("f/a") == []


# ---------------------------------------------------------------------- manifest


def _entry(i: int, size: int = 10) -> ManifestEntry:
    return ManifestEntry(
        id=f"model-{i}",
        key=f"models/checkpoints/m{i}.safetensors",
        folder="checkpoints",
        file=f"m{i}.safetensors",
        size=size,
        sha256=f"{i:064x}",
        source=f"hf:org/repo@{'a' * 40}/m{i}.safetensors",
        revision="a" * 40,
        mirrored_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        etag=f"etag-{i}",
    )


def test_manifest_roundtrip(store: ObjectStore) -> None:
    assert read_manifest(store) == Manifest()
    assert read_manifest(store).entries == []

    first = update_manifest(store, [_entry(2), _entry(1)])
    assert [e.key for e in first.entries] == [_entry(1).key, _entry(2).key]
    assert first.updated_at is not None
    again = read_manifest(store)
    assert again == first
    assert again.get(_entry(1).key) == _entry(1)
    assert again.by_id()["model-2"] == _entry(2)

    second = update_manifest(store, [_entry(1, size=99), _entry(3)], removed_keys=[_entry(2).key])
    assert {e.id: e.size for e in second.entries} == {"model-1": 99, "model-3": 10}
    assert read_manifest(store) == second
    info = store.head(MANIFEST_KEY)
    assert info.size == len(store.get_bytes(MANIFEST_KEY))
    assert json.loads(store.get_bytes(MANIFEST_KEY))["version"] == 1


def test_manifest_corrupt_is_named(store: ObjectStore) -> None:
    store.put_bytes(MANIFEST_KEY, b"{not json")
    with pytest.raises(StoreError) as caught:
        read_manifest(store)
    assert f"{store.uri}/manifest.json" in caught.value.message
    assert "not JSON" in caught.value.message
    assert caught.value.hint and "comfyfleet mirror" in caught.value.hint

    bad_sha = _entry(1).model_dump(mode="json") | {"sha256": "xyz"}
    store.put_bytes(MANIFEST_KEY, json.dumps({"version": 1, "entries": [bad_sha]}).encode())
    with pytest.raises(StoreError, match=r"entries\.0\.sha256"):
        read_manifest(store)

    store.put_bytes(MANIFEST_KEY, json.dumps({"version": 7, "entries": []}).encode())
    with pytest.raises(StoreError, match="upgrade|newer"):
        read_manifest(store)


def test_manifest_write_is_atomic_for_readers(store: ObjectStore) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: set[int] = set()

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.add(len(read_manifest(store).entries))
            except BaseException as exc:  # any torn read fails the test
                errors.append(exc)
                return

    write_manifest(store, Manifest(entries=[_entry(0)]))
    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(1, 25):
            write_manifest(store, Manifest(entries=[_entry(i) for i in range(n * 7)]))
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert seen  # the reader ran
    assert len(read_manifest(store).entries) == 24 * 7


# ---------------------------------------------------------------------- LocalStore specifics


def test_local_internal_files_hidden_and_reserved(local_store: LocalStore) -> None:
    upload = local_store.create_multipart("models/big.bin", metadata={"sha256": "a" * 64})
    upload.put_part(1, b"part")
    local_store.put_bytes("models/a.bin", b"a", metadata={"sha256": "b" * 64})
    assert (local_store.root / ".comfyfleet").is_dir()
    assert [o.key for o in local_store.list()] == ["models/a.bin"]
    assert list(local_store.list(".comfyfleet/")) == []
    assert not (local_store.root / "models" / "big.bin").exists()
    with pytest.raises(StoreConfigError, match="reserved"):
        local_store.put_bytes(".comfyfleet/meta/x", b"x")


def test_local_stale_sidecar_is_ignored(local_store: LocalStore) -> None:
    local_store.put_bytes("k", b"old", metadata={"sha256": _sha(b"old")})
    # Bytes replaced behind the store's back (or a crash before the sidecar was rewritten):
    path = local_store.root / "k"
    tmp = path.with_name("k.new")
    tmp.write_bytes(b"new!")
    os.replace(tmp, path)
    assert local_store.head("k").sha256 is None


def test_local_writes_leave_no_temp_files(local_store: LocalStore) -> None:
    local_store.put_bytes("a/b", b"x")
    with pytest.raises(PreconditionFailed):
        local_store.put_bytes("a/b", b"y", if_none_match=True)
    upload = local_store.create_multipart("c")
    upload.complete([upload.put_part(1, b"z")])
    assert list((local_store.root / ".comfyfleet" / "tmp").iterdir()) == []


def test_local_object_and_prefix_conflict_is_explained(local_store: LocalStore) -> None:
    local_store.put_bytes("a", b"x")
    with pytest.raises(StoreError, match="cannot hold both"):
        local_store.put_bytes("a/b", b"y")
    assert local_store.get_bytes("a") == b"x"


def test_local_root_is_created_on_first_write(tmp_path: os.PathLike[str]) -> None:
    root = os.path.join(tmp_path, "deep", "store")
    store = LocalStore(root)
    store.check()
    assert not os.path.exists(root)  # check writes nothing
    assert list(store.list()) == []
    store.put_bytes("x", b"1")
    assert os.path.isfile(os.path.join(root, "x"))


@pytest.mark.s3
def test_s3_prefix_isolates_keys(s3_server: SeaweedServer, s3_bucket: str) -> None:
    def store(prefix: str) -> S3Store:
        return S3Store(
            s3_bucket,
            prefix,
            endpoint_url=s3_server.endpoint_url,
            access_key_id=s3_server.access_key,
            secret_access_key=s3_server.secret_key,
        )

    mine, sibling = store("mirror"), store("mirror-sibling")
    mine.put_bytes("models/a", b"a")
    mine.create_multipart("models/b")
    raw = s3_server.client().list_objects_v2(Bucket=s3_bucket)
    assert [o["Key"] for o in raw["Contents"]] == ["mirror/models/a"]
    assert list(sibling.list()) == []
    assert sibling.exists("models/a") is None
    assert sibling.find_multipart("models/b") == []
    assert [o.key for o in store("").list()] == ["mirror/models/a"]
